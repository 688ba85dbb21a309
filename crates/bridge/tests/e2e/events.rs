//! Docker events and the engine: resync races, restarts and replayed events are no duplicates, an engine cut is survived.

use super::*;

/// A resync that lists a container before its `start` event has been read
/// registers it; the start event that follows is not a duplicate.
#[test]
fn resync_racing_start_events_counts_no_duplicate() {
    let ctx = TestCtx::new("race");
    let proxy = DockerProxy::start(&ctx);
    let mut opts = BridgeOpts::new(8).via(&proxy);
    opts.resync = "20ms".into();
    let bridge = Bridge::start(opts);
    let specs: Vec<(String, String)> = (0..8)
        .map(|i| (format!("race-{i}"), format!("race-{i}")))
        .collect();
    let _cs = ctx.stubs(&specs);
    for (n, _) in &specs {
        let p = bridge.wait_port(n, 1, REGISTER);
        wait_serving(p, n, SERVE);
    }
    wait_for("8 start events", REGISTER, || {
        match bridge.metric("mesh_bridge_docker_events_total", &[("action", "start")]) {
            8.0 => Ok(()),
            v => Err(format!("{v}")),
        }
    });
    bridge.wait_resyncs(3, READY);
    assert_eq!(
        bridge.metric("mesh_bridge_duplicate_registration_attempts_total", &[]),
        0.0
    );
}

/// (6b) `docker restart` (kill, die, stop, start, restart events) re-registers
/// the container; it is not a duplicate registration attempt.
#[test]
fn docker_restart_is_not_a_duplicate() {
    let ctx = TestCtx::new("restart");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let c = ctx.stub("again", "again");
    let p = bridge.wait_port("again", 1, REGISTER);
    wait_serving(p, "again", SERVE);
    docker_ok(&["restart", "-t", "1", &c.id]);
    wait_for("the restart event", REGISTER, || {
        let n = bridge.metric("mesh_bridge_docker_events_total", &[("action", "restart")]);
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    wait_serving(p, "again", SERVE);
    bridge.wait_resyncs(1, READY);
    assert_eq!(
        bridge.metric("mesh_bridge_duplicate_registration_attempts_total", &[]),
        0.0,
        "a restart is not a duplicate registration"
    );
    assert_eq!(bridge.ports_by_service().get("again"), Some(&p));
}

/// (6c) A replayed Docker `start` event (the relay delivers each `start`
/// twice, as an engine replaying its stream would) counts one duplicate
/// registration attempt and changes nothing.
#[test]
fn replayed_start_event_counts_a_duplicate_and_changes_nothing() {
    let ctx = TestCtx::new("replay");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let dup = "mesh_bridge_duplicate_registration_attempts_total";
    proxy.replay_start_events(true);
    let _c = ctx.stub("twice", "twice");
    let p = bridge.wait_port("twice", 1, REGISTER);
    wait_serving(p, "twice", SERVE);
    wait_for(
        "the replayed start to be counted",
        REGISTER,
        || match bridge.metric(dup, &[]) {
            1.0 => Ok(()),
            v => Err(format!("{v}")),
        },
    );
    assert_eq!(
        bridge.metric("mesh_bridge_docker_events_total", &[("action", "start")]),
        2.0
    );
    bridge.wait_resyncs(2, READY);
    assert_eq!(bridge.metric(dup, &[]), 1.0, "resyncs count nothing");
    let s = state_of(&bridge, "twice").unwrap();
    assert_eq!(s["port"], p, "{s}");
    assert_eq!(s["replicas"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(
        bridge.metric("mesh_bridge_port_allocations_total", &[("outcome", "new")]),
        1.0
    );
    assert_eq!(
        bridge.metric("mesh_bridge_registration_latency_seconds_count", &[]),
        1.0,
        "one registration measured"
    );
}

/// (8) The engine connection cut and restored: ports keep serving while it is
/// cut; after restore the bridge reconnects and picks up a container started
/// during the cut.
#[test]
fn engine_cut_and_restored_keeps_serving_and_resyncs() {
    let ctx = TestCtx::new("cut");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let _a = ctx.stub("before", "before");
    let pa = bridge.wait_port("before", 1, REGISTER);
    wait_serving(pa, "before", SERVE);
    assert_eq!(bridge.metric("mesh_bridge_docker_connected", &[]), 1.0);

    proxy.cut();
    wait_for("docker_connected 0", SERVE, || {
        match bridge.metric("mesh_bridge_docker_connected", &[]) {
            0.0 => Ok(()),
            v => Err(format!("{v}")),
        }
    });
    assert_eq!(
        initialize(local(pa), SERVE).unwrap(),
        "before",
        "serves while cut"
    );
    assert_eq!(bridge.get("/healthz").unwrap().status, 200);
    let _b = ctx.stub("during", "during");
    assert_eq!(initialize(local(pa), SERVE).unwrap(), "before");
    assert!(
        bridge.service("during").unwrap().is_none(),
        "the bridge cannot see the engine while cut"
    );
    assert_eq!(bridge.metric("mesh_bridge_docker_connected", &[]), 0.0);

    proxy.restore();
    wait_for("docker_connected 1", REGISTER, || {
        match bridge.metric("mesh_bridge_docker_connected", &[]) {
            1.0 => Ok(()),
            v => Err(format!("{v}")),
        }
    });
    assert!(bridge.metric("mesh_bridge_docker_reconnects_total", &[]) >= 1.0);
    let pb = bridge.wait_port("during", 1, REGISTER);
    wait_serving(pb, "during", SERVE);
    assert_eq!(bridge.ports_by_service().get("before"), Some(&pa));
    wait_serving(pa, "before", SERVE);
}
