//! `cargo xtask provision`: everything the tests and the reliability run
//! need on this machine, set up before either starts. `test` and
//! `reliability` run it first, so a fresh clone on a fresh machine needs no
//! other step (and CI installs nothing a newcomer would not get).
//!
//! 1. The Docker engine: waited for (bounded); when no `dockerd` runs but one
//!    is installed and we are root, it is started. No engine is an error,
//!    never a skip.
//! 2. Debian packages ([`TOOLS`]): each missing one is installed with
//!    `apt-get` when running as root with apt-get on the machine, printing the
//!    package and why it is needed; otherwise provisioning stops at once with
//!    the exact command to run.
//! 3. The local images, built when missing or stale (content hash; see
//!    `images`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::interrupt;

/// How long the engine may take to answer (it can lag the machine's start).
const ENGINE_WAIT: Duration = Duration::from_secs(90);
/// Where a `dockerd` started by provisioning logs.
const DOCKERD_LOG: &str = "/var/log/mesh-bridge-dockerd.log";

/// A tool a Debian package brings, and why the project needs it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// A command on `PATH`, or an absolute file path.
    pub needs: &'static str,
    /// The Debian package that brings it.
    pub package: &'static str,
    /// Why, in one line (printed when it is installed).
    pub why: &'static str,
}

/// `promtool`, for the rules, rule tests and the metrics lint.
pub const PROMTOOL: Tool = Tool {
    needs: "promtool",
    package: "prometheus",
    why: "promtool checks the alert rules, runs their tests and lints /metrics",
};
/// The Prometheus server the scenarios start.
pub const PROMETHEUS: Tool = Tool {
    needs: "prometheus",
    package: "prometheus",
    why: "each scenario run starts a Prometheus with the alert rules, scraping the bridge",
};
/// debootstrap, for the DinD image's root filesystem.
pub const DEBOOTSTRAP: Tool = Tool {
    needs: "debootstrap",
    package: "debootstrap",
    why: "the DinD image is a Debian rootfs made with debootstrap (no registry to pull from)",
};
/// HAProxy, the baseline of the MCP session-routing benchmark (P7).
pub const HAPROXY: Tool = Tool {
    needs: "haproxy",
    package: "haproxy",
    why: "P7 compares MCP session routing with HAProxy's stick table on the same replicas",
};
/// valgrind, whose callgrind counts the instructions per request in P7.
pub const VALGRIND: Tool = Tool {
    needs: "callgrind_control",
    package: "valgrind",
    why: "P7 counts the bridge's and HAProxy's instructions per request with callgrind",
};
/// The font timeline.png is drawn with.
pub const FONT: Tool = Tool {
    needs: "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    package: "fonts-dejavu-core",
    why: "the reliability report's timeline.png draws its text in DejaVu Sans",
};

/// Everything `provision` installs.
pub const TOOLS: [Tool; 6] = [PROMTOOL, PROMETHEUS, DEBOOTSTRAP, FONT, HAPROXY, VALGRIND];

/// Flags of `cargo xtask provision`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Check and install tools only; do not build the images.
    #[arg(long)]
    pub no_images: bool,
}

/// Runs the whole step.
pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    engine(t0)?;
    install(t0, &TOOLS)?;
    interrupt::check()?;
    let sdk = crate::mcp_python::ensure_sdk(t0)?;
    say(t0, &format!("MCP Python SDK in {}", sdk.display()));
    let st = crate::pip_target::ensure_schemathesis(t0)?;
    say(t0, &format!("schemathesis in {}", st.display()));
    if !args.no_images {
        interrupt::check()?;
        crate::images::run(&crate::images::Args::default())?;
    }
    say(t0, "done");
    Ok(())
}

fn say(t0: Instant, msg: &str) {
    println!("[provision {:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

fn have(tool: &Tool) -> bool {
    if tool.needs.starts_with('/') {
        return Path::new(tool.needs).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool.needs).is_file()))
}

