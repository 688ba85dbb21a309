//! The docker CLI for xtask's blocking steps (images, provisioning, sweeps):
//! one place that builds the command (stdin closed), runs it, and reports a
//! failure with the command line and docker's stderr; and the image queries
//! both image builders need. The scenario runner's async calls go through
//! `mesh_chaos::faults::Docker` instead.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// `docker <args>` with stdin closed.
pub fn docker<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("docker");
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `cmd` (output inherited); an error names the command and its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    ensure!(status.success(), "{shown} failed ({status})");
    Ok(())
}

/// Runs `cmd` and returns its stdout; an error names the command, its
/// status and stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` for its effect only, ignoring its output and failure (best
/// effort clean-ups).
pub fn quietly(cmd: &mut Command) {
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Whether a local image exists.
pub fn image_exists(image: &str) -> Result<bool> {
    let status = docker(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running docker (is the docker CLI installed?)")?;
    Ok(status.success())
}

/// `docker image inspect -f FORMAT`, `None` when the image is absent.
fn inspect(image: &str, format: &str) -> Result<Option<String>> {
    if !image_exists(image)? {
        return Ok(None);
    }
    let v = capture(&mut docker(["image", "inspect", "-f", format, image]))?;
    Ok(Some(v.trim().to_string()))
}

/// A label of a local image, `None` when the image or the label is absent.
pub fn image_label(image: &str, label: &str) -> Result<Option<String>> {
    let v = inspect(image, &format!("{{{{index .Config.Labels \"{label}\"}}}}"))?;
    Ok(v.filter(|v| !v.is_empty() && v != "<no value>"))
}

/// The id of a local image, `None` when absent.
pub fn image_id(image: &str) -> Result<Option<String>> {
    inspect(image, "{{.Id}}")
}

/// The size of a local image in bytes, `None` when absent or unreadable.
pub fn image_size(image: &str) -> Option<u64> {
    inspect(image, "{{.Size}}").ok()??.parse().ok()
}
