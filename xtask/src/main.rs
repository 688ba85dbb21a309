//! Project automation: `cargo xtask <command>`. Provisioning, the tests,
//! images, scenarios, the reliability run, benchmarks, dashboard checks and
//! the long crash test.

mod bench;
mod dashboards;
mod dind;
mod docker;
mod fuzz;
mod images;
mod interrupt;
mod mcp_python;
mod mutants;
mod owner;
mod paths;
mod pip_target;
mod provision;
mod release;
mod reliability;
mod scenario;
mod teeth;
mod test;

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
    /// Set up this machine: wait for the Docker engine, install missing Debian
    /// tools (apt-get, as root), build missing or stale images.
    Provision(provision::Args),
    /// The tests: provision, fmt and clippy, the dashboards check, then
    /// `cargo test --workspace` (arguments after `--` go to cargo test).
    Test(test::Args),
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
    /// Re-introduce known bugs into a scratch copy of the bridge, one at a
    /// time, and show which scenario and invariant catches each.
    Teeth(teeth::Args),
    /// Run every fuzz target under libFuzzer (nightly, cargo-fuzz) from the
    /// committed corpora; a table of executions and crashes.
    Fuzz(fuzz::Args),
    /// Run cargo-mutants over pool, registry, reconcile and store (not in
    /// CI: over an hour); a score per file and every missed mutant.
    Mutants(mutants::Args),
    /// Run the store crash test with more kills than `cargo test` does.
    Crash {
        /// How many times the writer is killed with SIGKILL.
        #[arg(long, default_value_t = 1000)]
        iterations: u32,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = interrupt::install() {
        eprintln!("xtask: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let result = dispatch(cli.command);
    if let Some(sig) = interrupt::requested() {
        eprintln!(
            "xtask: interrupted by {sig}; what this run started was removed{}",
            result
                .as_ref()
                .err()
                .map_or(String::new(), |e| format!(" ({e:#})"))
        );
        return std::process::ExitCode::from(interrupt::EXIT_CODE as u8);
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Provision(args) => provision::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Images(args) => images::run(&args),
        Command::Dashboards { command } => dashboards::run(&command),
        Command::Bench(args) => bench::run(&args),
        Command::Crash { iterations } => crash(iterations),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Mutants(args) => mutants::run(&args),
        Command::Scenario { command } => scenario::run(&command),
        Command::Reliability(args) => reliability::run(&args),
        Command::Teeth(args) => teeth::run(&args),
    }
}

/// Re-runs the store crash test with `MESH_BRIDGE_CRASH_ITERATIONS` raised,
/// in the shared release build.
fn crash(iterations: u32) -> Result<()> {
    let mut cmd = release::cargo("test");
    cmd.args([
        "-p",
        "mesh-bridge",
        "--test",
        "store_crash",
        "--",
        "--nocapture",
    ])
    .env("MESH_BRIDGE_CRASH_ITERATIONS", iterations.to_string());
    let status = interrupt::status(&mut cmd)?;
    anyhow::ensure!(status.success(), "store crash test failed ({status})");
    Ok(())
}
