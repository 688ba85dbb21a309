//! stdio MCP servers through the bridge, end to end: the stub in `--stdio`
//! mode in real containers (`docker run -d -i`), attached by the bridge
//! through the Engine API (via the test's relay, which passes the attach's
//! protocol switch on), and the official MCP Python SDK as the client on the
//! mesh port. Sessions stay on their replica and go on through a bridge
//! kill -9 (no second `initialize`: the stub would refuse it) and through a
//! container restart (a new process, initialised again by the bridge).

use super::*;
use mesh_bridge::contract::mcp::SESSION_HEADER;

fn mcp_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/mcp")
}

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// `n` stub replicas of `service` serving MCP on stdio.
fn stdio_replicas(ctx: &TestCtx, service: &str, n: usize) -> Vec<TestContainer> {
    let labels = [
        ("mesh-bridge.service", service),
        ("mesh-bridge.transport", "stdio"),
    ];
    let env = format!("MCP_STUB_NAME={service}");
    (0..n)
        .map(|_| {
            ctx.run_image(
                STUB_IMAGE,
                &labels,
                &["-i", "--no-healthcheck", "-e", &env],
                &["--stdio"],
            )
        })
        .collect()
}

/// The report's sessions went through untouched: none failed, moved or
/// had to initialise again, and every call was answered.
fn assert_clean(report: &Value, sessions: u64, calls: u64) {
    assert_eq!(report["sessions"], sessions, "{report}");
    for key in ["failed", "moved", "reinitialized"] {
        assert!(list(report, key).is_empty(), "{key}: {report}");
    }
    assert_eq!(report["calls"], sessions * calls, "{report}");
}

