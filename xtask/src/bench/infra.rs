//! What the benchmark phases stand on: the release `mesh-bridge` built aside,
//! labelled containers removed on drop, a bridge process killed on drop, a
//! Docker relay that shows a bridge only one phase's containers, free port
//! ranges and a few process statistics from /proc.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mesh_bridge::contract;

/// The stub image every service container runs.
pub const STUB_IMAGE: &str = contract::images::STUB;
/// Label on every container and network the bench starts: the pid of the
/// bench process (the harness-wide owner label, see `owner`).
pub const RUN_LABEL: &str = crate::owner::LABEL;
/// Label naming the phase a container belongs to (the relay filters on it).
pub const PHASE_LABEL: &str = "mesh-bridge.bench.phase";
/// Bearer token handed to the bridges (at least 16 characters).
pub const TOKEN: &str = "bench-token-0123456789abcdef";

/// The workspace root.
pub use crate::paths::workspace_root;

/// `target/bench` (report, logs, the bridge binary copy, state dirs).
pub fn bench_dir() -> PathBuf {
    workspace_root().join("target").join("bench")
}

/// Progress line with the time since the bench started.
pub fn progress(t0: Instant, msg: &str) {
    println!("[bench {:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

/// The release `mesh-bridge` of [`crate::release`] (the very binary the
/// bridge image holds), copied to `target/bench/bin/mesh-bridge` so a later
/// build cannot replace it mid-run.
pub fn build_bridge() -> Result<PathBuf> {
    let dir = crate::release::build(&crate::images::ALL_BINS)?;
    copy_bridge(&dir.join("mesh-bridge"))
}

/// xtask in release, from the same build configuration; returns the binary.
pub fn build_release_xtask() -> Result<PathBuf> {
    Ok(crate::release::build(&[("xtask", "xtask")])?.join("xtask"))
}

/// Copies a bridge binary to `target/bench/bin/mesh-bridge`.
pub fn copy_bridge(src: &Path) -> Result<PathBuf> {
    let bin_dir = bench_dir().join("bin");
    fs::create_dir_all(&bin_dir)?;
    let dst = bin_dir.join("mesh-bridge");
    let tmp = bin_dir.join(format!("mesh-bridge.{}", std::process::id()));
    fs::copy(src, &tmp).with_context(|| format!("cannot copy {}", src.display()))?;
    fs::rename(&tmp, &dst)?;
    Ok(dst)
}

// ------------------------------------------------------------- docker ----

/// Runs the docker CLI (`crate::docker`); stdout trimmed, or the error with stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    crate::docker::capture(&mut crate::docker::docker(args)).map(|s| s.trim().to_string())
}

/// Builds the stub image when it is missing (`cargo xtask images --only stub`).
pub fn ensure_stub_image(t0: Instant) -> Result<()> {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .context("the bench needs a running Docker Engine")?;
    if docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE]).is_ok() {
        return Ok(());
    }
    progress(t0, &format!("{STUB_IMAGE} missing: building it"));
    crate::images::run(&crate::images::Args {
        force: false,
        only: vec![crate::images::Image::Stub],
    })
}

/// Removes what an earlier bench (or scenario) process that is gone left.
pub fn remove_stale(t0: Instant) {
    crate::owner::sweep_dead(&crate::scenario::out_root(), &|m| progress(t0, m));
}

/// Every container of this run is removed when this is dropped (also on error
/// and while unwinding), whatever phase created it.
#[derive(Debug)]
pub struct RunGuard {
    /// This process's id (the run label's value).
    pub run: String,
}

impl RunGuard {
    /// A guard for this process.
    pub fn new() -> RunGuard {
        RunGuard {
            run: std::process::id().to_string(),
        }
    }

    /// Removes every container of this run and phase now.
    pub fn remove_phase(&self, phase: &str) {
        remove_matching(&[
            format!("label={RUN_LABEL}={}", self.run),
            format!("label={PHASE_LABEL}={phase}"),
        ]);
    }
}

