//! `cargo xtask dashboards check`: lints dashboards and rules.

use anyhow::Result;

/// Subcommands of `cargo xtask dashboards`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Lint the dashboards and rules.
    Check,
}

/// Runs a dashboards subcommand.
pub fn run(_command: &Command) -> Result<()> {
    anyhow::bail!("not built yet")
}
