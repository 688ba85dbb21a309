//! Python tools from PyPI, pinned by a requirements list that names every
//! package (`--no-deps`), installed with the host's `python3 -m pip install
//! --only-binary=:all: --target DIR` and run with `PYTHONPATH=DIR`. The
//! directory carries the list's hash in `.requirements-hash` and is
//! reinstalled only when the list changes; a half-done install never takes
//! the directory's place.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::docker::run;
use crate::images::sha256_hex;
use crate::paths::{target_dir, workspace_root};

/// Marker file holding the hash of the requirements the directory was made from.
const MARKER: &str = ".requirements-hash";

/// schemathesis, pinned by `xtask/python/schemathesis.txt`, in
/// `target/schemathesis` (the e2e contract test's `MESH_SCHEMATHESIS`).
pub fn schemathesis_dir() -> PathBuf {
    target_dir().join("schemathesis")
}

/// Installs schemathesis into [`schemathesis_dir`] unless it is there.
pub fn ensure_schemathesis(t0: Instant) -> Result<PathBuf> {
    let list = workspace_root().join("xtask/python/schemathesis.txt");
    ensure(t0, "schemathesis", &list, &schemathesis_dir())?;
    Ok(schemathesis_dir())
}

/// Installs the packages `list` pins into `dir` unless `dir` was made from
/// this very list.
pub fn ensure(t0: Instant, what: &str, list: &Path, dir: &Path) -> Result<()> {
    let text = fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let hash = sha256_hex(&[text.as_bytes()])?;
    if fs::read_to_string(dir.join(MARKER)).is_ok_and(|h| h.trim() == hash) {
        return Ok(());
    }
    println!(
        "[provision {:>6.1}s] installing {what} ({}) into {}",
        t0.elapsed().as_secs_f64(),
        list.display(),
        dir.display()
    );
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args([
            "--no-deps",
            "--only-binary=:all:",
            "--no-compile",
            "--target",
        ])
        .arg(&partial)
        .arg("-r")
        .arg(list)
        .env("PIP_NO_INPUT", "1"))
    .with_context(|| {
        format!(
            "installing {what} from PyPI ({}); needs python3 with pip and access to pypi.org",
            list.display()
        )
    })?;
    fs::write(partial.join(MARKER), &hash)?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir).with_context(|| format!("moving {} into place", dir.display()))?;
    Ok(())
}
