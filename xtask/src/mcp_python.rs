//! The official MCP Python SDK, pinned by `xtask/images/mcp-python/requirements.txt`:
//! installed once into `target/mcp-sdk` (the client of the bridge's e2e tests
//! runs from it) and staged into the image `mesh-bridge/mcp-python:dev`
//! (FastMCP servers on a debootstrap rootfs with Debian's python3), so the
//! tests drive real MCP servers with the real client and nothing is pulled
//! from a registry.
//!
//! The SDK comes from PyPI through [`crate::pip_target`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, ensure};
use mesh_bridge::contract::images;

use crate::dind::{self, RootfsImage};
use crate::docker::run;
use crate::paths::target_dir;

/// The source directory's name under `xtask/images`.
const NAME: &str = "mcp-python";
/// The server script, copied into the image.
const SERVER: &str = "fastmcp_server.py";

/// Where the SDK is installed for the tests (`PYTHONPATH`).
pub fn sdk_dir() -> PathBuf {
    target_dir().join("mcp-sdk")
}

fn requirements() -> Result<(PathBuf, String)> {
    let path = dind::source_dir(NAME).join("requirements.txt");
    let text = dind::read(&path)?;
    Ok((path, text))
}

/// Installs the pinned SDK into [`sdk_dir`] unless it is already there.
pub fn ensure_sdk(t0: Instant) -> Result<PathBuf> {
    let (path, _) = requirements()?;
    crate::pip_target::ensure(t0, "the MCP Python SDK", &path, &sdk_dir())?;
    Ok(sdk_dir())
}

/// Builds (or reuses, by content hash) `mesh-bridge/mcp-python:dev`.
pub fn build(force: bool) -> Result<String> {
    let t0 = Instant::now();
    let sdk = ensure_sdk(t0)?;
    let src = dind::source_dir(NAME);
    let (_, reqs) = requirements()?;
    let server = dind::read(&src.join(SERVER))?;
    // One context per process: xtask runs started side by side (the tests
    // start several) each stage and remove their own.
    let context = target_dir()
        .join("images")
        .join(format!("{NAME}.context.{}", std::process::id()));
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    fs::copy(src.join(SERVER), context.join(SERVER))?;
    copy_tree(&sdk, &context.join("site"))?;
    let mut hashed = reqs.into_bytes();
    hashed.extend_from_slice(server.as_bytes());
    let result = dind::build_rootfs_image(
        &RootfsImage {
            name: NAME,
            tag: images::MCP_PYTHON,
            context: context.clone(),
            hashed,
        },
        force,
    );
    let _ = fs::remove_dir_all(&context);
    result
}

/// `cp -a src dst` (the SDK tree: thousands of small files).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    ensure!(src.is_dir(), "{} is not a directory", src.display());
    run(Command::new("cp").arg("-a").arg(src).arg(dst))
}
