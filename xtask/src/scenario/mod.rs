//! `cargo xtask scenario list|plan NAME|run NAME [--seed N] [--duration D] [--engine dind|host]`.
//!
//! Topology (docs/DESIGN.md section 5): a DinD container started with testcontainers
//! (`--privileged` is refused by this engine, so the privileged-equivalent flags
//! of `xtask/images/dind/README.md` are used when it is), the bridge container in
//! the DinD container's network namespace, stub services inside the inner
//! engine, the mesh range and the bridge API published by the DinD container to
//! host loopback. `--engine host` keeps the same code path with the services on
//! the host engine (the bridge then mounts the host's docker socket).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_bridge::contract::images;
use mesh_bridge::contract::labels::{self, Transport};
use mesh_chaos::faults::{self, Docker, FaultKind, StoreCheck, Target};
use mesh_chaos::invariants::{self, Marks};
use mesh_chaos::metrics::HarnessMetrics;
use mesh_chaos::probe::{self, FaultRecord, PortMap, Recorder};
use mesh_chaos::report;
use mesh_chaos::scenario::{Scenario, ServerKind, ServiceSpec, ServiceTransport, dur};
use mesh_chaos::schedule::{self, Planned};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{CgroupnsMode, ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

mod cleanup;
mod heal;
mod inject;
mod plan;
mod prometheus;
mod run;
mod sdk;
mod topology;

use cleanup::*;
use heal::*;
use inject::*;
use prometheus::*;
use run::*;
use sdk::*;
use topology::*;

/// The DinD image (built by `cargo xtask images`) as testcontainers names it: (repository, tag).
fn dind_image() -> (&'static str, &'static str) {
    images::DIND
        .split_once(':')
        .unwrap_or((images::DIND, "latest"))
}

/// The bridge image the scenarios run (`--bridge-image` overrides it).
pub const BRIDGE_IMAGE: &str = images::BRIDGE;
/// The MCP stub image.
pub const STUB_IMAGE: &str = images::STUB;
/// The port the bridge's API listens on inside its network namespace
/// (published to a free loopback port).
pub const API_PORT: u16 = 9464;
/// Label value every harness container carries.
pub const TEST_VALUE: &str = "reliability";

/// Which engine runs the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Inside a DinD container (the design's topology).
    Dind,
    /// The host engine itself (fallback; engine faults are skipped).
    Host,
}

/// `scenario` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the scenarios of tests/scenarios.
    List,
    /// Run one scenario.
    Run(RunArgs),
    /// The dry run: print the topology and the seeded schedule with what
    /// each fault will do, starting nothing.
    Plan(Chosen),
    /// Judge a finished run's recorded history again with this checkout's
    /// invariants (`target/reliability/<name>-<seed>/history.json`), e.g.
    /// after a change to them; prints the verdicts, writes nothing. The
    /// alerts a scenario expects are not judged again (they need the run's
    /// Prometheus).
    Judge(Chosen),
}

/// Which scenario, with which seed and duration (`scenario plan` and `run`).
#[derive(Debug, Clone, clap::Args)]
pub struct Chosen {
    /// Scenario name (file stem in tests/scenarios).
    pub name: String,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the duration (humantime, e.g. 20m).
    #[arg(long)]
    pub duration: Option<String>,
}

impl Chosen {
    /// The scenario named, with default seed and duration.
    pub fn named(name: &str, seed: Option<u64>) -> Self {
        Chosen {
            name: name.to_string(),
            seed,
            duration: None,
        }
    }

    /// Loads the scenario with the duration applied; returns it and the seed.
    pub fn load(&self) -> Result<(Scenario, u64)> {
        let path = scenario_dir().join(format!("{}.toml", self.name));
        let mut scn = Scenario::load(&path)?;
        if let Some(d) = &self.duration {
            dur("--duration", d)?;
            scn.duration = d.clone();
        }
        let seed = self.seed.unwrap_or(scn.seed);
        Ok((scn, seed))
    }
}

/// `scenario run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The scenario.
    #[command(flatten)]
    pub chosen: Chosen,
    /// Where the services run.
    #[arg(long, value_enum, default_value_t = Engine::Dind)]
    pub engine: Engine,
    /// The bridge image to test (default: the one `cargo xtask images` builds).
    #[arg(long, default_value = BRIDGE_IMAGE)]
    pub bridge_image: String,
}

/// `tests/scenarios`.
pub fn scenario_dir() -> PathBuf {
    workspace().join("tests").join("scenarios")
}

use crate::paths::workspace_root as workspace;

/// `target/reliability`.
pub fn out_root() -> PathBuf {
    crate::paths::target_dir().join("reliability")
}

/// Entry point of `cargo xtask scenario`.
pub fn run(cmd: &Command) -> Result<()> {
    match cmd {
        Command::List => {
            for s in Scenario::load_dir(&scenario_dir())? {
                println!(
                    "{:<18} {:>6} {:>3} services {:>2} faults{}  {}",
                    s.name,
                    s.duration,
                    s.services.len(),
                    s.faults.len(),
                    if s.ci { "  [ci]" } else { "      " },
                    s.description
                );
            }
            Ok(())
        }
        Command::Plan(args) => plan::print(args),
        Command::Judge(args) => judge(args),
        Command::Run(args) => {
            crate::provision::run(&crate::provision::Args { no_images: false })?;
            let rt = runtime()?;
            let out = rt.block_on(run_named(args, &|m| println!("{m}")))?;
            println!("\n{}", std::fs::read_to_string(out.dir.join("summary.md"))?);
            println!("reports in {}", out.dir.display());
            if out.report.verdict != "pass" {
                bail!("scenario {} failed", args.chosen.name);
            }
            Ok(())
        }
    }
}

/// `scenario judge`.
fn judge(args: &Chosen) -> Result<()> {
    let (scn, seed) = args.load()?;
    let path = out_root()
        .join(format!("{}-{seed}", scn.name))
        .join("history.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run the scenario first)", path.display()))?;
    let h: probe::History = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a recorded history", path.display()))?;
    let marks = Marks {
        availability: scn.thresholds.availability,
        recovery_ms: scn.thresholds.recovery_ms,
    };
    let (verdicts, fig) = invariants::check(&h, marks);
    let r = report::build(&scn.name, seed, "-", &h, &verdicts, &fig, h.end_ms);
    let summary = report::summary(&r);
    println!("{summary}");
    // Beside the run's own report, which keeps what was judged then.
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::write(dir.join("judged.md"), &summary)?;
    std::fs::write(dir.join("judged.json"), serde_json::to_string_pretty(&r)?)?;
    if r.verdict != "pass" {
        bail!("{} (seed {seed}) fails as judged now", scn.name);
    }
    Ok(())
}

/// A tokio runtime for the harness.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The run directory.
    pub dir: PathBuf,
    /// The report.
    pub report: report::Report,
}

/// Loads `name` and runs it, with cleanup on ctrl-c.
pub async fn run_named(args: &RunArgs, say: &(dyn Fn(&str) + Sync)) -> Result<RunOutput> {
    let (scn, seed) = args.chosen.load()?;
    crate::interrupt::check()?;
    crate::owner::sweep_dead(&out_root(), &|m| say(m));
    let run_id = format!("{}-{}-{}", scn.name, seed, std::process::id());
    let mut cleanup = Cleanup::new(&run_id);
    let result = tokio::select! {
        r = run_scenario(&scn, seed, args, &run_id, &mut cleanup, say) => r,
        sig = crate::interrupt::wait() => Err(anyhow::anyhow!("interrupted by {sig}")),
    };
    say("cleaning up");
    cleanup.run().await;
    result
}