fn remove_matching(filters: &[String]) {
    let mut args = vec!["ps".to_string(), "-aq".to_string()];
    for f in filters {
        args.push("--filter".into());
        args.push(f.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Ok(ids) = docker(&refs) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for chunk in ids.chunks(50) {
            let mut a = vec!["rm", "-f"];
            a.extend(chunk.iter().copied());
            let _ = docker(&a);
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        crate::owner::remove_owned_by(&self.run);
    }
}

/// A stub container of this run; `docker rm -f` on drop.
#[derive(Debug)]
pub struct Stub {
    /// Container id.
    pub id: String,
    /// The service label's value (also the stub's `serverInfo.name`).
    pub service: String,
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// `docker create` (or `run -d` when `start`) of one stub for `service`.
pub fn stub(run: &str, phase: &str, service: &str, extra: &[&str], start: bool) -> Result<Stub> {
    let name = format!("mb-bench-{run}-{service}");
    let labels = [
        format!("{RUN_LABEL}={run}"),
        format!("{PHASE_LABEL}={phase}"),
        format!("mesh-bridge.service={service}"),
    ];
    let env = format!("MCP_STUB_NAME={service}");
    let mut args: Vec<&str> = vec![if start { "run" } else { "create" }];
    if start {
        args.push("-d");
    }
    // No health probe: the stub image probes itself every 5 s, and with 200
    // stubs that is 40 `docker exec`s a second, which kept this 2-core machine
    // 0 % idle for over a minute and made P2/P3 measure the engine's exec
    // backlog. The bridge does not route by health, so nothing else changes.
    args.extend(["--name", &name, "-e", &env, "--no-healthcheck"]);
    for l in &labels {
        args.extend(["--label", l]);
    }
    args.extend(extra.iter().copied());
    args.push(STUB_IMAGE);
    let id = docker(&args)?;
    Ok(Stub {
        id,
        service: service.to_string(),
    })
}

/// Starts stubs for `(service, extra docker run options)`, four at a time;
/// returned in order.
pub fn stubs_parallel(
    run: &str,
    phase: &str,
    services: &[(String, Vec<String>)],
) -> Result<Vec<Stub>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<Stub>>>> = services
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((svc, extra)) = services.get(i) else {
                        break;
                    };
                    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                    let r = stub(run, phase, svc, &extra, true);
                    let failed = r.is_err();
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                    if failed {
                        break;
                    }
                }
            });
        }
    });
    let mut out = Vec::new();
    for (slot, (svc, _)) in slots.into_iter().zip(services) {
        match slot.into_inner().ok().flatten() {
            Some(r) => out.push(r?),
            None => bail!("container for {svc} was not started"),
        }
    }
    Ok(out)
}

/// The IPv4 address of a container on its first network, and its pid.
pub fn inspect_ip_pid(id: &str) -> Result<(Ipv4Addr, u32)> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}|{{.State.Pid}}",
        id,
    ])?;
    let (ips, pid) = out.split_once('|').context("unexpected inspect output")?;
    let ip = ips
        .split_whitespace()
        .next()
        .context("container has no IP")?
        .parse()?;
    Ok((ip, pid.trim().parse()?))
}

// -------------------------------------------------------------- ports ----

/// `n` consecutive ports free on 127.0.0.1 right now, in 20000-32000 (below
/// the ephemeral range), distinct within this process.
pub fn free_range(n: u16) -> Result<(u16, u16)> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = (std::process::id() as u64).wrapping_mul(2_654_435_761) % 11_000;
        NEXT.store(20_000 + seed as u16, Ordering::Relaxed);
    }
    for _ in 0..400 {
        let mut base = NEXT.fetch_add(n + 1, Ordering::Relaxed);
        if u32::from(base) + u32::from(n) > 31_990 {
            NEXT.store(20_000, Ordering::Relaxed);
            base = NEXT.fetch_add(n + 1, Ordering::Relaxed);
        }
        if (base..base + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return Ok((base, base + n - 1));
        }
    }
    bail!("no {n} free consecutive ports found in 20000-32000")
}

/// A port free right now, below the ranges handed to bridges (20000 and up)
/// and the kernel's ephemeral range: an ephemeral API port once fell inside
/// P6's 40000-59999 and the bridge refused to start.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = (std::process::id() as u64).wrapping_mul(40_503) % 4_000;
        NEXT.store(15_000 + seed as u16, Ordering::Relaxed);
    }
    for _ in 0..1000 {
        let mut p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p >= 19_990 {
            NEXT.store(15_000, Ordering::Relaxed);
            p = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port found in 15000-19990")
}

// -------------------------------------------------------------- /proc ----

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// utime + stime of a process, clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = s.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// (idle, total) jiffies of the whole machine, from the `cpu` line of /proc/stat
/// (idle counts iowait too).
fn machine_jiffies() -> Result<(u64, u64)> {
    let s = fs::read_to_string("/proc/stat")?;
    let line = s.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("bad /proc/stat cpu line")?;
    ensure!(f.len() >= 5, "short /proc/stat cpu line");
    Ok((f[3] + f[4], f.iter().sum()))
}

/// Waits, up to `max`, for the machine to be mostly idle: at least
/// `idle_share` of its CPU idle over one second. Starting 200 containers
/// leaves the engine busy for seconds after the last `docker start`; a
/// recovery measured in that wake measures the engine's backlog. Returns the
/// idle share of the last second and the time waited.
pub async fn settle(idle_share: f64, max: Duration) -> Result<(f64, Duration)> {
    let t0 = Instant::now();
    loop {
        let (i0, t0j) = machine_jiffies()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (i1, t1j) = machine_jiffies()?;
        // iowait may step backwards between reads: never underflow.
        let share = i1.saturating_sub(i0) as f64 / t1j.saturating_sub(t0j).max(1) as f64;
        if share >= idle_share || t0.elapsed() >= max {
            return Ok((share, t0.elapsed()));
        }
    }
}

/// Clock ticks per second (USER_HZ), from `getconf CLK_TCK` (100 when unknown).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

// ------------------------------------------------------------- bridge ----

/// How to run one bridge.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    /// A short name for logs and the state dir.
    pub name: String,
    /// `--ports`.
    pub ports: String,
    /// `--resync`.
    pub resync: String,
    /// `--docker-host` (the phase's relay).
    pub docker_host: String,
    /// A command that runs the binary (its path is appended), such as
    /// [`super::callgrind::launcher`]; empty runs it directly.
    pub launcher: Vec<String>,
}

