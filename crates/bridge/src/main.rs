//! The `mesh-bridge` binary: `run`, `status` and `state`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_bridge::config::RunArgs;
use mesh_bridge::state::StateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-bridge",
    version,
    about = "Stable host ports for labelled Docker services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge daemon.
    Run(RunArgs),
    /// Show the pool and the services as a table.
    Status {
        /// Base URL of a running bridge's API.
        #[arg(long, env = "MESH_BRIDGE_API", default_value = "http://127.0.0.1:9464")]
        api: String,
    },
    /// Export, import or check the durable state.
    State(StateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(_args) => Err(anyhow::anyhow!("run is not wired yet")),
        Command::Status { api: _ } => Err(anyhow::anyhow!("status is not wired yet")),
        Command::State(args) => mesh_bridge::state::run(&args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-bridge: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