fn is_root() -> bool {
    // The effective uid, from the kernel's own view of this process.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Installs the packages of the missing `tools` (deduplicated), or fails with
/// the command that would.
pub fn install(t0: Instant, tools: &[Tool]) -> Result<()> {
    let missing: Vec<&Tool> = tools.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    packages.sort_unstable();
    packages.dedup();
    let command = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    let apt = have(&Tool {
        needs: "apt-get",
        package: "apt",
        why: "",
    });
    if !is_root() || !apt {
        let why: Vec<String> = missing
            .iter()
            .map(|t| format!("  {} ({}): {}", t.needs, t.package, t.why))
            .collect();
        bail!(
            "missing tools:\n{}\n{}; install them with:\n  sudo sh -c '{command}'",
            why.join("\n"),
            if apt {
                "not running as root"
            } else {
                "apt-get is not on this machine"
            }
        );
    }
    for t in &missing {
        say(
            t0,
            &format!("installing {} for {}: {}", t.package, t.needs, t.why),
        );
    }
    say(t0, &format!("running: {command}"));
    for args in [
        &["-q", "-o", "DPkg::Lock::Timeout=600", "update"][..],
        &[
            "-q",
            "-y",
            "-o",
            "DPkg::Lock::Timeout=600",
            "install",
            "--no-install-recommends",
        ][..],
    ] {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if args.contains(&"install") {
            cmd.args(&packages);
        }
        let st = interrupt::status(&mut cmd)?;
        if !st.success() {
            bail!(
                "`apt-get {}` failed ({st}); run it by hand: {command}",
                args.join(" ")
            );
        }
    }
    if packages.contains(&PROMETHEUS.package) {
        stop_packaged_prometheus();
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|t| !have(t))
        .map(|t| t.needs)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed {} but still missing: {}",
            packages.join(" "),
            still.join(", ")
        );
    }
    say(t0, &format!("installed {}", packages.join(" ")));
    Ok(())
}

/// Debian's package may start a Prometheus on :9090; the scenarios start
/// their own, so a packaged one only takes memory and the port.
fn stop_packaged_prometheus() {
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", "prometheus"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if active {
        let _ = Command::new("systemctl")
            .args(["stop", "prometheus"])
            .stdin(Stdio::null())
            .status();
    }
}

fn engine_answers() -> bool {
    crate::docker::docker(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_engine(limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if engine_answers() {
            return Ok(true);
        }
        interrupt::check()?;
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the engine; starts an installed `dockerd` when none runs.
pub fn engine(t0: Instant) -> Result<()> {
    if !have(&Tool {
        needs: "docker",
        package: "docker.io",
        why: "",
    }) {
        bail!(
            "the docker CLI is not on PATH: the tests and the reliability run need a Docker \
             engine and its CLI (Debian: apt-get install docker.io)"
        );
    }
    if engine_answers() {
        return Ok(());
    }
    say(
        t0,
        &format!(
            "waiting up to {}s for the Docker engine (DOCKER_HOST={})",
            ENGINE_WAIT.as_secs(),
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unset".into())
        ),
    );
    if wait_engine(ENGINE_WAIT)? {
        return Ok(());
    }
    let dockerd_runs = Command::new("pgrep")
        .args(["-x", "dockerd"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let dockerd = have(&Tool {
        needs: "dockerd",
        package: "docker.io",
        why: "",
    });
    if !dockerd_runs && dockerd && is_root() && std::env::var_os("DOCKER_HOST").is_none() {
        say(
            t0,
            &format!("no dockerd runs: starting one (log: {DOCKERD_LOG})"),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(DOCKERD_LOG)
            .with_context(|| format!("cannot open {DOCKERD_LOG}"))?;
        Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start dockerd")?;
        if wait_engine(ENGINE_WAIT)? {
            say(t0, "dockerd started");
            return Ok(());
        }
    }
    let info = crate::docker::docker(["info"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    bail!(
        "no Docker engine answers after {}s (DOCKER_HOST={}, dockerd {}): {info}\n\
         the tests and the reliability run need one; they fail rather than skip without it",
        ENGINE_WAIT.as_secs(),
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unset".into()),
        if dockerd_runs {
            "running"
        } else {
            "not running"
        }
    )
}
