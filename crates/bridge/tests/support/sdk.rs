//! The official MCP Python SDK as a test client (`tests/sdk/client.py`) and
//! FastMCP servers in `mesh-bridge/mcp-python:dev` containers; both come from
//! `cargo xtask provision` (the SDK in `target/mcp-sdk`, the image built
//! locally). A missing SDK or image fails the test with the command to run.
#![allow(dead_code)]

use super::*;
use mesh_bridge::contract::mcp::SESSION_HEADER;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::ChildStdout;

/// The FastMCP image.
pub const MCP_PYTHON_IMAGE: &str = mesh_bridge::contract::images::MCP_PYTHON;

/// Where provisioning put a Python tool: `$var`, else `target/{name}` of
/// the workspace; fails unless its package `package` is there.
fn provisioned(var: &str, name: &str, package: &str, what: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join(name));
    assert!(
        dir.join(package).is_dir(),
        "{what} is not in {}: run `cargo xtask provision`",
        dir.display()
    );
    dir
}

/// Where the SDK is (`MESH_MCP_SDK`, else `target/mcp-sdk` of the workspace).
pub fn sdk_dir() -> PathBuf {
    provisioned("MESH_MCP_SDK", "mcp-sdk", "mcp", "the MCP Python SDK")
}

/// Where schemathesis is (`MESH_SCHEMATHESIS`, else `target/schemathesis`).
pub fn schemathesis_dir() -> PathBuf {
    provisioned(
        "MESH_SCHEMATHESIS",
        "schemathesis",
        "schemathesis",
        "schemathesis",
    )
}

/// Fails unless the FastMCP image is on the engine.
pub fn require_mcp_python_image() {
    require_docker();
    assert!(
        docker(&["image", "inspect", "--format", "{{.Id}}", MCP_PYTHON_IMAGE]).is_ok(),
        "{MCP_PYTHON_IMAGE} is missing: run `cargo xtask images --only mcp-python`"
    );
}

/// A running `client.py`; killed on drop.
pub struct SdkClient {
    child: Child,
    out: Option<BufReader<ChildStdout>>,
    lines: Vec<String>,
}

impl SdkClient {
    /// Starts the client against `url` with these flags.
    pub fn spawn(url: &str, flags: &[&str]) -> SdkClient {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(url)
            .args(flags)
            .env("PYTHONPATH", sdk_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the SDK client");
        let out = Some(BufReader::new(child.stdout.take().expect("stdout")));
        SdkClient {
            child,
            out,
            lines: Vec::new(),
        }
    }

    /// Reads stdout until a line equal to `want` (panics at EOF).
    pub fn wait_line(&mut self, want: &str) {
        loop {
            let mut line = String::new();
            let out = self.out.as_mut().expect("stdout not taken");
            let n = out.read_line(&mut line).expect("read the client");
            assert!(n > 0, "the client ended before {want:?}: {:?}", self.lines);
            if line.trim() == want {
                return;
            }
            self.lines.push(line);
        }
    }

    /// Lets a paused client go on.
    pub fn resume(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("resume the client");
        stdin.flush().expect("flush");
    }

    /// Waits for the client to end (at most `limit`) and returns its report.
    pub fn report(mut self, limit: Duration) -> Value {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = self.out.take().expect("stdout not taken");
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut rest);
            let _ = tx.send(rest);
        });
        let rest = rx
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the SDK client did not finish within {limit:?}"));
        let status = self.child.wait().expect("wait for the client");
        assert!(status.success(), "the SDK client failed ({status}): {rest}");
        let last = rest.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON report ({e}): {rest}"))
    }
}

impl Drop for SdkClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until each of `replicas` replicas behind `port` has answered an
/// MCP `initialize` (FastMCP takes a moment to start, and a replica that
/// refused a dial is tried last for a while): the session ids name the
/// replica that created them.
#[track_caller]
pub fn wait_mcp(port: u16, replicas: usize, timeout: Duration) {
    let body = mesh_chaos::stub::initialize_request().to_string();
    let mut seen = BTreeSet::new();
    let what = format!("{replicas} replicas behind port {port} to answer initialize");
    wait_for(&what, timeout, || {
        let r = http(
            local(port),
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            body.as_bytes(),
            Duration::from_secs(3),
        )?;
        match (r.status, r.header(SESSION_HEADER)) {
            (200, Some(id)) if id.contains('.') => {
                seen.insert(id.split('.').next().unwrap_or_default().to_string());
                // Not a session the test uses: end it, so it weighs nothing
                // in the balance of the sessions that follow.
                let del = [(SESSION_HEADER, id)];
                let _ = http(
                    local(port),
                    "DELETE",
                    "/mcp",
                    &del,
                    b"",
                    Duration::from_secs(3),
                );
                if seen.len() >= replicas {
                    Ok(())
                } else {
                    Err(format!("answered by {seen:?} so far"))
                }
            }
            (s, id) => Err(format!("HTTP {s}, session {id:?}: {}", r.text())),
        }
    });
}

/// Waits until `replicas` replicas behind an `sse` service's `port` have
/// each opened a stream whose `endpoint` event names them.
#[track_caller]
pub fn wait_sse(port: u16, replicas: usize, timeout: Duration) {
    let mut seen = BTreeSet::new();
    let what = format!("{replicas} sse replicas behind port {port}");
    wait_for(&what, timeout, || {
        let mut s = TcpStream::connect_timeout(&local(port), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("session_id=") {
            let n = std::io::Read::read(&mut s, &mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("stream ended: {}", String::from_utf8_lossy(&got)));
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let key = text
            .split("session_id=")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .unwrap_or_default()
            .to_string();
        seen.insert(key);
        if seen.len() >= replicas {
            Ok(())
        } else {
            Err(format!("streams from {seen:?} so far"))
        }
    });
}
