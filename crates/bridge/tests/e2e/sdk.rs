//! The official MCP Python SDK through the bridge to three FastMCP replicas
//! (stateful streamable HTTP, the SDK's default): every session stays on the
//! replica that created it, across fresh connections, a bridge kill -9 and
//! restart, and the loss of a replica (only its sessions end, with 404, and
//! they work again after initializing anew).

use super::*;
use mesh_bridge::contract::api::REPLICA_PAUSED;

/// The FastMCP servers' port inside their containers.
const FASTMCP_PORT: &str = "8080";

/// `n` FastMCP replicas of `service` speaking `transport`.
fn fastmcp_replicas(ctx: &TestCtx, service: &str, n: usize, transport: &str) -> Vec<TestContainer> {
    require_mcp_python_image();
    let labels = [
        ("mesh-bridge.service", service),
        ("mesh-bridge.port", FASTMCP_PORT),
        ("mesh-bridge.transport", transport),
    ];
    (0..n)
        .map(|_| ctx.run_image(MCP_PYTHON_IMAGE, &labels, &[], &[transport]))
        .collect()
}

fn mcp_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/mcp")
}

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// 50 concurrent SDK sessions over three replicas, each doing initialize,
/// tools/list and 20 tools/call on fresh connections with its GET stream
/// open; the bridge is killed -9 and started again halfway through.
#[test]
fn sdk_sessions_stay_on_their_replica_through_a_bridge_kill9() {
    sdk_dir();
    let ctx = TestCtx::new("sdk-kill9");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let _replicas = fastmcp_replicas(&ctx, "fastmcp", 3, "streamable-http");
    let port = bridge.wait_port("fastmcp", 3, REGISTER);
    wait_mcp(port, 3, SERVE * 3);

    let mut client = SdkClient::spawn(
        &mcp_url(port),
        &["--sessions", "50", "--calls", "20", "--pause"],
    );
    client.wait_line("PAUSED");
    // Every session is live now: the API counts them per replica.
    let view = bridge.service("fastmcp").unwrap().expect("listed");
    let live: Vec<u64> = view["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["sessions"].as_u64())
        .collect();
    assert_eq!(live.len(), 3, "{view}");
    assert_eq!(live.iter().sum::<u64>(), 50, "{view}");
    bridge.kill9();
    bridge.restart();
    bridge.wait_ready(READY);
    assert_eq!(
        bridge.wait_port("fastmcp", 3, REGISTER),
        port,
        "the port is kept"
    );
    client.resume();
    let report = client.report(Duration::from_secs(180));

    assert_eq!(report["sessions"], 50);
    assert!(
        list(&report, "failed").is_empty(),
        "failed sessions: {report}"
    );
    assert!(
        list(&report, "moved").is_empty(),
        "sessions that changed replica: {report}"
    );
    assert!(
        list(&report, "reinitialized").is_empty(),
        "sessions that had to start again: {report}"
    );
    assert_eq!(report["calls"], 50 * 20);
    let by = report["by_replica"].as_object().expect("by_replica");
    let ejections: Vec<String> = bridge
        .log()
        .lines()
        .filter(|l| l.contains("eject") || l.contains("answers again"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        by.len(),
        3,
        "sessions spread over the three replicas: {report}\n{ejections:#?}"
    );
    for (replica, n) in by {
        let n = n.as_u64().unwrap_or(0);
        assert!(
            (10..=24).contains(&n),
            "{replica} has {n} of 50 sessions: {report}"
        );
    }
}

/// A replica killed mid-run: only the sessions it created end (404, so the
/// SDK reports the session terminated); they succeed again after a new
/// initialize, on a live replica; every other session goes on untouched.
#[test]
fn sdk_a_killed_replica_ends_only_its_own_sessions() {
    sdk_dir();
    let ctx = TestCtx::new("sdk-replica");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let replicas = fastmcp_replicas(&ctx, "fastmcp", 3, "streamable-http");
    let port = bridge.wait_port("fastmcp", 3, REGISTER);
    wait_mcp(port, 3, SERVE * 3);

    let flags = ["--sessions", "30", "--calls", "10", "--pause", "--reinit"];
    let mut client = SdkClient::spawn(&mcp_url(port), &flags);
    client.wait_line("PAUSED");
    let victim = &replicas[0];
    let victim_host = &victim.id[..12];
    docker_ok(&["kill", &victim.id]);
    bridge.wait_port("fastmcp", 2, REGISTER);
    client.resume();
    let report = client.report(Duration::from_secs(180));

    assert!(
        list(&report, "failed").is_empty(),
        "failed sessions: {report}"
    );
    assert!(
        list(&report, "moved").is_empty(),
        "sessions that changed replica: {report}"
    );
    let on_victim = report["by_replica"][victim_host].as_u64().unwrap_or(0);
    assert!(on_victim > 0, "the victim held no session: {report}");
    let again = list(&report, "reinitialized");
    assert_eq!(
        again.len() as u64,
        on_victim,
        "exactly the victim's sessions started again: {report}"
    );
    for r in &again {
        assert_eq!(
            r["first"], victim_host,
            "a live replica's session ended: {r}"
        );
        let after: Vec<&str> = r["after"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(after.len(), 5, "{r}");
        assert!(after.iter().all(|h| *h != victim_host), "{r}");
    }
    // The API counts each live replica's sessions (the victim is gone).
    let view = bridge.service("fastmcp").unwrap().expect("listed");
    let counted: Vec<u64> = view["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["sessions"].as_u64())
        .collect();
    assert_eq!(counted.len(), 2, "{view}");
    let misses = bridge.metric(
        "mesh_bridge_mcp_session_misses_total",
        &[("service", "fastmcp"), ("reason", "replica-gone")],
    );
    assert!(
        misses >= on_victim as f64,
        "misses {misses} for {on_victim} sessions"
    );
}

/// A replica paused (`docker pause`) is frozen, not gone: the API shows it
/// `paused` with its sessions still counted, a new session goes elsewhere,
/// and a request of one of its sessions waits (up to `--hold`) for the
/// unpause and is answered by it: no session ends, moves or starts again.
#[test]
fn sdk_a_paused_replica_keeps_its_sessions_and_takes_no_new_ones() {
    sdk_dir();
    let ctx = TestCtx::new("sdk-pause");
    let proxy = DockerProxy::start(&ctx);
    let mut opts = BridgeOpts::new(4).via(&proxy);
    opts.hold = "60s".into();
    let bridge = Bridge::start(opts);
    let replicas = fastmcp_replicas(&ctx, "fastmcp", 3, "streamable-http");
    let port = bridge.wait_port("fastmcp", 3, REGISTER);
    wait_mcp(port, 3, SERVE * 3);

    let flags = ["--sessions", "30", "--calls", "10", "--pause"];
    let mut client = SdkClient::spawn(&mcp_url(port), &flags);
    client.wait_line("PAUSED");
    let victim = &replicas[0];
    docker_ok(&["pause", &victim.id]);
    let on_victim = wait_for("the paused replica to show as paused", REGISTER, || {
        let view = bridge.service("fastmcp")?.ok_or("not listed")?;
        let rs = view["replicas"].as_array().cloned().unwrap_or_default();
        let total: u64 = rs.iter().filter_map(|r| r["sessions"].as_u64()).sum();
        match rs.iter().find(|r| r["container_id"] == victim.id.as_str()) {
            Some(r) if r["state"] == REPLICA_PAUSED && total == 30 => {
                r["sessions"].as_u64().ok_or(format!("{view}"))
            }
            _ => Err(format!("{view}")),
        }
    });
    assert!(on_victim > 0, "the victim held no session");

    // New sessions go to the running replicas only.
    let fresh = SdkClient::spawn(&mcp_url(port), &["--sessions", "6", "--calls", "2"])
        .report(Duration::from_secs(120));
    assert!(list(&fresh, "failed").is_empty(), "{fresh}");
    let victim_host = &victim.id[..12];
    assert!(
        fresh["by_replica"].get(victim_host).is_none(),
        "a new session went to the paused replica: {fresh}"
    );

    // Every session's next call reaches the bridge; the victim's wait.
    let calls = || {
        bridge.metric(
            "mesh_bridge_mcp_requests_total",
            &[("service", "fastmcp"), ("method", "tools/call")],
        )
    };
    let before = calls();
    client.resume();
    wait_for("every session to send its next call", REGISTER, || {
        let n = calls();
        (n >= before + 30.0)
            .then_some(())
            .ok_or(format!("{n} of {before} + 30"))
    });
    docker_ok(&["unpause", &victim.id]);
    let report = client.report(Duration::from_secs(180));
    for key in ["failed", "moved", "reinitialized"] {
        assert!(list(&report, key).is_empty(), "{key}: {report}");
    }
    assert_eq!(report["calls"], 30 * 10, "{report}");
    assert_eq!(report["by_replica"][victim_host], on_victim, "{report}");
    let gone = bridge.metric(
        "mesh_bridge_mcp_session_misses_total",
        &[("service", "fastmcp"), ("reason", "replica-gone")],
    );
    assert_eq!(gone, 0.0, "a paused replica's session was told it is gone");
}

/// The 2024-11-05 HTTP+SSE transport: the SDK's `sse_client` opens the GET
/// stream through the bridge and posts to the URL its `endpoint` event
/// names; each session's stream and posts stay on one replica, and new
/// sessions spread over the three.
#[test]
fn sdk_sse_sessions_keep_stream_and_posts_on_one_replica() {
    sdk_dir();
    let ctx = TestCtx::new("sdk-sse");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let _replicas = fastmcp_replicas(&ctx, "fastsse", 3, "sse");
    let port = bridge.wait_port("fastsse", 3, REGISTER);
    // Each replica must be up before the sessions start (a stream's first
    // event says so).
    wait_sse(port, 3, SERVE * 3);
    let url = format!("http://127.0.0.1:{port}/sse");
    let client = SdkClient::spawn(
        &url,
        &["--transport", "sse", "--sessions", "30", "--calls", "10"],
    );
    let report = client.report(Duration::from_secs(180));
    assert!(
        list(&report, "failed").is_empty(),
        "failed sessions: {report}"
    );
    assert!(
        list(&report, "moved").is_empty(),
        "sessions that changed replica: {report}"
    );
    assert_eq!(report["calls"], 30 * 10);
    let by = report["by_replica"].as_object().expect("by_replica");
    assert_eq!(
        by.len(),
        3,
        "sessions spread over the three replicas: {report}"
    );
}
