//! Shared helpers of the end-to-end tests: the real `mesh-bridge` binary
//! against the real Docker Engine and real containers of the MCP stub image.
//!
//! - [`TestCtx`]: per-test context (docker present, stub image built, stale
//!   containers of an earlier killed run of the same test removed, everything
//!   with the test's label removed on drop).
//! - [`TestContainer`]: one stub container carrying the test label; removed
//!   with `docker rm -f` on drop, also while unwinding from a panic.
//! - [`DockerProxy`]: a TCP relay in front of `/var/run/docker.sock` that
//!   (a) adds the test's label to the `filters` of container lists and event
//!   subscriptions, so a bridge only ever sees the containers of its own test
//!   even while other tests (or people) run labelled containers on the same
//!   engine, and (b) can be cut (every connection dropped, new ones closed at
//!   once) and restored.
//! - [`Bridge`]: the built binary with its own state dir, API port and port
//!   range; polls `/readyz`; `kill -9`, SIGTERM and restart on the same state.
//! - A small blocking HTTP/1.1 client, the MCP `initialize` call, Prometheus
//!   text parsing and [`wait_for`] (polling with a deadline; no sleeps as
//!   synchronisation).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mesh_chaos::docker_relay::Relay;
use serde_json::Value;

/// The stub image the tests run.
pub const STUB_IMAGE: &str = mesh_bridge::contract::images::STUB;
/// Label every test container carries: the test's name.
pub const TEST_LABEL: &str = "mesh-bridge.test";
/// Label every test container carries: the pid of the test process.
pub const RUN_LABEL: &str = "mesh-bridge.test.run";
/// The engine socket.
pub use mesh_chaos::docker_relay::DOCKER_SOCK;
/// A bearer token for the API (at least 16 characters).
pub const TOKEN: &str = "e2e-token-0123456789abcdef";

// ------------------------------------------------------------ polling ----

