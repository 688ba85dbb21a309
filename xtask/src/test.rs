//! `cargo xtask test [-- ARGS]`: the project's tests, set up and run in one
//! step: provisioning (engine, Debian tools, images), then `cargo fmt
//! --check` and `cargo clippy -D warnings` (unless `--no-lint`), the
//! dashboards check (lint, promtool rule checks and rule tests),
//! `cargo test --workspace ARGS`, and a short fuzz pass (10 s a target). Each child is stopped on SIGINT/SIGTERM.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::interrupt;

/// Flags of `cargo xtask test`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub no_lint: bool,
    /// Passed to `cargo test --workspace` (after `--`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

fn step(t0: Instant, what: &str) {
    println!("\n== test {:>6.1}s: {what}", t0.elapsed().as_secs_f64());
}

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::paths::workspace_root())
        .args(args)
        .args(extra)
        // Where provisioning put the MCP SDK the e2e tests' client runs on.
        .env("MESH_MCP_SDK", crate::mcp_python::sdk_dir())
        // Where it put schemathesis, which the e2e contract test runs.
        .env("MESH_SCHEMATHESIS", crate::pip_target::schemathesis_dir());
    let st = interrupt::status(&mut cmd)?;
    ensure!(st.success(), "`cargo {}` failed ({st})", args.join(" "));
    Ok(())
}

/// Runs the steps in order; the first failure stops it.
pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    step(t0, "provision");
    crate::provision::run(&crate::provision::Args { no_images: false })?;
    if !args.no_lint {
        step(t0, "cargo fmt --all --check");
        cargo(&["fmt", "--all", "--check"], &[])?;
        step(t0, "cargo clippy --workspace --all-targets -- -D warnings");
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )?;
    }
    step(t0, "dashboards: lint, promtool checks and rule tests");
    crate::dashboards::run(&crate::dashboards::Command::Check(
        crate::dashboards::CheckArgs::defaults(None),
    ))?;
    interrupt::check()?;
    step(t0, "cargo test --workspace");
    cargo(&["test", "--workspace"], &args.cargo_args)?;
    interrupt::check()?;
    step(t0, "fuzz: a short pass of every target");
    crate::fuzz::run(&crate::fuzz::Args::ci())?;
    step(t0, "done");
    Ok(())
}