#[test]
fn sdk_stdio_sessions_stay_on_their_process_through_a_bridge_kill9() {
    sdk_dir();
    let ctx = TestCtx::new("stdio-kill9");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let _replicas = stdio_replicas(&ctx, "stdiosvc", 2);
    let port = bridge.wait_port("stdiosvc", 2, REGISTER);
    wait_mcp(port, 2, SERVE * 3);

    let mut client = SdkClient::spawn(
        &mcp_url(port),
        &["--sessions", "20", "--calls", "10", "--pause"],
    );
    client.wait_line("PAUSED");
    let view = bridge.service("stdiosvc").unwrap().expect("listed");
    let live: u64 = view["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["sessions"].as_u64())
        .sum();
    assert_eq!(live, 20, "{view}");
    bridge.kill9();
    bridge.restart();
    bridge.wait_ready(READY);
    assert_eq!(bridge.wait_port("stdiosvc", 2, REGISTER), port);
    client.resume();
    let report = client.report(Duration::from_secs(180));
    assert_clean(&report, 20, 10);
    let by = report["by_replica"].as_object().expect("by_replica");
    assert_eq!(by.len(), 2, "sessions over both processes: {report}");
    let attaches = bridge.metric(metric::STDIO_ATTACHES.name, &[("service", "stdiosvc")]);
    assert_eq!(attaches, 2.0, "one attach per process since the restart");
    let text = bridge.metrics();
    for d in metric::STDIO {
        assert!(text.contains(d.name), "{} missing:\n{text}", d.name);
    }
    assert!(
        !bridge.log().contains("restarted: a new process"),
        "no process was taken for a new one:\n{}",
        bridge.log()
    );
}

#[test]
fn sdk_stdio_sessions_go_on_through_a_container_restart() {
    sdk_dir();
    let ctx = TestCtx::new("stdio-restart");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let replicas = stdio_replicas(&ctx, "stdiorst", 1);
    let port = bridge.wait_port("stdiorst", 1, REGISTER);
    wait_mcp(port, 1, SERVE * 3);

    let mut client = SdkClient::spawn(
        &mcp_url(port),
        &["--sessions", "10", "--calls", "10", "--pause"],
    );
    client.wait_line("PAUSED");
    docker_ok(&["restart", "-t", "1", &replicas[0].id]);
    // Requests wait (up to --hold) for the new process to be attached and
    // initialised again; the sessions need not start anew.
    client.resume();
    let report = client.report(Duration::from_secs(180));
    assert_clean(&report, 10, 10);
    wait_for("the restart counted", SERVE, || {
        let n = bridge.metric(metric::STDIO_RESTARTS.name, &[("service", "stdiorst")]);
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
}

/// The reference stdio server `mcp-server-time` (PyPI, in the mcp-python
/// image), two replicas, driven by the SDK client: every session's calls
/// are answered, through a bridge kill -9 in the middle (the server, which
/// refuses a second `initialize` as the SDK's servers do, is not
/// initialised again).
#[test]
fn sdk_sessions_on_mcp_server_time_go_on_through_a_bridge_kill9() {
    sdk_dir();
    require_mcp_python_image();
    let ctx = TestCtx::new("stdio-time");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let labels = [
        ("mesh-bridge.service", "time"),
        ("mesh-bridge.transport", "stdio"),
    ];
    let _servers: Vec<TestContainer> = (0..2)
        .map(|_| {
            ctx.run_image(
                MCP_PYTHON_IMAGE,
                &labels,
                &["-i", "--network", "none", "--entrypoint", "python3"],
                &["-m", "mcp_server_time", "--local-timezone", "UTC"],
            )
        })
        .collect();
    let port = bridge.wait_port("time", 2, REGISTER);
    wait_mcp(port, 2, SERVE * 3);
    let flags = [
        "--sessions",
        "20",
        "--calls",
        "6",
        "--pause",
        "--tool",
        "get_current_time",
        "--arguments",
        r#"{"timezone": "Europe/Paris"}"#,
    ];
    let mut client = SdkClient::spawn(&mcp_url(port), &flags);
    client.wait_line("PAUSED");
    bridge.kill9();
    bridge.restart();
    bridge.wait_ready(READY);
    client.resume();
    let report = client.report(Duration::from_secs(180));
    assert_clean(&report, 20, 6);
    let sessions: u64 = bridge.service("time").unwrap().expect("listed")["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["sessions"].as_u64())
        .sum();
    // The SDK ends each session with a DELETE when it closes: the
    // restarted bridge took every one up and ended every one.
    assert_eq!(sessions, 0, "sessions left open");
}

/// `initialize` on the mesh port: the session it opened and the answer.
fn open_session(port: u16) -> (String, Value) {
    let r = http(
        local(port),
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        mesh_chaos::stub::initialize_request()
            .to_string()
            .as_bytes(),
        SERVE,
    )
    .expect("initialize answered");
    assert_eq!(r.status, 200, "initialize: {}", r.text());
    let session = r.header(SESSION_HEADER).expect("a session").to_string();
    (session, r.json().expect("initialize answered with JSON"))
}

/// One JSON-RPC message POSTed to the mesh port in session `session`.
fn rpc(port: u16, session: Option<&str>, msg: &Value, limit: Duration) -> Result<Value, String> {
    rpc_with(port, session, &[], msg, limit)
}

/// [`rpc`] with more request headers.
fn rpc_with(
    port: u16,
    session: Option<&str>,
    more: &[(&str, &str)],
    msg: &Value,
    limit: Duration,
) -> Result<Value, String> {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push((SESSION_HEADER, s));
    }
    headers.extend_from_slice(more);
    let r = http(
        local(port),
        "POST",
        "/mcp",
        &headers,
        msg.to_string().as_bytes(),
        limit,
    )?;
    if r.status != 200 {
        return Err(format!("HTTP {}: {}", r.status, r.text()));
    }
    serde_json::from_str(&r.text()).map_err(|e| format!("{e}: {}", r.text()))
}

/// A stdio server killed in the middle of a call: that call is answered
/// with a JSON-RPC error at once; once the container runs again (a new
/// process, initialised again by the bridge), the same session's next call
/// succeeds.
#[test]
fn a_call_in_flight_when_the_container_dies_errors_and_the_session_goes_on() {
    let ctx = TestCtx::new("stdio-kill");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let replicas = stdio_replicas(&ctx, "stdiokill", 1);
    let port = bridge.wait_port("stdiokill", 1, REGISTER);
    wait_mcp(port, 1, SERVE * 3);
    let (session, _) = open_session(port);
    let sleep = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "sleep", "arguments": {"ms": 10_000}}});
    let s2 = session.clone();
    let call = std::thread::spawn(move || rpc(port, Some(&s2), &sleep, Duration::from_secs(30)));
    let in_flight = [("service", "stdiokill")];
    wait_for("the call in flight", SERVE, || {
        let n = bridge.metric(metric::STDIO_IN_FLIGHT.name, &in_flight);
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    let t = Instant::now();
    docker_ok(&["kill", &replicas[0].id]);
    let answer = call.join().unwrap().expect("an answer, not a failed POST");
    assert!(
        answer["error"]["message"].is_string() && answer["id"] == 7,
        "{answer}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "answered when the process died, not when the sleep would have ended"
    );
    docker_ok(&["start", &replicas[0].id]);
    let echo = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "again"}}});
    let next = wait_for("the next call answered", SERVE * 2, || {
        let v = rpc(port, Some(&session), &echo, SERVE)?;
        if v["result"].is_object() {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(next["result"]["content"][0]["text"], "again", "{next}");
    assert_eq!(bridge.metric(metric::STDIO_IN_FLIGHT.name, &in_flight), 0.0);
}

/// The reference stdio server `mcp-server-time` killed in the middle of a
/// call: that call is answered with a JSON-RPC error, and once the
/// container runs again the same session's next call succeeds. The server
/// answers at once, so the call is held in flight by stopping the process
/// first (SIGSTOP): the bridge writes the call to its stdin, where it stays
/// unread until the process is killed.
#[test]
fn mcp_server_time_killed_in_the_middle_of_a_call_errors_it_and_the_session_goes_on() {
    require_mcp_python_image();
    let ctx = TestCtx::new("stdio-time-kill");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let labels = [
        ("mesh-bridge.service", "timekill"),
        ("mesh-bridge.transport", "stdio"),
    ];
    let server = ctx.run_image(
        MCP_PYTHON_IMAGE,
        &labels,
        &["-i", "--network", "none", "--entrypoint", "python3"],
        &["-m", "mcp_server_time", "--local-timezone", "UTC"],
    );
    let port = bridge.wait_port("timekill", 1, REGISTER);
    wait_mcp(port, 1, SERVE * 3);

    // A well-behaved client: initialize, take the protocol version the
    // server negotiated, then notifications/initialized.
    let (session, init) = open_session(port);
    let version = init["result"]["protocolVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no protocol version: {init}"))
        .to_string();
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-time", "{init}");
    let negotiated = [("mcp-protocol-version", version.as_str())];
    let r = http(
        local(port),
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            (SESSION_HEADER, &session),
            negotiated[0],
        ],
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
            .to_string()
            .as_bytes(),
        SERVE,
    )
    .unwrap();
    assert_eq!(r.status, 202, "notifications/initialized: {}", r.text());

    let call = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "get_current_time", "arguments": {"timezone": "UTC"}}})
    };
    // The time in UTC, from a tools/call answer.
    let utc = |v: &Value| -> Result<(), String> {
        let text = v["result"]["content"][0]["text"].as_str();
        let time: Value = text
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| format!("no time: {v}"))?;
        if v["result"]["isError"] != true && time["timezone"] == "UTC" {
            Ok(())
        } else {
            Err(format!("not the time in UTC: {v}"))
        }
    };
    let first = rpc_with(port, Some(&session), &negotiated, &call(2), SERVE).unwrap();
    assert_eq!(first["id"], 2, "{first}");
    utc(&first).unwrap();

    // Stopped, the process cannot read its stdin: the call stays in flight.
    // Not `docker pause`: the bridge takes a paused container for a stopped
    // one (its `pause` event), so the mesh port holds a new connection for
    // a running replica and closes it after --hold; the call would never
    // reach the process. SIGSTOP, sent by the engine (from outside the
    // container's PID namespace, so it reaches python3 as PID 1), is only a
    // `kill` event, and the container runs as far as the bridge knows.
    docker_ok(&["kill", "--signal", "STOP", &server.id]);
    let (s2, v2, msg) = (session.clone(), version.clone(), call(3));
    let in_flight = std::thread::spawn(move || {
        let negotiated = [("mcp-protocol-version", v2.as_str())];
        rpc_with(port, Some(&s2), &negotiated, &msg, Duration::from_secs(30))
    });
    let gauge = [("service", "timekill")];
    wait_for("the call in flight", SERVE, || {
        let n = bridge.metric(metric::STDIO_IN_FLIGHT.name, &gauge);
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    assert!(!in_flight.is_finished(), "the stopped server answered");
    // SIGKILL ends a stopped process without letting it run again: the
    // server never reads the call.
    docker_ok(&["kill", &server.id]);
    let answer = in_flight
        .join()
        .unwrap()
        .expect("an answer, not a failed POST");
    assert!(
        answer["error"]["message"].is_string() && answer["id"] == 3,
        "{answer}"
    );

    docker_ok(&["start", &server.id]);
    let mut id = 3;
    let next = wait_for("the next call answered", SERVE * 3, || {
        id += 1;
        let v = rpc_with(port, Some(&session), &negotiated, &call(id), SERVE)?;
        utc(&v).map(|()| v)
    });
    assert_eq!(next["id"], id, "{next}");
    wait_for("nothing in flight", SERVE, || {
        let n = bridge.metric(metric::STDIO_IN_FLIGHT.name, &gauge);
        if n == 0.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
}
