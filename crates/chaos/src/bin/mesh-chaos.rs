//! `mesh-chaos <fault> --label K=V [--count N | --fraction F] [--interval D]
//! [--seed N] [--dry-run]`: the harness's container faults against any
//! deployment (the engine of `DOCKER_HOST`, or `--docker-host`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mesh_chaos::faults::{self, Docker, FaultKind};
use mesh_chaos::schedule;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-chaos",
    version,
    about = "Inject faults into a mesh-bridge deployment"
)]
struct Cli {
    /// container-kill | container-stop | container-restart | container-pause | container-remove
    fault: String,
    /// Containers to choose from: label `K=V` (or `K`); repeatable, all must match.
    #[arg(long, required = true)]
    label: Vec<String>,
    /// How many containers each round.
    #[arg(long, conflicts_with = "fraction")]
    count: Option<u32>,
    /// Or which fraction of the matching containers each round.
    #[arg(long)]
    fraction: Option<f64>,
    /// Repeat every interval (humantime, e.g. 10s); once when left out.
    #[arg(long)]
    interval: Option<String>,
    /// How many rounds with --interval.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Seed of the victim choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Heal after this long (start killed/stopped containers, unpause); 0 = never.
    #[arg(long, default_value = "0s")]
    hold: String,
    /// Engine to act on (default: the docker CLI's, i.e. DOCKER_HOST).
    #[arg(long)]
    docker_host: Option<String>,
    /// Print what would be done and touch nothing.
    #[arg(long)]
    dry_run: bool,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let kind = FaultKind::parse(&cli.fault)
        .filter(|k| k.is_container())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown container fault {:?}; use one of: {}",
                cli.fault,
                FaultKind::ALL
                    .iter()
                    .filter(|k| k.is_container())
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    if let Some(f) = cli.fraction {
        anyhow::ensure!(f > 0.0 && f <= 1.0, "--fraction must be in (0, 1]");
    }
    let interval = match &cli.interval {
        Some(i) => Some(mesh_chaos::scenario::dur("--interval", i)?),
        None => None,
    };
    let hold = mesh_chaos::scenario::dur("--hold", &cli.hold)?;
    let rounds = if interval.is_some() {
        cli.rounds.clamp(1, 10_000)
    } else {
        1
    };
    let docker = Docker {
        host: cli.docker_host.clone(),
    };
    let mut seeds = rand_seeds(cli.seed, rounds);
    for round in 0..rounds {
        let containers = docker.list(&cli.label).await?;
        let running: Vec<_> = containers
            .into_iter()
            .filter(|c| c.state == "running" || kind == FaultKind::ContainerRemove)
            .collect();
        let victims = schedule::pick(&running, cli.count, cli.fraction, seeds.remove(0));
        let ids: Vec<String> = victims.iter().map(|c| c.id.clone()).collect();
        let names: Vec<&str> = victims.iter().map(|c| c.name.as_str()).collect();
        let cmds = faults::container_commands(kind, &ids);
        let heal = faults::container_heal_commands(kind, &ids);
        println!(
            "round {}: {} {} of {} matching [{}]",
            round + 1,
            kind,
            victims.len(),
            running.len(),
            names.join(", ")
        );
        for c in &cmds {
            println!(
                "  {}docker {}",
                if cli.dry_run { "would run: " } else { "" },
                c.join(" ")
            );
        }
        if !hold.is_zero() {
            for c in &heal {
                println!(
                    "  {}after {}: docker {}",
                    if cli.dry_run { "would run " } else { "" },
                    humantime::format_duration(hold),
                    c.join(" ")
                );
            }
        }
        if !cli.dry_run {
            faults::run_all(&docker, &cmds).await?;
            if !hold.is_zero() && !heal.is_empty() {
                tokio::time::sleep(hold).await;
                faults::run_all(&docker, &heal).await?;
            }
        }
        if round + 1 < rounds
            && let Some(i) = interval
        {
            if cli.dry_run {
                println!("  would wait {}", humantime::format_duration(i));
            } else {
                tokio::time::sleep(i.saturating_sub(hold).max(Duration::from_millis(1))).await;
            }
        }
    }
    Ok(())
}

/// One victim seed a round, from the run's seed.
fn rand_seeds(seed: u64, rounds: u32) -> Vec<u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rounds)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect()
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
