//! The exposition passes `promtool check metrics` (Prometheus' own linter),
//! also while the Docker engine is unreachable; `/healthz` then says 200 and
//! `/readyz` 503 with the reason. promtool comes from Debian's `prometheus`
//! package (`cargo xtask test` installs it); a missing promtool fails the test.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use mesh_chaos::wait;

mod local;

use local::{Bridge, free_port};

/// A GET to the API through the harness' one client: (status, body).
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let t = Duration::from_secs(5);
    let r = mesh_chaos::http::send_blocking(addr, Method::GET, path, &[], Bytes::new(), t)
        .map_err(|e| e.to_string())?;
    Ok((r.status, r.text()))
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

    let health = wait::until("the bridge to answer", Duration::from_secs(20), || {
        get(api, "/healthz")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.0, 200);

    let (status, body) = get(api, "/readyz").expect("readyz");
    assert_eq!(status, 503, "not ready without an engine: {body}");
    assert!(body.contains("reason"), "{body}");

    // Wait until the watcher has reported the engine as down.
    let what = "mesh_bridge_docker_connected 0";
    let metrics = wait::until(what, Duration::from_secs(20), || {
        let (status, body) = get(api, "/metrics")?;
        if status == 200 && body.contains(what) {
            Ok(body)
        } else {
            Err(format!("HTTP {status}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));

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