/// Polls `f` every 25 ms until it returns `Ok`, or panics after `timeout`
/// naming `what` and the last error.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last: {e}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ------------------------------------------------------------- docker ----

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `docker {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a docker CLI command; panics with its stderr on failure.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test (never skips) when the engine cannot be reached.
pub fn require_docker() {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        docker(&["version", "--format", "{{.Server.Version}}"]).map(drop).map_err(|e| {
            format!(
                "these end-to-end tests need a running Docker Engine reachable by the `docker` CLI \
                 (socket {DOCKER_SOCK}); they fail rather than skip when it is missing: {e}"
            )
        })
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Builds the stub image when it is missing, once per process, serialised
/// across test processes by a file lock under `target/`.
pub fn ensure_stub_image() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        if docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE]).is_ok() {
            return Ok(());
        }
        let _lock = DirLock::acquire(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("mesh-bridge-stub-image.lock"),
            Duration::from_secs(900),
        )?;
        // Another process may have built it while we waited.
        if docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE]).is_ok() {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        eprintln!("building {STUB_IMAGE}: {cargo} run -q -p xtask -- images --only stub");
        let out = Command::new(&cargo)
            .args(["run", "-q", "-p", "xtask", "--", "images", "--only", "stub"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {cargo}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo xtask images --only stub` failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE])
            .map(drop)
            .map_err(|e| format!("{STUB_IMAGE} still missing after the build: {e}"))
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A lock between processes: a directory created atomically, holding the
/// owner's pid; a lock whose owner is gone is taken over. (`File::lock` is
/// newer than the workspace's MSRV.)
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<DirLock, String> {
        let deadline = Instant::now() + timeout;
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(DirLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let age = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let stale = if owner.trim().is_empty() {
                        age > Duration::from_secs(60)
                    } else {
                        !pid_alive(owner.trim())
                    };
                    if stale {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
            if Instant::now() >= deadline {
                return Err(format!("{} still held after {timeout:?}", path.display()));
            }
            // Another test process is building the image: wait for it.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Per-test context: checks the engine and the image, removes containers a
/// killed earlier run of this test left behind, and on drop removes every
/// container carrying this test's label and run.
#[derive(Debug)]
pub struct TestCtx {
    /// The test's name (label value).
    pub name: String,
    /// This process's id (run label value).
    pub run: String,
    seq: AtomicU16,
}

impl TestCtx {
    /// Sets up the context of test `name`.
    pub fn new(name: &str) -> TestCtx {
        require_docker();
        ensure_stub_image();
        let run = std::process::id().to_string();
        // Containers of an earlier run that was killed before its guards ran.
        let stale = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={TEST_LABEL}={name}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{RUN_LABEL}\"}}}}"),
        ]);
        for line in stale.lines() {
            let mut it = line.split_whitespace();
            if let (Some(id), owner) = (it.next(), it.next().unwrap_or(""))
                && owner != run
                && !pid_alive(owner)
            {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        TestCtx {
            name: name.to_string(),
            run,
            seq: AtomicU16::new(0),
        }
    }

    /// Label filters (Docker `label=` syntax) that select this test's containers.
    pub fn label_filters(&self) -> Vec<String> {
        vec![
            format!("{TEST_LABEL}={}", self.name),
            format!("{RUN_LABEL}={}", self.run),
        ]
    }

    /// Starts one stub container for `service` answering as `stub_name`.
    #[track_caller]
    pub fn stub(&self, service: &str, stub_name: &str) -> TestContainer {
        self.container(&[("mesh-bridge.service", service)], stub_name)
    }

    /// Starts one stub container with these labels (plus the test labels).
    #[track_caller]
    pub fn container(&self, labels: &[(&str, &str)], stub_name: &str) -> TestContainer {
        self.container_with(labels, stub_name, &[])
    }

    /// Like [`TestCtx::container`], with extra `docker run` options.
    #[track_caller]
    pub fn container_with(
        &self,
        labels: &[(&str, &str)],
        stub_name: &str,
        options: &[&str],
    ) -> TestContainer {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let cname = format!("mb-e2e-{}-{}-{n}", self.name.replace('_', "-"), self.run);
        let test_label = format!("{TEST_LABEL}={}", self.name);
        let run_label = format!("{RUN_LABEL}={}", self.run);
        let env = format!("MCP_STUB_NAME={stub_name}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            cname.clone(),
            "--label".into(),
            test_label,
            "--label".into(),
            run_label,
            "-e".into(),
            env,
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(options.iter().map(|o| o.to_string()));
        args.push(STUB_IMAGE.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker_ok(&refs);
        TestContainer { id, name: cname }
    }

    /// Starts stub containers for `(service, stub name)` pairs, a few at a time
    /// in parallel; returned in the order given.
    pub fn stubs(&self, specs: &[(String, String)]) -> Vec<TestContainer> {
        let out: Vec<Mutex<Option<TestContainer>>> =
            specs.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((svc, name)) = specs.get(i) else {
                            break;
                        };
                        *out[i].lock().unwrap() = Some(self.stub(svc, name));
                    }
                });
            }
        });
        out.into_iter()
            .map(|m| m.into_inner().unwrap().expect("container started"))
            .collect()
    }
}

impl Drop for TestCtx {
    fn drop(&mut self) {
        if let Ok(ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={TEST_LABEL}={}", self.name),
            "--filter",
            &format!("label={RUN_LABEL}={}", self.run),
        ]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    }
}

/// A stub container of this test; `docker rm -f` on drop.
#[derive(Debug)]
pub struct TestContainer {
    /// Full id.
    pub id: String,
    /// Container name.
    pub name: String,
}

