//! Unit tests of the dashboards check: the PromQL scanner, the contract
//! rules, the lints.

use super::*;

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn counters_need_rate() {
    let p = metric_problems("mesh_bridge_store_errors_total > 0", &none(), true);
    assert_eq!(p.len(), 1, "{p:?}");
    let p = metric_problems(
        r#"sum by (le) (rate(mesh_bridge_store_write_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))"#,
        &none(),
        true,
    );
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn unknown_metrics_and_fixed_ranges_are_reported() {
    let p = metric_problems("rate(mesh_bridge_nope_total[5m])", &none(), true);
    assert_eq!(p.len(), 2, "{p:?}");
    let p = metric_problems(r#"up{job="mesh_bridge_x"}"#, &none(), true);
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn variables_are_substituted() {
    let mut vars = BTreeMap::new();
    vars.insert("job".to_string(), "mesh-bridge".to_string());
    vars.insert("__rate_interval".to_string(), "1m".to_string());
    assert_eq!(
        substitute(
            r#"rate(x{job=~"$job",a="${job:regex}"}[$__rate_interval]) $other"#,
            &vars
        ),
        r#"rate(x{job=~"mesh-bridge",a="mesh-bridge"}[1m]) $other"#
    );
}

#[test]
fn prometheus_urls() {
    let p = Prom::parse("http://127.0.0.1:9090/prom/").expect("url");
    assert_eq!(
        (p.host.as_str(), p.port, p.prefix.as_str()),
        ("127.0.0.1", 9090, "/prom")
    );
    assert!(Prom::parse("https://x").is_err());
}

#[test]
fn the_repository_passes_the_lint() {
    let root = workspace_root();
    let recorded = recorded_rule_names(&root.join(RULES_DIR).join("rules.yml")).expect("rules");
    let mut problems = Vec::new();
    load_dashboards(&root.join(DASHBOARDS_DIR), &recorded, &mut problems).expect("dashboards");
    lint_rules(&root, &recorded, &mut problems).expect("rules");
    assert!(problems.is_empty(), "{problems:#?}");
}
