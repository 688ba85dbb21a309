//! `cargo xtask dashboards check`: lints the Grafana dashboards and the
//! Prometheus rules under `dashboards/`, runs promtool (rule lint, rule unit
//! tests, example config), and, given a Prometheus (`--prometheus URL`) or a
//! scenario run directory (`--run-dir DIR`), runs every panel query against it
//! and fails listing the panels that returned no data.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Subcommands of `cargo xtask dashboards`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Lint the dashboards and rules, run promtool, and (with --prometheus or
    /// --run-dir) run every panel query: each must return data.
    Check(CheckArgs),
}

/// Flags of `cargo xtask dashboards check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A Prometheus to run every panel query against (e.g. one that scraped a
    /// scenario run), as http://HOST:PORT[/PREFIX].
    #[arg(long, value_name = "URL", conflicts_with = "run_dir")]
    pub prometheus: Option<String>,
    /// A scenario run directory holding Prometheus' data directory in
    /// `prometheus/`: a Prometheus is started on a copy of it, on loopback,
    /// and every panel query is run against it.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// What `$__rate_interval` becomes in panel queries.
    #[arg(long, default_value = "1m")]
    pub rate_interval: String,
    /// Start of the time range queried (unix seconds); default: the oldest
    /// sample in the TSDB.
    #[arg(long)]
    pub start: Option<f64>,
    /// End of the time range queried (unix seconds); default: the newest
    /// sample in the TSDB.
    #[arg(long)]
    pub end: Option<f64>,
    /// Deadline in seconds for a started Prometheus to become ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    /// The prometheus binary started for --run-dir.
    #[arg(long, default_value = "prometheus")]
    pub prometheus_bin: String,
    /// The promtool binary.
    #[arg(long, default_value = "promtool")]
    pub promtool: String,
}

impl CheckArgs {
    /// The defaults, with or without a run directory to query.
    pub fn defaults(run_dir: Option<PathBuf>) -> CheckArgs {
        CheckArgs {
            prometheus: None,
            run_dir,
            rate_interval: "1m".into(),
            start: None,
            end: None,
            ready_timeout: 60,
            prometheus_bin: "prometheus".into(),
            promtool: "promtool".into(),
        }
    }
}

/// Runs a dashboards subcommand.
pub fn run(command: &Command) -> Result<()> {
    match command {
        Command::Check(args) => check(args),
    }
}

// ------------------------------------------------------------------ contract

use mesh_bridge::contract::metric::{self, Kind};

/// The bridge's metrics (`mesh_bridge::contract::metric`) and the harness's
/// (`mesh_chaos::metrics`). A dashboard or rule that names a `mesh_bridge_`
/// or `mesh_chaos_` series not in them fails the check.
fn contract() -> impl Iterator<Item = &'static metric::Def> {
    metric::ALL.iter().chain(mesh_chaos::metrics::ALL.iter())
}

/// Prefixes of the series names the check holds to a contract list.
const CHECKED_PREFIXES: &[&str] = &["mesh_bridge_", "mesh_bridge:", "mesh_chaos_"];

/// Functions through which a counter (or a histogram's series) may be read.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "resets"];

const DASHBOARDS_DIR: &str = "dashboards/grafana";
const RULES_DIR: &str = "dashboards/prometheus";
const RUNBOOK: &str = "dashboards/RUNBOOK.md";

use crate::paths::workspace_root;

// ------------------------------------------------------------------ check

fn check(args: &CheckArgs) -> Result<()> {
    let root = workspace_root();
    let mut problems = Vec::new();

    let recorded = recorded_rule_names(&root.join(RULES_DIR).join("rules.yml"))?;
    let dashboards = load_dashboards(&root.join(DASHBOARDS_DIR), &recorded, &mut problems)?;
    let panels: usize = dashboards.iter().map(|d| d.queries.len()).sum();
    println!(
        "dashboards: {} dashboards, {} panel queries linted",
        dashboards.len(),
        panels
    );
    lint_rules(&root, &recorded, &mut problems)?;
    if !problems.is_empty() {
        eprintln!("dashboards check: {} problems:", problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        bail!("dashboards lint failed ({} problems)", problems.len());
    }
    println!("dashboards: lint ok");

    run_promtool(&root, &args.promtool)?;

    if let Some(url) = &args.prometheus {
        let prom = Prom::parse(url)?;
        run_queries(&prom, &dashboards, args, &[])?;
    } else if let Some(dir) = &args.run_dir {
        let data = find_data_dir(dir)?;
        let blocks = block_ranges(&data)?;
        let launched = Launched::start(&data, args)?;
        run_queries(&launched.prom, &dashboards, args, &blocks)?;
        drop(launched);
    } else {
        println!(
            "dashboards: panel queries not run (give --prometheus URL or --run-dir DIR to run them)"
        );
    }
    println!("dashboards check: ok");
    Ok(())
}

mod lint;
mod prom;
mod promql;
mod queries;
mod rules;
#[cfg(test)]
mod tests;

use lint::*;
use prom::*;
use promql::*;
use queries::*;
use rules::*;