impl TestContainer {
    /// Removes it now (`docker rm -f`).
    pub fn remove(self) {
        docker_ok(&["rm", "-f", &self.id]);
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// A user-defined Docker network of this test; removed on drop (drop it after
/// the containers attached to it).
#[derive(Debug)]
pub struct TestNetwork {
    /// Its name.
    pub name: String,
}

impl TestNetwork {
    /// Creates `mb-e2e-<what>-<pid>` (removing a leftover of that name).
    pub fn create(what: &str) -> TestNetwork {
        require_docker();
        let name = format!("mb-e2e-{what}-{}", std::process::id());
        let _ = docker(&["network", "rm", &name]);
        docker_ok(&[
            "network",
            "create",
            "--label",
            &format!("{TEST_LABEL}={what}"),
            &name,
        ]);
        TestNetwork { name }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

// -------------------------------------------------------------- ports ----

/// Reserves `n` consecutive ports that are free on 127.0.0.1 right now,
/// below the ephemeral range, distinct within this process.
pub fn free_range(n: u16) -> (u16, u16) {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
        let r = rand::random::<u64>() ^ seed;
        AtomicU16::new(20_000 + (r % 11_000) as u16)
    });
    for _ in 0..200 {
        let mut base = next.fetch_add(n + 1, Ordering::Relaxed);
        if base > 31_900 {
            next.store(20_000, Ordering::Relaxed);
            base = next.fetch_add(n + 1, Ordering::Relaxed);
        }
        if (base..base + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return (base, base + n - 1);
        }
    }
    panic!("no {n} free consecutive ports found in 20000-32000");
}

/// One free port (API, relay).
pub fn free_port() -> u16 {
    free_range(1).0
}

// --------------------------------------------------------------- http ----

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("not JSON ({e}): {}", self.text()))
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_txt = String::from_utf8_lossy(&b[..nl]);
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_txt:?}: {e}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("short chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to
/// the end; the timeout bounds connect and every read/write.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response from {addr} ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line from {addr}: {head}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, body })
}

