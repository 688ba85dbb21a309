//! `cargo xtask bench [--quick]`: the performance suite.
//!
//! Every figure is measured side by side with a baseline in the same run
//! (these machines are noisy), printed as a table and written to
//! `target/bench/report.json` as
//! `[{"id","what","value","unit","baseline","baseline_value","ratio","goal","met"}]`.
//!
//! Phases (each with its own bridge, state dir and Docker relay that shows
//! the bridge only that phase's containers):
//! - P1: `cargo bench -p mesh-bridge --bench pool`, criterion's estimate;
//!   baseline the 650 ns a port Docker's allocator spends (a constant).
//! - P6: 10,000 `POST /v1/reservations` from 64 keep-alive connections;
//!   baseline the same count of `GET /v1/pool` on the same connections.
//! - P5: RSS and idle CPU with 1,000 API reservations; baseline an empty
//!   bridge measured over the same window.
//! - P4: bulk throughput and ping-pong latency to a server in a container's
//!   network namespace: through the bridge, directly, through docker-proxy.
//! - P2: container start event to first MCP `initialize` answered through the
//!   mesh port; baseline the same container on its own IP.
//! - P3: kill -9 with 200 services serving, restart, every service answering
//!   on its unchanged port; baseline the cold start with the same containers.

mod callgrind;
mod infra;
mod phases;
mod sink;

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use infra::progress;

/// `bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A few minutes: fewer starts (P2), smaller transfers (P4), a shorter
    /// idle window (P5), shorter criterion sampling (P1). Each row says so.
    #[arg(long)]
    pub quick: bool,
    /// Only these phases (p1,p2,p3,p4,p5,p6,p7,p8; p2 and p3 run together).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Container starts measured for P2 (default 100, 20 with --quick).
    #[arg(long)]
    pub starts: Option<usize>,
    /// Services serving when the bridge is killed for P3 (default 200).
    #[arg(long, default_value_t = 200)]
    pub services: usize,
    /// Use this `mesh-bridge` binary instead of building the tree's (e.g. a
    /// build of another revision, to compare).
    #[arg(long, value_name = "PATH")]
    pub bridge_bin: Option<std::path::PathBuf>,
    /// Internal: serve the P4 sink/echo protocol on this address.
    #[arg(long, hide = true)]
    pub serve_sink: Option<SocketAddr>,
}

/// Builds xtask in release (the shared static build, beside the bridge it
/// measures) and runs the bench there. The load generators (the P6 HTTP
/// clients, the P4 sink and clients) are this program: built for debugging,
/// the P6 client took 1.2 cores to the bridge's 0.6 and measured itself.
fn reexec_release() -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = infra::build_release_xtask()?;
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", exe.display()))
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stable id (P1, P2-p50, ...).
    pub id: &'static str,
    /// What was measured, and how.
    pub what: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// What it is compared with.
    pub baseline: String,
    /// The baseline's figure (same unit unless `baseline` says otherwise).
    pub baseline_value: f64,
    /// value / baseline_value (None when the baseline is 0).
    pub ratio: Option<f64>,
    /// The goal, as text.
    pub goal: String,
    /// Whether the goal is met.
    pub met: bool,
}

/// value / base, None when base is 0 or not finite.
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base != 0.0 && base.is_finite() && value.is_finite()).then(|| value / base)
}

