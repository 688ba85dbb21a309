//! Ports: kept across kill -9 and restarts, released after leaks, never one another process holds, exhaustion and its FIFO.

use super::*;

/// (3) kill -9 of the bridge and a restart keep every port, and the ports
/// serve again afterwards.
#[test]
fn kill9_and_restart_keep_every_port() {
    let ctx = TestCtx::new("kill9");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(8).via(&proxy));
    let names: Vec<String> = (0..4).map(|i| format!("keep-{i}")).collect();
    let _cs = ctx.stubs(
        &names
            .iter()
            .map(|n| (n.clone(), n.clone()))
            .collect::<Vec<_>>(),
    );
    let mut before = BTreeMap::new();
    for n in &names {
        let p = bridge.wait_port(n, 1, REGISTER);
        wait_serving(p, n, SERVE);
        before.insert(n.clone(), p);
    }
    bridge.kill9();
    bridge.restart();
    bridge.wait_ready(READY);
    let after: BTreeMap<String, u16> = bridge
        .ports_by_service()
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .collect();
    assert_eq!(after, before, "every port kept across kill -9");
    for (n, p) in &before {
        wait_serving(*p, n, SERVE);
    }
    assert_eq!(
        bridge.metric(
            "mesh_bridge_port_allocations_total",
            &[("outcome", "restored")]
        ),
        4.0
    );
    assert_eq!(
        bridge.metric("mesh_bridge_port_allocations_total", &[("outcome", "new")]),
        0.0,
        "no service got a new port after the restart"
    );
}

