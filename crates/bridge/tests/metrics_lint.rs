//! The exposition passes `promtool check metrics` (Prometheus' own linter),
//! also while the Docker engine is unreachable; `/healthz` then says 200 and
//! `/readyz` 503 with the reason. promtool comes from Debian's `prometheus`
//! package (`cargo xtask test` installs it); a missing promtool fails the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod local;

use local::{Bridge, free_port};

/// Plain HTTP/1.0 GET; returns (status, body).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn exposition_passes_promtool_while_the_engine_is_unreachable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = free_port();
    let base = 30000 + (std::process::id() % 20000) as u16;
    // An engine address nobody listens on (a closed loopback port).
    let dead_engine = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-bridge"))
        .args(["run", "--listen", &format!("127.0.0.1:{api}")])
        .args(["--ports", &format!("{base}-{}", base + 9)])
        .args(["--docker-host", &format!("tcp://127.0.0.1:{dead_engine}")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesh-bridge");
    let _bridge = Bridge(child);

    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        match get(api, "/healthz") {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => panic!("bridge never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(health.0, 200);

    let (status, body) = get(api, "/readyz").expect("readyz");
    assert_eq!(status, 503, "not ready without an engine: {body}");
    assert!(body.contains("reason"), "{body}");

    // Wait until the watcher has reported the engine as down.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (status, body) = get(api, "/metrics").expect("metrics");
        assert_eq!(status, 200);
        if body.contains("mesh_bridge_docker_connected 0") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("mesh_bridge_docker_connected 0"));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run `cargo xtask provision` (installs Debian's `prometheus` package)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics complained:\n{said}"
    );
}
