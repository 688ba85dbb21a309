//! [`Bridge`]: the built binary with its own state dir, API port and port
//! range; readiness, `kill -9`, SIGTERM, SIGHUP and restart on the same state.
#![allow(dead_code)]

use super::*;

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
    /// Give `--api-token-file` ([`TOKEN`]); without it mutations are disabled.
    pub token: bool,
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
            token: true,
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
        mesh_bridge::token::write(&dir.path().join("token"), TOKEN).unwrap();
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
        if o.token {
            cmd.arg("--api-token-file")
                .arg(self.dir.path().join("token"));
        }
        if let Some(h) = &o.docker_host {
            cmd.arg("--docker-host").arg(h);
        }
        self.spawned_at = Instant::now();
        self.child = Some(cmd.spawn().expect("spawn mesh-bridge"));
    }

    /// The bridge's own temporary directory (state, token, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