/// Runs the suite (or serves the sink when asked to).
pub fn run(args: &Args) -> Result<()> {
    if let Some(addr) = args.serve_sink {
        return sink::serve(addr);
    }
    if cfg!(debug_assertions) {
        return reexec_release();
    }
    let t0 = Instant::now();
    let want = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    fs::create_dir_all(infra::bench_dir())?;

    if want("p1") {
        progress(t0, "P1: cargo bench -p mesh-bridge --bench pool");
        match phases::p1(args.quick) {
            Ok(r) => rows.extend(r),
            Err(e) => failures.push(format!("P1: {e:#}")),
        }
        crate::interrupt::check()?;
    }
    let docker_phases = ["p2", "p3", "p4", "p5", "p6", "p7", "p8"];
    if docker_phases.iter().any(|p| want(p)) {
        infra::ensure_stub_image(t0)?;
        infra::remove_stale(t0);
        let bin = match &args.bridge_bin {
            Some(b) => infra::copy_bridge(b)?,
            None => {
                progress(t0, "building mesh-bridge (release, static, target/static)");
                infra::build_bridge()?
            }
        };
        crate::interrupt::check()?;
        progress(t0, &format!("bridge binary: {}", bin.display()));
        let guard = infra::RunGuard::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let ctx = phases::Ctx {
            t0,
            bin,
            run: guard.run.clone(),
            quick: args.quick,
            starts: args.starts.unwrap_or(if args.quick { 20 } else { 100 }),
            services: args.services,
        };
        let phases = async {
            if want("p6") {
                match phases::p6(&ctx).await {
                    Ok(r) => rows.extend(r),
                    Err(e) => failures.push(format!("P6: {e:#}")),
                }
            }
            if want("p5") {
                match phases::p5(&ctx).await {
                    Ok(r) => rows.extend(r),
                    Err(e) => failures.push(format!("P5: {e:#}")),
                }
            }
            if want("p7") {
                let r = phases::p7(&ctx).await;
                guard.remove_phase("p7");
                match r {
                    Ok(r) => rows.extend(r),
                    Err(e) => failures.push(format!("P7: {e:#}")),
                }
            }
            if want("p8") {
                let r = phases::p8(&ctx).await;
                guard.remove_phase("p8");
                match r {
                    Ok(r) => rows.extend(r),
                    Err(e) => failures.push(format!("P8: {e:#}")),
                }
            }
            if want("p4") {
                let r = phases::p4(&ctx).await;
                guard.remove_phase("p4");
                match r {
                    Ok(r) => rows.extend(r),
                    Err(e) => failures.push(format!("P4: {e:#}")),
                }
            }
            if want("p2") || want("p3") {
                let r = phases::p2_p3(&ctx, want("p2"), want("p3")).await;
                guard.remove_phase("p23");
                match r {
                    Ok(r) => rows.extend(r),
                    Err(e) => failures.push(format!("P2/P3: {e:#}")),
                }
            }
        };
        // A signal drops the running phase (its bridges are killed on drop),
        // then the guard removes every container and network of this run.
        rt.block_on(async {
            tokio::select! {
                () = phases => {}
                _ = crate::interrupt::wait() => {}
            }
        });
        rt.shutdown_timeout(std::time::Duration::from_secs(2));
        drop(guard);
        crate::interrupt::check()?;
    }

    let order = [
        "P1",
        "P2-p50",
        "P2-p99",
        "P3",
        "P4-throughput-vs-direct",
        "P4-throughput-vs-docker-proxy",
        "P4-latency-added",
        "P4-latency-vs-docker-proxy",
        "P5-rss",
        "P5-idle-cpu",
        "P6",
        "P7-c1-throughput",
        "P7-c1-latency-added",
        "P7-c32-throughput",
        "P7-c32-latency-added",
        "P7-c1-instructions",
        "P8-c1-throughput",
        "P8-c1-p99",
        "P8-c16-throughput",
        "P8-c16-p99",
    ];
    rows.sort_by_key(|r| order.iter().position(|o| *o == r.id).unwrap_or(usize::MAX));
    print!("{}", table(&rows));
    let path = infra::bench_dir().join("report.json");
    let report: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "what": r.what, "value": round(r.value), "unit": r.unit,
                "baseline": r.baseline, "baseline_value": round(r.baseline_value),
                "ratio": r.ratio.map(round), "goal": r.goal, "met": r.met,
            })
        })
        .collect();
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("report: {}", path.display());
    println!(
        "{} of {} goals met ({:.0} s)",
        rows.iter().filter(|r| r.met).count(),
        rows.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("failed: {f}");
        }
        anyhow::bail!("{} phase(s) failed", failures.len());
    }
    Ok(())
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        (v * 10.0).round() / 10.0
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The terminal table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30} {:>10} {:<6} {:>10} {:>8} {:<14} {:<4}  BASELINE",
        "ID", "VALUE", "UNIT", "BASELINE", "RATIO", "GOAL", "MET"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<30} {:>10} {:<6} {:>10} {:>8} {:<14} {:<4}  {}",
            r.id,
            num(r.value),
            r.unit,
            num(r.baseline_value),
            r.ratio.map_or("-".to_string(), |x| format!("{x:.3}")),
            r.goal,
            if r.met { "yes" } else { "NO" },
            r.baseline
        );
    }
    out.push('\n');
    for r in rows {
        let _ = writeln!(out, "{}: {}", r.id, r.what);
    }
    out
}
