//! `cargo xtask fuzz [--seconds N] [--only T] [--keep]`: every fuzz target
//! of `mesh_bridge::fuzzing::TARGETS` under libFuzzer (cargo-fuzz, nightly
//! toolchain, AddressSanitizer unless `--sanitizer none`), one after the
//! other, each for `--seconds`, then a table of executions and crashes.
//! `cargo xtask test` runs a short pass ([`Args::ci`]).
//!
//! Each target starts from the committed corpus `fuzz/corpus/<target>/` and
//! writes what it finds to `target/fuzz/corpus/<target>/`, so a run never
//! changes the work tree; `--keep` merges the new coverage back into the
//! committed corpus (libFuzzer's `-merge=1`, which keeps only inputs that
//! add coverage). A crash fails the run and names its input under
//! `fuzz/artifacts/<target>/`; once fixed, copy it into the corpus, where
//! `cargo test` replays it for good (`tests/fuzz_corpus.rs`).

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mesh_bridge::fuzzing::TARGETS;

use crate::interrupt;
use crate::paths::{target_dir, workspace_root};

/// The cargo-fuzz release installed when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The toolchain libFuzzer's instrumentation needs.
const TOOLCHAIN: &str = "+nightly";

/// Flags of `cargo xtask fuzz`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Merge what the run found into the committed corpora.
    #[arg(long)]
    pub keep: bool,
    /// `address` (AddressSanitizer, the default) or `none` (about four
    /// times the executions per second; a broken property still fails,
    /// memory errors in unsafe code of dependencies may go unseen).
    #[arg(long, default_value = "address", value_parser = ["address", "none"])]
    pub sanitizer: String,
}

impl Args {
    /// The short pass `cargo xtask test` runs: every target, 10 s each.
    pub fn ci() -> Args {
        Args {
            seconds: 10,
            only: Vec::new(),
            keep: false,
            sanitizer: "address".into(),
        }
    }
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// One target's run.
#[derive(Debug)]
struct Outcome {
    name: &'static str,
    seconds: f64,
    executions: u64,
    crashed: Option<String>,
}

/// Installs cargo-fuzz (from crates.io) unless `cargo fuzz` answers, and
/// checks the nightly toolchain is there.
fn ensure_tools() -> Result<()> {
    let answers = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    ensure!(
        answers(&[TOOLCHAIN, "--version"]),
        "the nightly toolchain is missing (libFuzzer needs it): run `rustup toolchain install nightly`"
    );
    if !answers(&["fuzz", "--version"]) {
        println!("[fuzz] installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io");
        let st = interrupt::status(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
        ensure!(st.success(), "`cargo install cargo-fuzz` failed ({st})");
    }
    Ok(())
}

/// `stat::number_of_executed_units` of libFuzzer's final stats.
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
}

/// The input libFuzzer saved for a crash, from its log.
fn crash_input(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_string())
        .next_back()
}

/// `cargo +nightly fuzz run --sanitizer S NAME`, to which the corpus
/// directories and libFuzzer's flags are added.
fn fuzz_run(name: &str, args: &Args) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args([
        TOOLCHAIN,
        "fuzz",
        "run",
        "--sanitizer",
        &args.sanitizer,
        name,
    ]);
    cmd
}

fn run_one(name: &'static str, args: &Args) -> Result<Outcome> {
    let (seconds, keep) = (args.seconds, args.keep);
    let committed = fuzz_dir().join("corpus").join(name);
    let found = target_dir().join("fuzz").join("corpus").join(name);
    fs::create_dir_all(&found)?;
    let log_path = target_dir().join("fuzz").join(format!("{name}.log"));
    let log = fs::File::create(&log_path)?;
    let t0 = Instant::now();
    let mut cmd = fuzz_run(name, args);
    cmd.arg(&found)
        .arg(&committed)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=4096"])
        .stdout(log.try_clone()?)
        .stderr(log);
    let st = interrupt::status(&mut cmd)?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let crashed = (!st.success()).then(|| {
        crash_input(&text).unwrap_or_else(|| format!("exit {st}; see {}", log_path.display()))
    });
    if keep && crashed.is_none() {
        let st = interrupt::status(
            fuzz_run(name, args)
                .arg(&committed)
                .arg(&found)
                .args(["--", "-merge=1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        ensure!(st.success(), "merging {name}'s corpus failed ({st})");
    }
    Ok(Outcome {
        name,
        seconds: t0.elapsed().as_secs_f64(),
        executions: executions(&text).unwrap_or(0),
        crashed,
    })
}

/// Builds every target, runs each, prints the table; a crash fails.
pub fn run(args: &Args) -> Result<()> {
    for o in &args.only {
        if !TARGETS.iter().any(|(n, _)| n == o) {
            let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            bail!("no fuzz target `{o}`; the targets are {}", names.join(", "));
        }
    }
    ensure!(args.seconds > 0, "--seconds must be at least 1");
    ensure_tools()?;
    println!(
        "[fuzz] building the targets (nightly, sanitizer {})",
        args.sanitizer
    );
    let st = interrupt::status(Command::new("cargo").current_dir(workspace_root()).args([
        TOOLCHAIN,
        "fuzz",
        "build",
        "--sanitizer",
        &args.sanitizer,
    ]))
    .context("cargo fuzz build")?;
    ensure!(st.success(), "`cargo +nightly fuzz build` failed ({st})");
    let mut outcomes = Vec::new();
    for (name, _) in TARGETS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        interrupt::check()?;
        println!("[fuzz] {name}: {} s", args.seconds);
        outcomes.push(run_one(name, args)?);
    }
    print_table(&outcomes);
    let crashed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.crashed.as_ref().map(|c| format!("{}: {c}", o.name)))
        .collect();
    ensure!(
        crashed.is_empty(),
        "a fuzz target broke a property:\n  {}\nreplay one with `cargo +nightly fuzz run TARGET INPUT`",
        crashed.join("\n  ")
    );
    Ok(())
}

fn print_table(outcomes: &[Outcome]) {
    println!(
        "\n{:<14} {:>9} {:>14} {:>10}  crashes",
        "target", "seconds", "executions", "exec/s"
    );
    let mut total = 0;
    for o in outcomes {
        total += o.executions;
        println!(
            "{:<14} {:>9.1} {:>14} {:>10.0}  {}",
            o.name,
            o.seconds,
            o.executions,
            o.executions as f64 / o.seconds.max(0.001),
            o.crashed.as_deref().unwrap_or("0")
        );
    }
    println!("{:<14} {:>9} {:>14}", "total", "", total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stats_and_the_crash_input_are_read_from_the_log() {
        let log = "#1024 pulse\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec: 4115\n";
        assert_eq!(executions(log), Some(123456));
        assert_eq!(executions("nothing"), None);
        let crash = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='fuzz/artifacts/api/'; Test unit written to fuzz/artifacts/api/crash-ab12\n";
        assert_eq!(
            crash_input(crash).as_deref(),
            Some("fuzz/artifacts/api/crash-ab12")
        );
    }
}
