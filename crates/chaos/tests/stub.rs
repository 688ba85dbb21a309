//! The MCP stub over real TCP on loopback: in process, as the built binary,
//! and as the `mesh-bridge/mcp-stub:dev` image in a container.
// Helpers outside `#[test]` functions panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use mesh_bridge::contract::mcp::SESSION_HEADER;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use mesh_chaos::http::HttpError;
use mesh_chaos::stub::{self, StubConfig, StubError, codes};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(5);

/// One raw request to the stub: its status and body.
async fn http_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let headers = [("Content-Type", "application/json")];
    let r = mesh_chaos::http::send(addr, method, path, &headers, body, timeout).await?;
    Ok((
        StatusCode::from_u16(r.status).expect("a valid status"),
        r.body,
    ))
}

/// A stub served in process on 127.0.0.1 with an ephemeral port.
struct InProcess {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    async fn start(name: &str) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stub::serve(listener, StubConfig::named(name), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn post(&self, body: impl Into<Bytes>) -> (StatusCode, Value) {
        let (status, body) = http_request(self.addr, Method::POST, "/mcp", body.into(), T)
            .await
            .unwrap();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, value)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("stub did not stop within 5 s")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn initialize_returns_the_configured_name() {
    let s = InProcess::start("docs").await;
    assert_eq!(stub::initialize(s.addr, T).await.unwrap(), "docs");

    let result = stub::rpc(s.addr, "initialize", json!({}), T).await.unwrap();
    assert_eq!(result["protocolVersion"], "2025-06-18");
    assert_eq!(result["serverInfo"]["name"], "docs");
    assert!(result["serverInfo"]["version"].is_string());
    assert_eq!(result["capabilities"], json!({"tools": {}}));
    s.shutdown().await;
}

#[tokio::test]
async fn ping_and_healthz() {
    let s = InProcess::start("p").await;
    stub::ping(s.addr, T).await.unwrap();
    assert_eq!(
        stub::rpc(s.addr, "ping", Value::Null, T).await.unwrap(),
        json!({})
    );
    stub::healthz(s.addr, T).await.unwrap();
    let (status, body) = http_request(s.addr, Method::GET, "/healthz", Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok\n");
    s.shutdown().await;
}

#[tokio::test]
async fn delay_mode_slows_mcp_answers_until_set_to_zero() {
    let s = InProcess::start("slow").await;
    let port = s.addr.port();
    assert_eq!(stub::set_delay(port, 300, T).await.unwrap(), 300);
    let t = Instant::now();
    stub::ping(s.addr, T).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "answered after {:?} with a 300 ms delay",
        t.elapsed()
    );
    // Health checks are never delayed (Docker would mark the replica unhealthy).
    let t = Instant::now();
    stub::healthz(s.addr, T).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "healthz was delayed"
    );
    // A request slower than the client's timeout is a timeout, not an answer.
    let err = stub::ping(s.addr, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StubError::Transport(HttpError::Timeout { .. })),
        "{err}"
    );

