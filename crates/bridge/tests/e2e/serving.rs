//! Serving: a service answers as itself on its port, replicas share it, labels choose the dialled address or reject the container.

use super::*;

/// (1) A service is reachable on its port and answers as itself. This one
/// talks to the local engine socket directly (no relay), so it also covers
/// the default connection; its service name is unique to the run.
#[test]
fn service_is_reachable_and_answers_as_itself() {
    let ctx = TestCtx::new("reachable");
    let bridge = Bridge::start(BridgeOpts::new(100));
    let svc = format!("reach-{}", ctx.run);
    let _c = ctx.stub(&svc, &svc);
    let port = bridge.wait_port(&svc, 1, REGISTER);
    let (lo, hi) = bridge.opts.ports;
    assert!((lo..=hi).contains(&port), "{port} outside {lo}-{hi}");
    wait_serving(port, &svc, SERVE);
    for _ in 0..3 {
        assert_eq!(initialize(local(port), SERVE).unwrap(), svc);
    }
    let out = std::process::Command::new(bridge_bin())
        .args(["status", "--api", &format!("http://{}", bridge.api)])
        .env_remove("MESH_BRIDGE_API")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status: {table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains(&svc) && l.contains(&port.to_string()) && l.contains("serving")),
        "status table lists the service:\n{table}"
    );
    let text = bridge.metrics();
    assert!(
        metric_in(&text, "mesh_bridge_registration_latency_seconds_count", &[]).unwrap_or(0.0)
            >= 1.0,
        "registration latency observed once:\n{text}"
    );
    assert!(
        metric_in(
            &text,
            "mesh_bridge_forward_connections_total",
            &[("service", &svc)]
        )
        .unwrap_or(0.0)
            >= 4.0
    );
}

/// (2) Two replicas of one service are both reached, round robin.
#[test]
fn replicas_are_balanced_round_robin() {
    let ctx = TestCtx::new("replicas");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let _cs = ctx.stubs(&[
        ("duo".into(), "duo-a".into()),
        ("duo".into(), "duo-b".into()),
    ]);
    let port = bridge.wait_port("duo", 2, REGISTER);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        let name = initialize(local(port), SERVE).unwrap();
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both replicas answer: {seen:?}");
    assert!(
        seen.values().all(|&n| n >= 4),
        "round robin spreads 10 connections evenly: {seen:?}"
    );
    assert_eq!(
        bridge.ports_by_service().len(),
        1,
        "one port for the service"
    );
}

/// `mesh-bridge.port` and `mesh-bridge.network` choose what is dialled: a
/// stub on port 9090, attached to a network of the test and to the default
/// bridge, is reached at its address on the named network.
#[test]
fn port_and_network_labels_choose_the_dialled_address() {
    let net = TestNetwork::create("labels");
    let ctx = TestCtx::new("netlabels");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let c = ctx.container_with(
        &[
            ("mesh-bridge.service", "netted"),
            ("mesh-bridge.port", "9090"),
            ("mesh-bridge.network", &net.name),
        ],
        "netted",
        &["--network", &net.name, "-e", "MCP_STUB_PORT=9090"],
    );
    // Also on the default bridge: two networks, the label picks ours.
    docker_ok(&["network", "connect", "bridge", &c.id]);
    let ip = docker_ok(&[
        "inspect",
        "--format",
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            net.name
        ),
        &c.id,
    ]);
    let want = format!("{ip}:9090");
    let p = wait_for("the replica on the named network", REGISTER, || {
        let s = state_of(&bridge, "netted")?;
        let addr = s["replicas"][0]["address"].as_str().unwrap_or("");
        match s["port"].as_u64() {
            Some(p) if addr == want && s["state"] == "serving" => Ok(p as u16),
            _ => Err(format!("want {want}: {s}")),
        }
    });
    wait_serving(p, "netted", SERVE);
}

/// (7) Invalid labels make a container `rejected` with a reason; the bridge
/// keeps running and serving the valid ones.
#[test]
fn invalid_labels_are_rejected_with_a_reason() {
    let ctx = TestCtx::new("rejected");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let bad_name = ctx.container(&[("mesh-bridge.service", "Bad_Name!")], "bad");
    let bad_port = ctx.container(
        &[
            ("mesh-bridge.service", "badport"),
            ("mesh-bridge.port", "99999"),
        ],
        "badport",
    );
    let stdio = ctx.container(
        &[
            ("mesh-bridge.service", "stdiosvc"),
            ("mesh-bridge.transport", "stdio"),
        ],
        "stdio",
    );
    let bad_transport = ctx.container(
        &[
            ("mesh-bridge.service", "weird"),
            ("mesh-bridge.transport", "grpc"),
        ],
        "weird",
    );
    let _good = ctx.stub("good", "good");
    let rejected = wait_for("four rejected containers", REGISTER, || {
        let r: Vec<Value> = bridge
            .services()
            .into_iter()
            .filter(|s| s["state"] == "rejected")
            .collect();
        if r.len() == 4 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let reason_of = |id: &str| -> String {
        let s = rejected
            .iter()
            .find(|s| s["replicas"][0]["container_id"] == id)
            .unwrap_or_else(|| panic!("{id} not rejected: {rejected:?}"));
        assert!(s["port"].is_null(), "{s}");
        s["reason"].as_str().unwrap_or_default().to_string()
    };
    let r1 = reason_of(&bad_name.id);
    assert!(r1.contains("Bad_Name!") && r1.contains("invalid"), "{r1}");
    let r2 = reason_of(&bad_port.id);
    assert!(r2.contains("99999"), "{r2}");
    let r3 = reason_of(&stdio.id);
    assert!(
        r3.contains("stdio") && r3.contains("docker run -d -i"),
        "{r3}"
    );
    let r4 = reason_of(&bad_transport.id);
    assert!(
        r4.contains("grpc") && r4.contains("streamable-http"),
        "{r4}"
    );
    let p = bridge.wait_port("good", 1, REGISTER);
    wait_serving(p, "good", SERVE);
    bridge.wait_resyncs(2, READY);
    assert!(bridge.running(), "the bridge keeps running");
    assert_eq!(bridge.get("/healthz").unwrap().status, 200);
    assert_eq!(
        bridge.metric("mesh_bridge_services", &[("state", "rejected")]),
        4.0
    );
}
