//! `cargo xtask reliability`: the short suite CI runs. Provisioning first
//! (engine, Debian tools, images), then every scenario marked `ci = true` in
//! tests/scenarios, one after the other, with progress lines and a pass/fail
//! table, then every dashboard panel query against the Prometheus of the
//! [`DASHBOARD_RUN`] scenario; non-zero exit when any invariant failed or a
//! panel had no data. SIGINT/SIGTERM stop it after cleaning up.

use std::time::Instant;

use anyhow::{Result, bail};
use mesh_chaos::scenario::Scenario;

use crate::scenario::{self, Engine, RunArgs};

/// The scenario whose Prometheus data feeds the dashboards check: the one
/// whose faults move every panel (exhaustion, duplicates, restarts).
pub const DASHBOARD_RUN: &str = "exhaustion";

/// `reliability` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only these scenarios (default: every `ci = true` one).
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Where the services run.
    #[arg(long, value_enum, default_value_t = Engine::Dind)]
    pub engine: Engine,
    /// Seed for every scenario (default: each scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The bridge image to test (default: the one `cargo xtask images` builds).
    #[arg(long, default_value = scenario::BRIDGE_IMAGE)]
    pub bridge_image: String,
}

/// Runs the suite.
pub fn run(args: &Args) -> Result<()> {
    crate::provision::run(&crate::provision::Args { no_images: false })?;
    let all = Scenario::load_dir(&scenario::scenario_dir())?;
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| {
            if args.only.is_empty() {
                s.ci
            } else {
                args.only.contains(&s.name)
            }
        })
        .collect();
    if chosen.is_empty() {
        bail!("no scenario selected");
    }
    let t0 = Instant::now();
    println!(
        "reliability: {} scenarios: {}",
        chosen.len(),
        chosen
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rt = scenario::runtime()?;
    let mut rows = Vec::new();
    for (i, s) in chosen.iter().enumerate() {
        let t = Instant::now();
        let prefix = format!(
            "[{}/{} {} {:>5.0}s]",
            i + 1,
            chosen.len(),
            s.name,
            t0.elapsed().as_secs_f64()
        );
        println!(
            "{prefix} starting (duration {}, seed {})",
            s.duration,
            args.seed.unwrap_or(s.seed)
        );
        let name = s.name.clone();
        let total = chosen.len();
        let say = move |m: &str| {
            println!(
                "[{}/{} {} {:>5.0}s] {m}",
                i + 1,
                total,
                name,
                t0.elapsed().as_secs_f64()
            );
        };
        let r = rt.block_on(scenario::run_named(
            &RunArgs {
                chosen: crate::scenario::Chosen::named(&s.name, args.seed),
                engine: args.engine,
                bridge_image: args.bridge_image.clone(),
            },
            &say,
        ));
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok(out) => {
                let failed: Vec<String> = out
                    .report
                    .invariants
                    .iter()
                    .filter(|v| !v.held)
                    .map(|v| format!("{}: {}", v.id, v.detail))
                    .collect();
                println!(
                    "[{}/{} {}] {} in {secs:.0}s -> {}",
                    i + 1,
                    chosen.len(),
                    s.name,
                    out.report.verdict.to_uppercase(),
                    out.dir.display()
                );
                for f in &failed {
                    println!("    {f}");
                }
                for n in &out.report.notes {
                    println!("    note: {n}");
                }
                rows.push(Row {
                    name: s.name.clone(),
                    seed: out.report.seed,
                    verdict: out.report.verdict.clone(),
                    held: out
                        .report
                        .invariants
                        .iter()
                        .map(|v| (v.id.clone(), v.held))
                        .collect(),
                    availability: Some((out.report.availability, out.report.availability_all)),
                    recovery: out.report.recovery_ms,
                    faults: out.report.faults.len(),
                    secs,
                    error: None,
                });
            }
            Err(e) => {
                println!(
                    "[{}/{} {}] ERROR after {secs:.0}s: {e:#}",
                    i + 1,
                    chosen.len(),
                    s.name
                );
                rows.push(Row {
                    name: s.name.clone(),
                    seed: args.seed.unwrap_or(s.seed),
                    verdict: "error".into(),
                    held: Vec::new(),
                    availability: None,
                    recovery: None,
                    faults: 0,
                    secs,
                    error: Some(format!("{e:#}")),
                });
            }
        }
        if let Some(sig) = crate::interrupt::requested() {
            println!("interrupted by {sig}: the remaining scenarios are skipped");
            break;
        }
    }
    // The invariant columns: every id any scenario was judged on (alert
    // verdicts are printed under their scenario).
    let mut ids: Vec<String> = rows
        .iter()
        .flat_map(|r| r.held.iter().map(|(id, _)| id.clone()))
        .filter(|id| id.starts_with('I'))
        .collect();
    ids.sort_by_key(|id| id[1..].parse::<u32>().unwrap_or(u32::MAX));
    ids.dedup();
    let header = ids.join(" ");
    println!();
    println!(
        "{:<18} {:>5}  {:<7} {:<w$} {:>13} {:>9} {:>6} {:>6}",
        "SCENARIO",
        "SEED",
        "VERDICT",
        header,
        "AVAIL/ALL",
        "RECOVERY",
        "FAULTS",
        "TIME",
        w = header.len().max(2)
    );
    for r in &rows {
        let marks: Vec<&str> = ids
            .iter()
            .map(|id| match r.held.iter().find(|(i, _)| i == id) {
                Some((_, true)) => "ok",
                Some((_, false)) => "XX",
                None => "--",
            })
            .collect();
        println!(
            "{:<18} {:>5}  {:<7} {:<w$} {:>13} {:>9} {:>6} {:>5.0}s",
            r.name,
            r.seed,
            r.verdict.to_uppercase(),
            marks.join(" "),
            r.availability
                .map_or("-".into(), |(a, all)| format!("{a:.4}/{all:.4}")),
            r.recovery.map_or("-".into(), |m| format!("{m}ms")),
            r.faults,
            r.secs,
            w = header.len().max(2)
        );
        for (id, held) in r.held.iter().filter(|(id, _)| !id.starts_with('I')) {
            println!("    {id}: {}", if *held { "ok" } else { "XX" });
        }
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
    }
    let failed = rows.iter().filter(|r| r.verdict != "pass").count();
    crate::interrupt::check()?;
    let mut dashboards = None;
    if let Some(r) = rows
        .iter()
        .find(|r| r.name == DASHBOARD_RUN && r.verdict == "pass")
    {
        let dir = scenario::out_root().join(format!("{}-{}", r.name, r.seed));
        println!("\ndashboards: every panel query against {}", dir.display());
        let outcome = crate::dashboards::run(&crate::dashboards::Command::Check(
            crate::dashboards::CheckArgs::defaults(Some(dir)),
        ));
        if let Err(e) = &outcome {
            println!("dashboards check FAILED: {e:#}");
        }
        dashboards = Some(outcome.is_ok());
    }
    println!(
        "\nreliability: {:.0}s total; reports in {}{}",
        t0.elapsed().as_secs_f64(),
        scenario::out_root().display(),
        match dashboards {
            Some(true) => "; dashboards: every panel query returned data",
            Some(false) => "; dashboards: panels without data (above)",
            None => "",
        }
    );
    // The closing line alone, as test runners print theirs.
    println!(
        "reliability: {} passed, {} failed",
        rows.len() - failed,
        failed
    );
    if failed > 0 {
        bail!("{failed} scenario(s) failed");
    }
    if dashboards == Some(false) {
        bail!("the dashboards check against the {DASHBOARD_RUN} run failed");
    }
    Ok(())
}

struct Row {
    name: String,
    seed: u64,
    verdict: String,
    held: Vec<(String, bool)>,
    availability: Option<(f64, f64)>,
    recovery: Option<u64>,
    faults: usize,
    secs: f64,
    error: Option<String>,
}