/// A reservation whose service lost its container while the bridge was down
/// is restored, kept through fewer than `--leak-cycles` resyncs, then
/// released into quarantine as a leak.
#[test]
fn reservation_without_container_is_released_after_leak_cycles() {
    let ctx = TestCtx::new("leak");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let c = ctx.stub("ghost", "ghost");
    let p = bridge.wait_port("ghost", 1, REGISTER);
    bridge.kill9();
    c.remove();
    bridge.restart();
    bridge.wait_ready(READY);
    let s = state_of(&bridge, "ghost").unwrap();
    assert_eq!(s["port"], p, "restored: {s}");
    assert_eq!(s["state"], "waiting", "kept after one resync: {s}");
    assert_eq!(bridge.metric("mesh_bridge_reconcile_leaks_total", &[]), 0.0);
    wait_for("ghost released as a leak", REGISTER, || {
        let s = state_of(&bridge, "ghost")?;
        if s["state"] == "quarantined" && s["port"] == p {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let text = bridge.metrics();
    assert!(
        metric_in(&text, "mesh_bridge_reconcile_duration_seconds_count", &[]).unwrap_or(0.0) >= 3.0,
        "released only after --leak-cycles (3) resyncs"
    );
    assert_eq!(
        metric_in(&text, "mesh_bridge_reconcile_leaks_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric_in(
            &text,
            "mesh_bridge_port_releases_total",
            &[("reason", "leak")]
        ),
        Some(1.0)
    );
    // The service comes back within grace: it gets its port again (sticky).
    let _c2 = ctx.stub("ghost", "ghost");
    let p2 = bridge.wait_port("ghost", 1, REGISTER);
    assert_eq!(p2, p);
    wait_serving(p, "ghost", SERVE);
}

/// (4) A port held by another process before start is never given out, and
/// the conflict is counted.
#[test]
fn port_held_by_another_process_is_never_given_out() {
    let ctx = TestCtx::new("held");
    let proxy = DockerProxy::start(&ctx);
    let opts = BridgeOpts::new(3).via(&proxy);
    let held_port = opts.ports.0;
    let held = TcpListener::bind(("127.0.0.1", held_port)).expect("hold the first port");
    let bridge = Bridge::start(opts);
    let _cs = ctx.stubs(&[
        ("held-a".into(), "held-a".into()),
        ("held-b".into(), "held-b".into()),
    ]);
    let pa = bridge.wait_port("held-a", 1, REGISTER);
    let pb = bridge.wait_port("held-b", 1, REGISTER);
    assert_ne!(pa, held_port);
    assert_ne!(pb, held_port);
    assert_ne!(pa, pb);
    wait_serving(pa, "held-a", SERVE);
    wait_serving(pb, "held-b", SERVE);
    bridge.wait_resyncs(2, READY);
    let text = bridge.metrics();
    assert!(
        metric_in(&text, "mesh_bridge_port_conflicts_total", &[]).unwrap_or(0.0) >= 1.0,
        "conflict counted:\n{text}"
    );
    assert_eq!(
        metric_in(&text, "mesh_bridge_ports_conflicted", &[]),
        Some(1.0)
    );
    let pool = bridge.get("/v1/pool").unwrap().json().unwrap();
    assert_eq!(pool["conflicted"], 1, "{pool}");
    assert!(
        bridge.ports_by_service().values().all(|&p| p != held_port),
        "{:?}",
        bridge.ports_by_service()
    );
    // Our listener still owns the port.
    assert_eq!(held.local_addr().unwrap().port(), held_port);
}

/// (5) Demand above capacity leaves services pending, counted once each (not
/// once per resync); a freed port goes to the oldest pending service after
/// grace.
#[test]
fn exhaustion_pends_counts_once_and_frees_fifo_after_grace() {
    let ctx = TestCtx::new("exhaust");
    let proxy = DockerProxy::start(&ctx);
    let mut opts = BridgeOpts::new(2).via(&proxy);
    opts.grace = "2s".into();
    let bridge = Bridge::start(opts);
    let mut first = ctx.stubs(&[
        ("ex-1".into(), "ex-1".into()),
        ("ex-2".into(), "ex-2".into()),
    ]);
    let p1 = bridge.wait_port("ex-1", 1, REGISTER);
    let _p2 = bridge.wait_port("ex-2", 1, REGISTER);

    let pending = |name: &str| {
        wait_for(&format!("{name} pending"), REGISTER, || {
            let s = state_of(&bridge, name)?;
            if s["state"] == "pending" && s["port"].is_null() && s["reason"].is_string() {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
    };
    // Arrival order: ex-3 strictly before ex-4.
    let _c3 = ctx.stub("ex-3", "ex-3");
    pending("ex-3");
    let _c4 = ctx.stub("ex-4", "ex-4");
    pending("ex-4");
    assert_eq!(
        bridge.metric("mesh_bridge_port_exhaustion_events_total", &[]),
        2.0
    );
    bridge.wait_resyncs(3, READY);
    assert_eq!(
        bridge.metric("mesh_bridge_port_exhaustion_events_total", &[]),
        2.0,
        "counted once per pending service, not once per resync"
    );
    let pool = bridge.get("/v1/pool").unwrap().json().unwrap();
    assert_eq!(pool["pending"], 2, "{pool}");
    assert_eq!(pool["in_use"], 2, "{pool}");

    let removed_at = Instant::now();
    first.remove(0).remove();
    // During grace the port stays with ex-1 (quarantined).
    wait_for("ex-1 quarantined", SERVE, || {
        let s = state_of(&bridge, "ex-1")?;
        if s["state"] == "quarantined" && s["port"] == p1 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let p3 = wait_for("ex-3 to get the freed port", REGISTER, || {
        let s = state_of(&bridge, "ex-3")?;
        s["port"].as_u64().ok_or_else(|| s.to_string())
    });
    let waited = removed_at.elapsed();
    assert_eq!(
        p3,
        u64::from(p1),
        "the oldest pending service gets the freed port"
    );
    assert!(
        waited >= Duration::from_millis(1900),
        "port reused after {waited:?}, before grace (2s)"
    );
    wait_serving(p1, "ex-3", SERVE);
    let s4 = state_of(&bridge, "ex-4").unwrap();
    assert_eq!(s4["state"], "pending", "{s4}");
    bridge.wait_resyncs(2, READY);
    assert_eq!(
        bridge.metric("mesh_bridge_port_exhaustion_events_total", &[]),
        2.0,
        "no new exhaustion event for a service already pending"
    );
}

/// A reservation made through the API (an orchestrator publishes the port
/// itself; no container carries the service) survives kill -9 and is not
/// taken for a leak afterwards.
#[test]
fn api_reservation_survives_restart() {
    let ctx = TestCtx::new("apikeep");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let r = bridge
        .request(
            "POST",
            "/v1/reservations",
            Some(TOKEN),
            &json!({"service": "orch"}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let port = r.json().unwrap()["port"].clone();
    bridge.wait_resyncs(4, READY);
    assert_eq!(state_of(&bridge, "orch").unwrap()["port"], port);
    bridge.kill9();
    bridge.restart();
    bridge.wait_ready(READY);
    bridge.wait_resyncs(4, READY);
    let s = state_of(&bridge, "orch").unwrap();
    assert_eq!(s["port"], port, "{s}");
    assert_ne!(s["state"], "quarantined", "released as a leak: {s}");
    assert_eq!(bridge.metric("mesh_bridge_reconcile_leaks_total", &[]), 0.0);
}
