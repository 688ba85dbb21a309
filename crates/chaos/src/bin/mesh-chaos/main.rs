//! `mesh-chaos <fault> [flags] [--dry-run]`: the harness's faults against any
//! deployment (docs/DESIGN.md section 4).
//!
//! Container faults pick victims by label (`--label K=V [--count N |
//! --fraction F]`); deployment faults name what they act on: the bridge or
//! engine container, the bridge's state directory, a port, an image to flood
//! with. Docker commands go to the engine of `DOCKER_HOST`, or
//! `--docker-host`. With `--dry-run` every fault prints exactly what it would
//! do and changes nothing (it may still read: `docker ps` / `inspect`, the
//! store's size, whether the state directory is locked).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use mesh_bridge::contract::files;
use mesh_chaos::faults::store::Said;
use mesh_chaos::faults::{self, Docker, FaultKind, SERVICE_LABEL, StoreDamage};
use mesh_chaos::schedule;

mod args;
mod container;
mod ctx;
mod deploy;
mod network;

use args::*;
use container::*;
use ctx::*;
use deploy::*;
use network::*;

/// Sleeps `d`, or less on Ctrl-C; true when interrupted.
pub(crate) async fn hold_for(d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = tokio::signal::ctrl_c() => {
            println!("  interrupted: healing now");
            true
        }
    }
}

pub(crate) fn header(ctx: &Ctx, fault: impl std::fmt::Display, what: &str) {
    println!("{}{fault}: {what}", if ctx.dry { "dry run: " } else { "" });
}

pub(crate) async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        docker: Docker {
            host: cli.docker_host.clone(),
        },
        dry: cli.dry_run,
    };
    match cli.fault {
        Fault::ContainerKill(a) => containers(&ctx, FaultKind::ContainerKill, a).await,
        Fault::ContainerStop(a) => containers(&ctx, FaultKind::ContainerStop, a).await,
        Fault::ContainerRestart(a) => containers(&ctx, FaultKind::ContainerRestart, a).await,
        Fault::ContainerPause(a) => containers(&ctx, FaultKind::ContainerPause, a).await,
        Fault::ContainerRemove(a) => containers(&ctx, FaultKind::ContainerRemove, a).await,
        Fault::BridgeKill(a) => bridge_kill(&ctx, a).await,
        Fault::BridgeRestart(a) => bridge_restart(&ctx, a).await,
        Fault::EngineRestart(a) => engine_restart(&ctx, a).await,
        Fault::StoreCorrupt(a) => store_damage(
            &ctx,
            &a.store.state_dir,
            StoreDamage::Corrupt { seed: a.seed },
        ),
        Fault::StoreTruncate(a) => store_damage(&ctx, &a.state_dir, StoreDamage::Truncate),
        Fault::PortSquat(a) => port_squat(&ctx, a).await,
        Fault::RegistrationFlood(a) => flood(&ctx, a).await,
        Fault::NetLoss(a) => net(&ctx, FaultKind::NetLoss, a).await,
        Fault::NetReset(a) => net(&ctx, FaultKind::NetReset, a).await,
        Fault::NetBlackhole(a) => net(&ctx, FaultKind::NetBlackhole, a).await,
        Fault::NetLatency(a) => latency(&ctx, a).await,
        Fault::Other(argv) => {
            let name = argv.first().map(String::as_str).unwrap_or("");
            let list = CLI_FAULTS.join(", ");
            match FaultKind::parse(name) {
                Some(k) => bail!(
                    "fault {k} runs only in scenarios (cargo xtask scenario run); \
                     on the command line use one of: {list}"
                ),
                None => bail!("unknown fault {name:?}; use one of: {list} (see mesh-chaos --help)"),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-chaos: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
