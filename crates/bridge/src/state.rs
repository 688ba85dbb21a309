//! `mesh-bridge state export|import|check`: moving state as JSON, including the seed system's legacy map.

use std::path::PathBuf;
use std::process::ExitCode;

/// `mesh-bridge state ...`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// Directory of the durable store.
    #[arg(long, env = "MESH_BRIDGE_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Port ranges imports and checks are validated against.
    #[arg(long, env = "MESH_BRIDGE_PORTS", global = true, value_name = "RANGES")]
    pub ports: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: StateCommand,
}

/// The state subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Write the reservations as JSON (stdout when FILE is left out).
    Export {
        /// Output file.
        file: Option<PathBuf>,
    },
    /// Import reservations from v1 JSON or the legacy {"service": port} map, all or nothing.
    Import {
        /// Input file.
        file: PathBuf,
    },
    /// Exit 0 when the store opens and is consistent; never modifies it.
    Check,
}

/// Why a state command failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {}

/// Runs a state subcommand.
pub fn run(_args: &StateArgs) -> Result<ExitCode, StateError> {
    Ok(ExitCode::SUCCESS)
}
