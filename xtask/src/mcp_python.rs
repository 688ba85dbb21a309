//! The official MCP Python SDK, pinned by `xtask/images/mcp-python/requirements.txt`:
//! installed once into `target/mcp-sdk` (the client of the bridge's e2e tests
//! runs from it) and staged into the image `mesh-bridge/mcp-python:dev`
//! (FastMCP servers on a debootstrap rootfs with Debian's python3), so the
//! tests drive real MCP servers with the real client and nothing is pulled
//! from a registry.
//!
//! The SDK comes from PyPI through the host's `python3 -m pip install
//! --no-deps --only-binary=:all: --target` of the pinned list; the directory
//! carries the list's hash in `.requirements-hash` and is reinstalled only
//! when the list changes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use mesh_bridge::contract::images;

use crate::dind::{self, RootfsImage};
use crate::docker::run;
use crate::images::sha256_hex;
use crate::paths::target_dir;

/// The source directory's name under `xtask/images`.
const NAME: &str = "mcp-python";
/// Marker file holding the hash of the requirements the SDK dir was made from.
const MARKER: &str = ".requirements-hash";
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
    let (path, text) = requirements()?;
    let hash = sha256_hex(&[text.as_bytes()])?;
    let dir = sdk_dir();
    if fs::read_to_string(dir.join(MARKER)).is_ok_and(|h| h.trim() == hash) {
        return Ok(dir);
    }
    println!(
        "[provision {:>6.1}s] installing the MCP Python SDK ({}) into {}",
        t0.elapsed().as_secs_f64(),
        path.display(),
        dir.display()
    );
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(["--no-deps", "--only-binary=:all:", "--no-compile", "--target"])
        .arg(&partial)
        .arg("-r")
        .arg(&path)
        .env("PIP_NO_INPUT", "1"))
    .with_context(|| {
        format!(
            "installing the MCP Python SDK from PyPI ({}); needs python3 with pip and access to pypi.org",
            path.display()
        )
    })?;
    fs::write(partial.join(MARKER), &hash)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir).with_context(|| format!("moving {} into place", dir.display()))?;
    Ok(dir)
}

/// Builds (or reuses, by content hash) `mesh-bridge/mcp-python:dev`.
pub fn build(force: bool) -> Result<String> {
    let t0 = Instant::now();
    let sdk = ensure_sdk(t0)?;
    let src = dind::source_dir(NAME);
    let (_, reqs) = requirements()?;
    let server = dind::read(&src.join(SERVER))?;
    let context = target_dir().join("images").join(format!("{NAME}.context"));
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