/// Sends MCP `initialize` to `addr` and returns `serverInfo.name`.
pub fn initialize(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "mesh-bridge-e2e", "version": "0"}}
    })
    .to_string();
    let r = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        body.as_bytes(),
        timeout,
    )?;
    if r.status != 200 {
        return Err(format!(
            "initialize on {addr}: HTTP {}: {}",
            r.status,
            r.text()
        ));
    }
    let v = r.json()?;
    v.pointer("/result/serverInfo/name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("initialize on {addr}: no serverInfo.name in {v}"))
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Waits until `port` answers `initialize` as `name`.
#[track_caller]
pub fn wait_serving(port: u16, name: &str, timeout: Duration) {
    wait_for(&format!("port {port} to answer as {name}"), timeout, || {
        let got = initialize(local(port), Duration::from_secs(3))?;
        if got == name {
            Ok(())
        } else {
            Err(format!("answered as {got}"))
        }
    });
}

// ------------------------------------------------------------ metrics ----

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`... suffixes as written).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses the sample lines of a Prometheus text exposition.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let inner = rest.trim_end_matches('}');
                let mut labels = BTreeMap::new();
                // Label values here never contain `",` (bounded, plain values).
                for pair in inner.split("\",") {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        labels.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
                    }
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Metric family names declared by `# TYPE` lines.
pub fn family_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Sum of the samples named `name` whose labels include `labels`; None when
/// there is no such sample.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_samples(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

/// Quantile `q` of a histogram from its cumulative buckets (upper bound of the
/// bucket the quantile falls in), as Prometheus' `histogram_quantile` but
/// without interpolation.
pub fn histogram_quantile_upper(text: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = parse_samples(text)
        .into_iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .filter_map(|s| {
            let le = s.labels.get("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

// ------------------------------------------------------------- bridge ----

/// How to start a bridge.
#[derive(Debug, Clone)]
pub struct BridgeOpts {
    /// Inclusive port range.
    pub ports: (u16, u16),
    /// `--grace`.
    pub grace: String,
    /// `--resync`.
    pub resync: String,
    /// `--hold`.
    pub hold: String,
    /// `--leak-cycles`.
    pub leak_cycles: u32,
    /// `--docker-host`; None: the local socket.
    pub docker_host: Option<String>,
    /// Give the ports in a `--config` file (which [`Bridge::set_file_ports`]
    /// rewrites for a reload) instead of `--ports`.
    pub ports_in_file: bool,
}

impl BridgeOpts {
    /// Defaults for tests: `n` free ports, grace 60s, resync 1s, hold 2s.
    pub fn new(n: u16) -> BridgeOpts {
        BridgeOpts {
            ports: free_range(n),
            grace: "60s".into(),
            resync: "1s".into(),
            hold: "2s".into(),
            leak_cycles: 3,
            docker_host: None,
            ports_in_file: false,
        }
    }

    /// Through this relay.
    pub fn via(mut self, proxy: &DockerProxy) -> Self {
        self.docker_host = Some(proxy.url());
        self
    }
}

/// A running `mesh-bridge run`: killed on drop; its log is printed when the
/// test is failing.
#[derive(Debug)]
pub struct Bridge {
    dir: tempfile::TempDir,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--listen`.
    pub api: SocketAddr,
    /// The options it runs with.
    pub opts: BridgeOpts,
    child: Option<Child>,
    /// When the current process was spawned.
    pub spawned_at: Instant,
    runs: u32,
}

/// The binary under test (cargo builds it for integration tests).
pub fn bridge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mesh-bridge")
}

impl Bridge {
    /// Spawns a bridge with a fresh state dir; does not wait for readiness.
    pub fn spawn(opts: BridgeOpts) -> Bridge {
        let mut b = Bridge::new(opts);
        b.launch();
        b
    }

    /// Prepares a bridge (state dir, token, API port) without starting it.
    pub fn new(opts: BridgeOpts) -> Bridge {
        let dir = tempfile::Builder::new()
            .prefix("mesh-bridge-e2e-")
            .tempdir()
            .unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir_all(&state_dir).unwrap();
        fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Bridge {
            dir,
            state_dir,
            api: local(free_port()),
            opts,
            child: None,
            spawned_at: Instant::now(),
            runs: 0,
        }
    }

    /// Starts the process (first start, or again after it stopped).
    pub fn launch(&mut self) {
        self.start_process();
    }

    /// Spawns a bridge and waits until `/readyz` is 200.
    pub fn start(opts: BridgeOpts) -> Bridge {
        let b = Bridge::spawn(opts);
        b.wait_ready(Duration::from_secs(20));
        b
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("bridge-{run}.log"))
    }

    fn start_process(&mut self) {
        assert!(self.child.is_none(), "bridge already running");
        self.runs += 1;
        let log = fs::File::create(self.log_path(self.runs)).unwrap();
        let o = &self.opts;
        let mut cmd = Command::new(bridge_bin());
        cmd.arg("run");
        let ports = format!("{}-{}", o.ports.0, o.ports.1);
        if o.ports_in_file {
            if !self.config_file().exists() {
                self.set_file_ports(&ports);
            }
            cmd.arg("--config").arg(self.config_file());
        } else {
            cmd.arg("--ports").arg(ports);
        }
        cmd.arg("--bind-ip")
            .arg("127.0.0.1")
            .arg("--listen")
            .arg(self.api.to_string())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--grace")
            .arg(&o.grace)
            .arg("--resync")
            .arg(&o.resync)
            .arg("--hold")
            .arg(&o.hold)
            .arg("--leak-cycles")
            .arg(o.leak_cycles.to_string())
            .arg("--api-token-file")
            .arg(self.dir.path().join("token"))
            .env_remove("DOCKER_HOST")
            .env("MESH_BRIDGE_LOG", "info,mesh_bridge=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("MESH_BRIDGE_") && k != "MESH_BRIDGE_LOG" {
                cmd.env_remove(k);
            }
        }
        if let Some(h) = &o.docker_host {
            cmd.arg("--docker-host").arg(h);
        }
        self.spawned_at = Instant::now();
        self.child = Some(cmd.spawn().expect("spawn mesh-bridge"));
    }

    /// The `--config` file of [`BridgeOpts::ports_in_file`].
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("bridge.toml")
    }

    /// Writes `ports = "<spec>"` as the whole config file.
    pub fn set_file_ports(&self, spec: &str) {
        fs::write(self.config_file(), format!("ports = \"{spec}\"\n")).unwrap();
    }

    /// Sends SIGHUP (via `kill -HUP`): reload the configuration.
    pub fn sighup(&self) {
        let st = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -HUP failed");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until `/readyz` answers 200 (panics with the log otherwise).
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        wait_for("the bridge to be ready (/readyz 200)", timeout, || {
            let r = self.get("/readyz")?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{}: {}", r.status, r.text()))
            }
        });
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Sends SIGTERM (via `kill -TERM`).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, up to `timeout`; None if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("running");
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the process again on the same state dir, API and ports.
    pub fn restart(&mut self) {
        self.start_process();
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// `GET path` on the API.
    pub fn get(&self, path: &str) -> Result<HttpResponse, String> {
        http(self.api, "GET", path, &[], &[], Duration::from_secs(5))
    }

    /// A request on the API with an optional bearer token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<HttpResponse, String> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        http(
            self.api,
            method,
            path,
            &headers,
            &body,
            Duration::from_secs(5),
        )
    }

    /// `/metrics` text.
    #[track_caller]
    pub fn metrics(&self) -> String {
        let r = self
            .get("/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }

    /// One metric (sum over series matching `labels`), 0 when absent.
    #[track_caller]
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// `GET /v1/services`.
    #[track_caller]
    pub fn services(&self) -> Vec<Value> {
        let r = self.get("/v1/services").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "/v1/services: {}", r.text());
        match r.json().unwrap() {
            Value::Array(a) => a,
            v => panic!("/v1/services is not an array: {v}"),
        }
    }

    /// `GET /v1/services/{name}`, None on 404.
    pub fn service(&self, name: &str) -> Result<Option<Value>, String> {
        let r = self.get(&format!("/v1/services/{name}"))?;
        match r.status {
            200 => r.json().map(Some),
            404 => Ok(None),
            s => Err(format!("/v1/services/{name}: {s} {}", r.text())),
        }
    }

    /// Waits until `name` has a port and `want_running` running replicas,
    /// then returns the port.
    #[track_caller]
    pub fn wait_port(&self, name: &str, want_running: usize, timeout: Duration) -> u16 {
        wait_for(
            &format!("service {name} to hold a port with {want_running} running replica(s)"),
            timeout,
            || {
                let s = self.service(name)?.ok_or("not listed yet")?;
                let port = s["port"].as_u64().ok_or_else(|| format!("no port: {s}"))?;
                let running = s["replicas"]
                    .as_array()
                    .map(|r| r.iter().filter(|x| x["state"] == "running").count())
                    .unwrap_or(0);
                if running == want_running && s["state"] == "serving" {
                    Ok(port as u16)
                } else {
                    Err(format!("{s}"))
                }
            },
        )
    }

    /// The ports held by services, by name.
    #[track_caller]
    pub fn ports_by_service(&self) -> BTreeMap<String, u16> {
        self.services()
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["port"].as_u64()? as u16)))
            .collect()
    }

    /// Waits until at least `n` more full resyncs were applied (counted by
    /// `reconcile_duration_seconds_count`).
    #[track_caller]
    pub fn wait_resyncs(&self, n: u32, timeout: Duration) {
        let start = self.metric("mesh_bridge_reconcile_duration_seconds_count", &[]);
        wait_for(&format!("{n} more resyncs"), timeout, || {
            let now = self.metric("mesh_bridge_reconcile_duration_seconds_count", &[]);
            if now >= start + f64::from(n) {
                Ok(())
            } else {
                Err(format!("{} resyncs so far", now - start))
            }
        });
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|r| {
                format!(
                    "----- bridge run {r} -----\n{}",
                    fs::read_to_string(self.log_path(r)).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!("===== bridge log (last {} lines) =====", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

// ------------------------------------------------------- docker relay ----

/// The shared Docker API relay (`mesh_chaos::docker_relay`) on a runtime of
/// its own, limited to one test's containers; it can be cut and restored.
#[derive(Debug)]
pub struct DockerProxy {
    /// Loopback port the relay listens on.
    pub port: u16,
    relay: Option<Relay>,
    rt: Option<tokio::runtime::Runtime>,
}

impl DockerProxy {
    /// Starts a relay that shows only the containers of `ctx`.
    pub fn start(ctx: &TestCtx) -> DockerProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let relay = rt
            .block_on(Relay::start(ctx.label_filters()))
            .expect("start the docker relay");
        DockerProxy {
            port: relay.addr.port(),
            relay: Some(relay),
            rt: Some(rt),
        }
    }

    fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("running")
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.relay().url()
    }

    /// Drops every relayed connection and closes new ones at once.
    pub fn cut(&self) {
        self.relay().cut();
    }

    /// Relays again.
    pub fn restore(&self) {
        self.relay().restore();
    }

    /// From now on, every container `start` event on the event streams is
    /// delivered twice, as an engine replaying it would.
    pub fn replay_start_events(&self, on: bool) {
        self.relay().replay_start_events(on);
    }

    /// Connections currently relayed.
    pub fn connections(&self) -> usize {
        self.relay().connections()
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        drop(self.relay.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
