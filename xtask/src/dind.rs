//! The DinD image `mesh-bridge/dind:dev`: a Debian rootfs with dockerd, built with no registry.

use anyhow::Result;

/// Builds (or reuses, by content hash) the DinD image and returns its tag.
#[allow(dead_code)]
pub fn build(_force: bool) -> Result<String> {
    anyhow::bail!("not built yet")
}