    for bad in ["", "abc", "-5", "60001"] {
        let (status, body) =
            http_request(s.addr, Method::PUT, stub::DELAY_PATH, Bytes::from(bad), T)
                .await
                .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(
            String::from_utf8_lossy(&body).contains("delay"),
            "{bad:?}: {body:?}"
        );
    }
    let (status, _) = http_request(s.addr, Method::GET, stub::DELAY_PATH, Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    assert_eq!(stub::set_delay(port, 0, T).await.unwrap(), 0);
    let t = Instant::now();
    stub::ping(s.addr, T).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "delay did not end"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn tools_list_echo_sleep_and_whoami() {
    let s = InProcess::start("t").await;
    let list = stub::rpc(s.addr, "tools/list", json!({}), T).await.unwrap();
    let tools = list["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["echo", "sleep", "whoami"]);
    // sleep answers after its wait, bounded.
    let t = Instant::now();
    let slept = stub::rpc(
        s.addr,
        "tools/call",
        json!({"name": "sleep", "arguments": {"ms": 300}}),
        T,
    )
    .await
    .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "answered early");
    assert_eq!(slept["content"][0]["text"], "slept 300 ms");
    assert_eq!(
        stub::requested_sleep(
            json!({"method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 99_999}}})
                .to_string()
                .as_bytes()
        ),
        Some(Duration::from_millis(stub::MAX_SLEEP_MS))
    );
    assert_eq!(tools[0]["inputSchema"]["type"], "object");
    assert_eq!(tools[0]["inputSchema"]["required"], json!(["text"]));

    let call = stub::rpc(
        s.addr,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "héllo wörld"}}),
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        call,
        json!({"content": [{"type": "text", "text": "héllo wörld"}], "isError": false})
    );

    let who = |v: Value| {
        v["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let me = who(
        stub::rpc(s.addr, "tools/call", json!({"name": "whoami"}), T)
            .await
            .unwrap(),
    );
    assert!(!me.is_empty());
    let again = stub::rpc(s.addr, "tools/call", json!({"name": "whoami"}), T)
        .await
        .unwrap();
    let identity = again["structuredContent"].clone();
    assert_eq!(who(again), me, "one replica, one identity");
    // The structured identity names the container and this process, so a
    // harness sees a restart as a new process of the same container.
    assert_eq!(identity["replica"], me.as_str(), "{identity}");
    let r = mesh_chaos::session::Replica::from_identity(&identity).expect("container and process");
    assert_eq!(r.container, me, "no MCP_STUB_REPLICA: the short id");
    assert_eq!(r.process.len(), 16, "{identity}");

    for params in [
        json!({"name": "rm", "arguments": {"text": "x"}}),
        json!({"name": "echo", "arguments": {}}),
        json!({"name": "echo", "arguments": {"text": 5}}),
        json!({}),
    ] {
        match stub::rpc(s.addr, "tools/call", params.clone(), T).await {
            Err(StubError::Rpc { code, .. }) => assert_eq!(code, codes::INVALID_PARAMS, "{params}"),
            other => panic!("{params}: expected invalid params, got {other:?}"),
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn json_rpc_errors() {
    let s = InProcess::start("e").await;

    match stub::rpc(s.addr, "resources/list", json!({}), T).await {
        Err(StubError::Rpc { code, message, .. }) => {
            assert_eq!(code, codes::METHOD_NOT_FOUND);
            assert!(message.contains("resources/list"), "{message}");
        }
        other => panic!("expected method not found, got {other:?}"),
    }

    // Unknown method keeps the request's id.
    let (status, v) = s
        .post(r#"{"jsonrpc":"2.0","id":"abc","method":"nope"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["id"], "abc");
    assert_eq!(v["error"]["code"], codes::METHOD_NOT_FOUND);

    // Bad JSON.
    let (status, v) = s.post(r#"{"jsonrpc":"2.0","id":1,"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["error"]["code"], codes::PARSE_ERROR);

    // Valid JSON, not a request.
    for body in [
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        "42",
    ] {
        let (status, v) = s.post(body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(v["error"]["code"], codes::INVALID_REQUEST, "{body}");
    }

    // A notification is accepted without an answer.
    let (status, v) = s
        .post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(v, Value::Null);

    // Body size limit.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(stub::MAX_BODY_BYTES)
    );
    let (status, v) = s.post(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], codes::INVALID_REQUEST);
    // Far over the limit but under the drain limit: still a clean 413, and
    // the server keeps serving.
    let (status, _) = s.post(vec![b' '; stub::DRAIN_LIMIT_BYTES - 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    stub::ping(s.addr, T).await.unwrap();
    // Just under the limit still works.
    let text = "y".repeat(stub::MAX_BODY_BYTES - 200);
    let call = stub::rpc(
        s.addr,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": text}}),
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        call["content"][0]["text"].as_str().unwrap().len(),
        text.len()
    );

    // Routing.
    for (method, path, want) in [
        (Method::GET, "/mcp", StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/", StatusCode::NOT_FOUND),
        (Method::POST, "/mcp/extra", StatusCode::NOT_FOUND),
    ] {
        let (status, _) = http_request(s.addr, method.clone(), path, Bytes::new(), T)
            .await
            .unwrap();
        assert_eq!(status, want, "{method} {path}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn client_errors_name_the_address() {
    // Nothing listens on a port we bound and released.
    let addr = free_port_addr();
    match stub::initialize(addr, T).await {
        Err(e @ StubError::Transport(HttpError::Io { .. })) => {
            assert!(e.to_string().contains(&addr.to_string()))
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    // A listener that never answers: the timeout fires.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let started = Instant::now();
    match stub::ping(silent_addr, Duration::from_millis(300)).await {
        Err(StubError::Transport(HttpError::Timeout { .. })) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    hold.abort();
}

#[tokio::test]
async fn shutdown_drains_and_returns() {
    let s = InProcess::start("d").await;
    stub::ping(s.addr, T).await.unwrap();
    let addr = s.addr;
    s.shutdown().await;
    assert!(stub::ping(addr, Duration::from_secs(1)).await.is_err());
}

// ------------------------------------------------------------ the binary ----

fn free_port_addr() -> SocketAddr {
    let l = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

/// Kills the child on drop so a failed assertion leaves no process behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_initialize(addr: SocketAddr, deadline: Duration) -> String {
    let what = format!("the stub at {addr} to answer");
    mesh_chaos::wait::until_async(&what, deadline, || async {
        stub::initialize(addr, Duration::from_secs(1))
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The child's exit status, polled until `limit` after `after` happened.
fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
    after: &str,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "mcp-stub did not exit within {limit:?} of {after}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn probe(port: u16) -> std::process::ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_mcp-stub"))
        .arg("--probe")
        .env("MCP_STUB_PORT", port.to_string())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

#[tokio::test]
async fn binary_serves_probes_and_exits_on_sigterm() {
    let addr = free_port_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-stub"))
        .env("MCP_STUB_PORT", addr.port().to_string())
        .env("MCP_STUB_NAME", "bin-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    assert_eq!(
        wait_for_initialize(addr, Duration::from_secs(10)).await,
        "bin-test"
    );
    assert!(probe(addr.port()).success(), "--probe against a live stub");

    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = exit_within(&mut child.0, Duration::from_secs(5), "SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(!probe(addr.port()).success(), "--probe against nothing");
}

#[test]
fn binary_speaks_stdio_until_stdin_ends() {
    use std::io::{BufRead, BufReader, Write};
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-stub"))
        .arg("--stdio")
        .env("MCP_STUB_NAME", "stdio-test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let mut stdin = child.0.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut ask = |msg: Value| -> Value {
        writeln!(stdin, "{msg}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let init = ask(stub::initialize_request());
    assert_eq!(init["result"]["serverInfo"]["name"], "stdio-test");
    let again = ask(stub::initialize_request());
    assert_eq!(again["error"]["message"], stub::stdio::ALREADY_INITIALIZED);
    let echo = ask(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "over stdio"}}}));
    assert_eq!(echo["result"]["content"][0]["text"], "over stdio");
    drop(stdin);
    let status = exit_within(&mut child.0, Duration::from_secs(5), "stdin's end");
    assert!(status.success(), "exit at stdin's end: {status}");
}

#[test]
fn binary_rejects_a_bad_port() {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-stub"))
        .env("MCP_STUB_PORT", "99999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MCP_STUB_PORT"));
}

// ---------------------------------------------------------------- docker ----

const IMAGE: &str = "mesh-bridge/mcp-stub:dev";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI ({e}); the Docker tests need it"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the container on drop, pass or fail.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn image_serves_the_name_and_becomes_healthy() {
    // Fails, never skips, without an engine or without the image.
    let version = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        version.status.success(),
        "the Docker engine is not reachable: {}",
        String::from_utf8_lossy(&version.stderr).trim()
    );
    let inspect = docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert!(
        inspect.status.success(),
        "image {IMAGE} is missing: run `cargo xtask images` first"
    );

    let name = format!("stub-test-{}", std::process::id());
    let id = docker_ok(&[
        "run",
        "-d",
        "--label",
        "mesh-bridge.test=1",
        "-e",
        &format!("MCP_STUB_NAME={name}"),
        "-p",
        "127.0.0.1::8080",
        // Only the schedule is sped up; the check itself is the image's.
        "--health-interval",
        "1s",
        IMAGE,
    ]);
    let guard = ContainerGuard(id);

    let port = docker_ok(&["port", &guard.0, "8080/tcp"]);
    let addr: SocketAddr = port
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected `docker port` output {port:?}"));
    assert!(addr.ip().is_loopback(), "published on {addr}");

    assert_eq!(
        wait_for_initialize(addr, Duration::from_secs(20)).await,
        name
    );
    stub::ping(addr, T).await.unwrap();

    // Delay mode: only from inside the container (`docker exec`); a client
    // from outside (the published port's proxy) is refused.
    let (status, _) = http_request(addr, Method::PUT, stub::DELAY_PATH, Bytes::from("50"), T)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        docker_ok(&["exec", &guard.0, "/mcp-stub", "--delay", "400"]),
        "400"
    );
    let t = Instant::now();
    stub::ping(addr, T).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "answered after {:?} with a 400 ms delay",
        t.elapsed()
    );
    assert_eq!(
        docker_ok(&["exec", &guard.0, "/mcp-stub", "--delay", "0"]),
        "0"
    );
    let bad = docker(&["exec", &guard.0, "/mcp-stub", "--delay", "soon"]);
    assert_eq!(bad.status.code(), Some(2), "a bad delay is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a whole number"));

    let start = Instant::now();
    loop {
        let health = docker_ok(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            &guard.0,
        ]);
        match health.as_str() {
            "healthy" => break,
            "starting" if start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => panic!(
                "health is {other:?} after {:?}; last checks: {}",
                start.elapsed(),
                docker_ok(&["inspect", "--format", "{{json .State.Health}}", &guard.0])
            ),
        }
    }

    // PID 1 must honour SIGTERM: `docker stop` returns quickly with exit 0.
    let start = Instant::now();
    docker_ok(&["stop", "--time", "10", &guard.0]);
    let took = start.elapsed();
    let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &guard.0]);
    assert_eq!(code, "0", "exit code after docker stop");
    assert!(
        took < Duration::from_secs(5),
        "docker stop took {took:?}: SIGTERM was ignored"
    );
}

/// Stateful mode: sessions from `initialize`, 400 without one, 404 for an
/// unknown or deleted one, SSE answers to `tools/call`.
#[tokio::test]
async fn stateful_mode_keeps_sessions_like_the_sdk_servers() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = StubConfig::named("s").stateful();
    config.replica = "r1".into();
    config.stream_every = Duration::from_millis(20);
    let task = tokio::spawn(stub::serve(listener, config, std::future::pending()));
    let post = |session: Option<String>, msg: Value| async move {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        let s = session.unwrap_or_default();
        if !s.is_empty() {
            h.push((SESSION_HEADER, s.as_str()));
        }
        mesh_chaos::http::send(
            addr,
            Method::POST,
            "/mcp",
            &h,
            Bytes::from(msg.to_string()),
            T,
        )
        .await
        .unwrap()
    };
    let init = stub::initialize_request();
    let r = post(None, init.clone()).await;
    assert_eq!(r.status, 200);
    let id = r.header(SESSION_HEADER).expect("a session").to_string();
    let call =
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}});
    assert_eq!(post(None, call.clone()).await.status, 400, "no session");
    assert_eq!(post(Some("nope".into()), call.clone()).await.status, 404);
    let r = post(Some(id.clone()), call.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.text().contains("\"text\":\"r1\""), "{}", r.text());
    assert_eq!(
        r.header(SESSION_HEADER),
        Some(id.as_str()),
        "the id is repeated"
    );

    // A GET stream needs a live session (the stream itself is read through
    // the bridge in the forwarder's tests).
    let r = mesh_chaos::http::send(addr, Method::GET, "/mcp", &[], Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let del = [(SESSION_HEADER, id.as_str())];
    let r = mesh_chaos::http::send(addr, Method::DELETE, "/mcp", &del, Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(post(Some(id.clone()), call).await.status, 404, "deleted");
    task.abort();
}
