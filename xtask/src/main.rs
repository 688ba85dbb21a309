//! Project automation: `cargo xtask <command>`. Images, scenarios, the
//! reliability run, benchmarks, dashboard checks and the long crash test.

mod bench;
mod dashboards;
mod dind;
mod images;
mod reliability;
mod scenario;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "mesh-bridge project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the local images (no registry is contacted), cached by content hash.
    Images(images::Args),
    /// Lint the Grafana dashboards and Prometheus rules, and run every panel query.
    Dashboards {
        #[command(subcommand)]
        command: dashboards::Command,
    },
    /// List or run reliability scenarios (tests/scenarios/*.toml).
    Scenario {
        #[command(subcommand)]
        command: scenario::Command,
    },
    /// The reliability suite CI runs: the `ci = true` scenarios, a verdict table.
    Reliability(reliability::Args),
    /// The performance suite: a table and target/bench/report.json.
    Bench(bench::Args),
    /// Run the store crash test with more kills than `cargo test` does.
    Crash {
        /// How many times the writer is killed with SIGKILL.
        #[arg(long, default_value_t = 1000)]
        iterations: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Images(args) => images::run(&args),
        Command::Dashboards { command } => dashboards::run(&command),
        Command::Bench(args) => bench::run(&args),
        Command::Crash { iterations } => crash(iterations),
        Command::Scenario { command } => scenario::run(&command),
        Command::Reliability(args) => reliability::run(&args),
    }
}

/// Re-runs the store crash test with `MESH_BRIDGE_CRASH_ITERATIONS` raised.
fn crash(iterations: u32) -> Result<()> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "--release",
                "-p",
                "mesh-bridge",
                "--test",
                "store_crash",
                "--",
                "--nocapture",
            ])
            .env("MESH_BRIDGE_CRASH_ITERATIONS", iterations.to_string())
            .status()?;
    anyhow::ensure!(status.success(), "store crash test failed ({status})");
    Ok(())
}
