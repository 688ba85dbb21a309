#!/bin/sh
# Lints the Prometheus rules, runs their unit tests and checks the example
# config with promtool (apt-get install prometheus). `cargo xtask dashboards
# check` runs the same and also lints the Grafana dashboards.
set -eu
cd "$(dirname "$0")/prometheus"
promtool check rules --lint=all --lint-fatal rules.yml
promtool test rules rules_test.yml
promtool check config prometheus.yml
