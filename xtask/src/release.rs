//! The one optimised build of the workspace: every release binary xtask
//! needs (the images' `mesh-bridge` and `mcp-stub`, the bench's bridge and
//! its release xtask, the pool's criterion bench, the long crash test) comes
//! from this one cargo configuration and one target directory, so a fresh
//! machine compiles the dependency tree in release once, not once per use.
//!
//! The configuration: `--release --target x86_64-unknown-linux-gnu
//! --target-dir <target>/static`, `RUSTFLAGS=-C target-feature=+crt-static`
//! (glibc, statically linked, so the binaries run `FROM scratch`; the explicit
//! target keeps the flag off build scripts and proc macros), no debug info
//! (symbols stay, so backtraces and `perf` keep function names).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Result, ensure};

use crate::interrupt;

/// The only target with a std installed here; static via `+crt-static`.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// `<target>/static`.
pub fn target_dir() -> PathBuf {
    crate::paths::target_dir().join("static")
}

/// Where the release binaries land.
pub fn bin_dir() -> PathBuf {
    target_dir().join(TARGET).join("release")
}

/// `cargo <subcommand> --release --target .. --target-dir ..` with the
/// static flags set and nothing inherited that would change them.
pub fn cargo(subcommand: &str) -> Command {
    cargo_in(&crate::paths::workspace_root(), &target_dir(), subcommand)
}

/// [`cargo`] for another copy of the workspace (`cargo xtask teeth`'s
/// scratch copy) and target directory.
pub fn cargo_in(root: &Path, target_dir: &Path, subcommand: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).arg(subcommand);
    if subcommand != "bench" {
        // `cargo bench` uses the bench profile (which inherits release).
        cmd.arg("--release");
    }
    cmd.args(["--target", TARGET, "--target-dir"])
        .arg(target_dir)
        .stdin(Stdio::null());
    // Only the explicit RUSTFLAGS applies (cargo prefers the encoded form).
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.contains("crt-static") {
        rustflags = format!("{rustflags} -C target-feature=+crt-static")
            .trim()
            .to_owned();
    }
    // No debug info (the workspace's release profile keeps line tables, which
    // make mesh-bridge ~60 MB); the bench profile inherits these.
    cmd.env("RUSTFLAGS", rustflags)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    cmd
}

/// Builds these `(package, binary)` pairs and returns the directory holding
/// them.
pub fn build(bins: &[(&str, &str)]) -> Result<PathBuf> {
    let mut cmd = cargo("build");
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    let st = interrupt::status(&mut cmd)?;
    ensure!(
        st.success(),
        "cargo build --release (static, {TARGET}) of {} failed ({st})",
        bins.iter().map(|(_, b)| *b).collect::<Vec<_>>().join(", ")
    );
    Ok(bin_dir())
}