/// A running `mesh-bridge run`, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Bridge {
    bin: PathBuf,
    /// The options.
    pub spec: BridgeSpec,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    token_file: PathBuf,
    /// `--listen`.
    pub api: SocketAddr,
    child: Option<Child>,
    runs: u32,
    /// When the current process was spawned.
    pub spawned_at: Instant,
}

impl Bridge {
    /// A fresh state dir and API port; starts the process.
    pub fn start(bin: &Path, spec: BridgeSpec) -> Result<Bridge> {
        let dir = bench_dir().join("runs").join(&spec.name);
        let _ = fs::remove_dir_all(&dir);
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir)?;
        let token_file = dir.join("token");
        mesh_bridge::token::write(&token_file, TOKEN)?;
        let mut b = Bridge {
            bin: bin.to_path_buf(),
            spec,
            state_dir,
            token_file,
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
            child: None,
            runs: 0,
            spawned_at: Instant::now(),
        };
        b.spawn()?;
        Ok(b)
    }

    /// Starts the process (again) on the same state dir, API and ports.
    pub fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "bridge already running");
        self.runs += 1;
        let dir = self.state_dir.parent().unwrap_or(Path::new("."));
        let log = fs::File::create(dir.join(format!("bridge-{}.log", self.runs)))?;
        let mut cmd = launched(&self.spec.launcher, &self.bin);
        cmd.arg("run")
            .args(["--ports", &self.spec.ports])
            .args(["--bind-ip", "127.0.0.1"])
            .args(["--listen", &self.api.to_string()])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--resync", &self.spec.resync])
            .args(["--hold", "2s"])
            .arg("--api-token-file")
            .arg(&self.token_file)
            .args(["--docker-host", &self.spec.docker_host])
            .env_remove("DOCKER_HOST")
            .env("MESH_BRIDGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("MESH_BRIDGE_") && k != "MESH_BRIDGE_LOG" {
                cmd.env_remove(k);
            }
        }
        self.spawned_at = Instant::now();
        self.child = Some(cmd.spawn().context("cannot spawn mesh-bridge")?);
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for `/readyz` 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                self.child = None;
                bail!("the bridge exited ({st}); see {}", self.log_hint());
            }
            if let Ok(v) =
                mesh_chaos::http::get_json::<serde_json::Value>(self.api, contract::api::READYZ)
                    .await
                && v.get("status").and_then(|s| s.as_str()) == Some("ready")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the bridge was not ready within {timeout:?}; see {}",
                    self.log_hint()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the logs are.
    pub fn log_hint(&self) -> String {
        self.state_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("bridge-*.log")
            .display()
            .to_string()
    }

    /// service -> port, from `/v1/services`.
    /// Waits (at most `limit`) until `service` holds a port; returns it.
    pub async fn wait_port(&self, service: &str, limit: Duration) -> Result<u16> {
        let what = format!("a port for `{service}`");
        let port = mesh_chaos::wait::until_async(&what, limit, || {
            let ports = self.ports();
            async move {
                let ports = ports.await.map_err(|e| e.to_string())?;
                ports
                    .get(service)
                    .copied()
                    .ok_or_else(|| "none yet".to_string())
            }
        })
        .await?;
        Ok(port)
    }

    pub async fn ports(&self) -> Result<BTreeMap<String, u16>> {
        let v: Vec<contract::api::ServiceView> =
            mesh_chaos::http::get_json(self.api, contract::api::SERVICES).await?;
        Ok(v.into_iter()
            .filter_map(|s| Some((s.name, s.port?)))
            .collect())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `program` run by `launcher` (a command its path is appended to, such as
/// valgrind), or directly when `launcher` is empty.
pub fn launched(launcher: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match launcher.split_first() {
        Some((first, args)) => {
            let mut cmd = Command::new(first);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A child process killed on drop (docker-proxy, the sink in a container).
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
