//! `cargo xtask images`: builds the local images with no registry.

use anyhow::Result;

/// Flags of `cargo xtask images`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Builds every image.
pub fn run(_args: &Args) -> Result<()> {
    anyhow::bail!("not built yet")
}
