//! A Prometheus to ask: its HTTP API, and one launched over a run's data
//! directory (bounded start, stopped on drop).

use super::*;

// ------------------------------------------------------------------ Prometheus HTTP

/// A Prometheus reachable over plain HTTP (loopback in practice).
#[derive(Debug, Clone)]
pub(super) struct Prom {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) prefix: String,
}

impl Prom {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--prometheus {url:?}: only http:// URLs are supported"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().with_context(|| format!("port of {url:?}"))?,
            ),
            None => (authority.to_string(), 80),
        };
        ensure!(!host.is_empty(), "--prometheus {url:?} has no host");
        let prefix = path.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        Ok(Prom { host, port, prefix })
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.prefix)
    }

    /// A GET through the harness' one HTTP client.
    pub(super) fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String)> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("resolving {}", self.host))?;
        let path = format!("{}{path}", self.prefix);
        let accept = [("Accept", "application/json")];
        let reply = mesh_chaos::http::send_blocking(
            addr,
            hyper::Method::GET,
            &path,
            &accept,
            bytes::Bytes::new(),
            timeout,
        )?;
        Ok((reply.status, reply.text()))
    }

    /// A Prometheus API call: the `data` of a `"status":"success"` answer.
    pub(super) fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path, Duration::from_secs(30))?;
        let json: Value = serde_json::from_str(&body).with_context(|| {
            format!(
                "HTTP {status} from {path}: {}",
                body.chars().take(200).collect::<String>()
            )
        })?;
        if json["status"] != "success" {
            bail!(
                "{}: {}",
                json["errorType"].as_str().unwrap_or("error"),
                json["error"].as_str().unwrap_or(&body)
            );
        }
        Ok(json["data"].clone())
    }
}

pub(super) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ a Prometheus over a run's data

pub(super) fn find_data_dir(run_dir: &Path) -> Result<PathBuf> {
    let nested = run_dir.join("prometheus");
    for dir in [&nested, &run_dir.to_path_buf()] {
        if dir.join("wal").is_dir() || dir.join("chunks_head").is_dir() || has_blocks(dir) {
            return Ok(dir.clone());
        }
    }
    bail!(
        "{} holds no Prometheus data directory (expected {}/wal or blocks)",
        run_dir.display(),
        nested.display()
    )
}

pub(super) fn has_blocks(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.path().join("meta.json").is_file()))
        .unwrap_or(false)
}

/// (minTime, maxTime) in ms of the persisted blocks of a data directory.
pub(super) fn block_ranges(dir: &Path) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let meta = entry.path().join("meta.json");
        if let Ok(text) = fs::read_to_string(&meta) {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", meta.display()))?;
            if let (Some(a), Some(b)) = (v["minTime"].as_i64(), v["maxTime"].as_i64()) {
                out.push((a, b));
            }
        }
    }
    Ok(out)
}

pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "lock" {
            continue;
        }
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else if ty.is_file() {
            fs::copy(entry.path(), to.join(&name))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A Prometheus this check started on a copy of a run's data directory
/// (the run's own files are never written). Dropping it kills the process and
/// removes the copy, also when the check fails half way.
#[derive(Debug)]
pub(super) struct Launched {
    pub(super) child: Child,
    pub(super) dir: PathBuf,
    pub(super) prom: Prom,
}

impl Launched {
    pub(super) fn start(data: &Path, args: &CheckArgs) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "mesh-bridge-dashboards-{}-{nanos}",
            std::process::id()
        ));
        let tsdb = dir.join("data");
        copy_dir(data, &tsdb).with_context(|| format!("copying {}", data.display()))?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = dir.join("prometheus.log");
        let log = fs::File::create(&log_path)?;
        let child = Process::new(&args.prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=100y")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(anyhow::Error::new(e).context(format!(
                    "starting {} (install it: apt-get install prometheus)",
                    args.prometheus_bin
                )));
            }
        };
        let mut me = Launched {
            child,
            dir,
            prom: Prom {
                host: "127.0.0.1".into(),
                port,
                prefix: String::new(),
            },
        };
        println!(
            "prometheus: started pid {} on {} over a copy of {}",
            me.child.id(),
            me.prom.url(),
            data.display()
        );
        let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "prometheus exited before it was ready ({status}):\n{}",
                    tail(&log_path)
                );
            }
            if let Ok((200, _)) = me.prom.get("/-/ready", Duration::from_secs(2)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready within {}s:\n{}",
                    args.ready_timeout,
                    tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        println!("prometheus: ready");
        // On the error paths above, dropping `me` stops the process.
        Ok(me)
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
        println!("prometheus: stopped pid {}", self.child.id());
    }
}

pub(super) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
