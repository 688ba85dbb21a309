//! End to end: the built `mesh-bridge` binary against the real Docker Engine
//! and real containers of `mesh-bridge/mcp-stub:dev` (built on demand).
//!
//! Every test has its own state dir, API port, port range and test label; all
//! but one reach the engine through a [`DockerProxy`] that shows the bridge
//! only its own test's containers, so tests run in parallel with each other
//! and with anything else on the engine. A missing engine fails the tests.
//!
//! The measured figures (registration latency, recovery after kill -9 with 50
//! services) are in the ignored test `figures_registration_and_recovery`:
//! `cargo test -p mesh-bridge --release --test e2e -- --ignored --nocapture figures`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use mesh_bridge::contract::metric;
use serde_json::{Value, json};
use support::*;

const READY: Duration = Duration::from_secs(20);
const REGISTER: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(10);

fn state_of(bridge: &Bridge, name: &str) -> Result<Value, String> {
    bridge
        .service(name)?
        .ok_or_else(|| format!("service {name} not listed"))
}

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

/// (6) A repeated reservation and a no-op start count as duplicate attempts
/// (the reservation) or nothing (the no-op start, resyncs), and change
/// nothing; mutations need the bearer token.
#[test]
fn duplicates_are_counted_and_change_nothing() {
    let ctx = TestCtx::new("dups");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(4).via(&proxy));
    let dup = "mesh_bridge_duplicate_registration_attempts_total";
    let body = json!({"service": "ext"});

    let r = bridge
        .request("POST", "/v1/reservations", None, &body)
        .unwrap();
    assert_eq!(r.status, 401, "no token: {}", r.text());
    let r = bridge
        .request(
            "POST",
            "/v1/reservations",
            Some("wrong-token-0123456789"),
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 401, "wrong token: {}", r.text());

    let r1 = bridge
        .request("POST", "/v1/reservations", Some(TOKEN), &body)
        .unwrap();
    assert_eq!(r1.status, 201, "{}", r1.text());
    let port = r1.json().unwrap()["port"].as_u64().unwrap();
    let pool_before = bridge.get("/v1/pool").unwrap().json().unwrap();
    let r2 = bridge
        .request("POST", "/v1/reservations", Some(TOKEN), &body)
        .unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.json().unwrap(), json!({"service": "ext", "port": port}));
    assert_eq!(bridge.metric(dup, &[]), 1.0);
    assert_eq!(
        bridge.get("/v1/pool").unwrap().json().unwrap(),
        pool_before,
        "a repeated reservation changes nothing"
    );

    let c = ctx.stub("dup", "dup");
    let p = bridge.wait_port("dup", 1, REGISTER);
    wait_serving(p, "dup", SERVE);
    assert_eq!(bridge.metric(dup, &[]), 1.0, "a first start counts nothing");
    // `docker start` of a running container is a no-op (no event).
    docker_ok(&["start", &c.id]);
    bridge.wait_resyncs(3, READY);
    assert_eq!(
        bridge.metric(dup, &[]),
        1.0,
        "resyncs and a no-op start count nothing"
    );
    assert_eq!(bridge.ports_by_service().get("dup"), Some(&p));
    assert_eq!(bridge.ports_by_service().get("ext"), Some(&(port as u16)));

    let r = bridge
        .request("DELETE", "/v1/reservations/ext", None, &Value::Null)
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = bridge
        .request("DELETE", "/v1/reservations/ext", Some(TOKEN), &Value::Null)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Refused mutations answer with the status of their cause (DESIGN 3.3):
/// 400 a bad body, 409 an exhausted pool or a service Docker owns, 422 a
/// port outside the ranges, 404 a release of nothing held; each with an
/// `error` that says what to do, and none changes the pool.
#[test]
fn refused_mutations_answer_with_the_status_of_their_cause() {
    let ctx = TestCtx::new("refuse");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let post = |body: Value| {
        bridge
            .request("POST", "/v1/reservations", Some(TOKEN), &body)
            .unwrap()
    };
    let error_of = |r: &HttpResponse| -> String {
        r.json()
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no error field: {}", r.text()))
    };
    assert_eq!(post(json!({"service": "r1"})).status, 201);
    assert_eq!(post(json!({"service": "r2"})).status, 201);
    let pool = bridge.get("/v1/pool").unwrap().json().unwrap();

    let r = post(json!({"service": "r3"}));
    assert_eq!(r.status, 409, "exhausted: {}", r.text());
    assert!(error_of(&r).contains("widen --ports"), "{}", r.text());
    let r = post(json!({"service": "r4", "port": 1}));
    assert_eq!(r.status, 422, "outside the ranges: {}", r.text());
    assert!(error_of(&r).contains("outside the configured ranges"));
    let r = post(json!({"service": "r5", "colour": "red"}));
    assert_eq!(r.status, 400, "unknown field: {}", r.text());
    let r = post(json!({"service": "Not A Name"}));
    assert_eq!(r.status, 400, "bad name: {}", r.text());

    let del = |name: &str| {
        bridge
            .request(
                "DELETE",
                &format!("/v1/reservations/{name}"),
                Some(TOKEN),
                &Value::Null,
            )
            .unwrap()
    };
    let r = del("never-held");
    assert_eq!(r.status, 404, "nothing held: {}", r.text());
    assert!(error_of(&r).contains("holds no port"));
    // A service with a container (pending here: the pool is full) follows Docker.
    let _c = ctx.stub("owned", "owned");
    wait_for("owned to be pending", REGISTER, || {
        match state_of(&bridge, "owned") {
            Ok(s) if s["state"] == "pending" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let r = del("owned");
    assert_eq!(r.status, 409, "owned by Docker: {}", r.text());
    assert!(error_of(&r).contains("remove its containers"));
    let mut after = bridge.get("/v1/pool").unwrap().json().unwrap();
    after["pending"] = pool["pending"].clone();
    assert_eq!(after, pool, "refusals change nothing");
    assert_eq!(del("r1").status, 200);
}

/// SIGHUP reloads the config file: a widened range takes effect at once
/// (the pending service gets a new port) without dropping an open
/// connection; a narrowing that would drop a held port is refused, naming
/// the service, and changes nothing; an invalid file is refused too.
#[test]
fn sighup_widens_at_once_and_refuses_a_narrowing_that_drops_a_held_port() {
    let ctx = TestCtx::new("reload");
    let proxy = DockerProxy::start(&ctx);
    let mut opts = BridgeOpts::new(4).via(&proxy);
    opts.ports_in_file = true;
    let (lo, hi) = opts.ports;
    opts.ports = (lo, lo + 1);
    let bridge = Bridge::start(opts);
    let reloads =
        |result: &str| bridge.metric("mesh_bridge_config_reloads_total", &[("result", result)]);
    let _cs = ctx.stubs(&[
        ("rl-a".into(), "rl-a".into()),
        ("rl-b".into(), "rl-b".into()),
    ]);
    let pa = bridge.wait_port("rl-a", 1, REGISTER);
    wait_serving(pa, "rl-a", SERVE);
    bridge.wait_port("rl-b", 1, REGISTER);
    let _c = ctx.stub("rl-c", "rl-c");
    wait_for("rl-c to be pending", REGISTER, || {
        match state_of(&bridge, "rl-c") {
            Ok(s) if s["state"] == "pending" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // A request under way through rl-a: its head now, its body after the reload.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "reload", "version": "0"}}})
    .to_string();
    let mut open = std::net::TcpStream::connect(local(pa)).unwrap();
    open.set_read_timeout(Some(SERVE)).unwrap();
    write!(
        open,
        "POST /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();

    bridge.set_file_ports(&format!("{lo}-{hi}"));
    bridge.sighup();
    wait_for("the widened pool", READY, || {
        match bridge.get("/v1/pool").and_then(|r| r.json()) {
            Ok(p) if p["capacity"] == 4 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let pc = bridge.wait_port("rl-c", 1, REGISTER);
    assert!((lo + 2..=hi).contains(&pc), "rl-c got a new port: {pc}");
    wait_serving(pc, "rl-c", SERVE);
    assert_eq!(reloads("applied"), 1.0);
    assert_eq!(bridge.metric("mesh_bridge_ports_capacity", &[]), 4.0);
    open.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut open, &mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"rl-a\""),
        "the open connection survived the reload: {answer}"
    );

    // Narrowing to the first port would drop rl-b's and rl-c's: refused.
    let pool = bridge.get("/v1/pool").unwrap().json().unwrap();
    bridge.set_file_ports(&format!("{lo}-{lo}"));
    bridge.sighup();
    wait_for(
        "the refused narrowing to be counted",
        READY,
        || match reloads("refused") {
            1.0 => Ok(()),
            v => Err(format!("{v}")),
        },
    );
    assert_eq!(bridge.get("/v1/pool").unwrap().json().unwrap(), pool);
    let log = bridge.log();
    assert!(
        log.contains("configuration reload refused") && log.contains("rl-c holds"),
        "the refusal names what holds the dropped ports:\n{log}"
    );
    // An invalid file is refused the same way.
    bridge.set_file_ports("not-a-range");
    bridge.sighup();
    wait_for("the invalid file to be refused", READY, || {
        match reloads("refused") {
            2.0 => Ok(()),
            v => Err(format!("{v}")),
        }
    });
    wait_serving(pa, "rl-a", SERVE);
    assert_eq!(bridge.get("/v1/pool").unwrap().json().unwrap(), pool);
}

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

/// /readyz is 503 with a reason until the first resync with the engine,
/// while /healthz is 200; the bridge does not exit when the engine is away.
#[test]
fn readyz_waits_for_the_engine() {
    let ctx = TestCtx::new("readyz");
    let proxy = DockerProxy::start(&ctx);
    proxy.cut();
    let mut bridge = Bridge::spawn(BridgeOpts::new(2).via(&proxy));
    let r = wait_for("the API", READY, || bridge.get("/readyz"));
    assert_eq!(r.status, 503, "{}", r.text());
    let reason = r.json().unwrap()["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!reason.is_empty(), "{}", r.text());
    assert_eq!(bridge.get("/healthz").unwrap().status, 200);
    wait_for("docker to be reported unreachable", READY, || {
        let r = bridge.get("/readyz")?;
        let t = r.text();
        if r.status == 503 && t.contains("unreachable") {
            Ok(())
        } else {
            Err(format!("{} {t}", r.status))
        }
    });
    assert!(bridge.running());
    proxy.restore();
    bridge.wait_ready(READY);
    assert_eq!(bridge.metric("mesh_bridge_docker_connected", &[]), 1.0);
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
    let _good = ctx.stub("good", "good");
    let rejected = wait_for("two rejected containers", REGISTER, || {
        let r: Vec<Value> = bridge
            .services()
            .into_iter()
            .filter(|s| s["state"] == "rejected")
            .collect();
        if r.len() == 2 {
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
    let p = bridge.wait_port("good", 1, REGISTER);
    wait_serving(p, "good", SERVE);
    bridge.wait_resyncs(2, READY);
    assert!(bridge.running(), "the bridge keeps running");
    assert_eq!(bridge.get("/healthz").unwrap().status, 200);
    assert_eq!(
        bridge.metric("mesh_bridge_services", &[("state", "rejected")]),
        2.0
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

/// (9) A damaged store at start is kept aside, byte for byte, and the bridge
/// starts and serves.
#[test]
fn damaged_store_is_kept_aside() {
    let ctx = TestCtx::new("damaged");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::new(BridgeOpts::new(2).via(&proxy));
    let mut garbage = b"this is not a SQLite database\n".to_vec();
    garbage.extend((0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(bridge.state_dir.join("state.db"), &garbage).unwrap();
    bridge.launch();
    bridge.wait_ready(READY);
    let aside: Vec<_> = std::fs::read_dir(&bridge.state_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.db.damaged-")
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(aside.len(), 1, "one damaged file kept aside: {aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        garbage,
        "kept byte for byte"
    );
    assert!(bridge.metric("mesh_bridge_store_errors_total", &[]) >= 1.0);
    let _c = ctx.stub("fresh", "fresh");
    let p = bridge.wait_port("fresh", 1, REGISTER);
    wait_serving(p, "fresh", SERVE);
    // The fresh store works: the port survives a kill -9.
    bridge.kill9();
    bridge.restart();
    bridge.wait_ready(READY);
    assert_eq!(bridge.ports_by_service().get("fresh"), Some(&p));
    wait_serving(p, "fresh", SERVE);
}

/// (10) SIGTERM makes the bridge exit 0 within 5 s while a connection is open.
#[test]
fn sigterm_exits_zero_within_5s_with_an_open_connection() {
    let ctx = TestCtx::new("sigterm");
    let proxy = DockerProxy::start(&ctx);
    let mut bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let _c = ctx.stub("term", "term");
    let p = bridge.wait_port("term", 1, REGISTER);
    wait_serving(p, "term", SERVE);
    let mut open = std::net::TcpStream::connect(local(p)).unwrap();
    // An unfinished request: the connection stays in flight.
    open.write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    wait_for("the connection to be spliced", SERVE, || {
        let n = bridge.metric(
            "mesh_bridge_forward_active_connections",
            &[("service", "term")],
        );
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    let t0 = Instant::now();
    bridge.sigterm();
    // It stops accepting at once, while the open connection still drains.
    wait_for("the port to stop accepting", Duration::from_secs(2), || {
        match std::net::TcpStream::connect_timeout(&local(p), Duration::from_millis(200)) {
            Ok(_) => Err("still accepting".to_string()),
            Err(_) => Ok(()),
        }
    });
    assert!(
        bridge.running(),
        "still draining the open connection when the port stops accepting"
    );
    let st = bridge.wait_exit(Duration::from_secs(6));
    let took = t0.elapsed();
    eprintln!("SIGTERM to exit with a connection open: {took:?}");
    let st = st.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    assert!(st.success(), "exit status {st}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(open);
    // The port is still the service's after a restart.
    bridge.restart();
    bridge.wait_ready(READY);
    assert_eq!(bridge.ports_by_service().get("term"), Some(&p));
    wait_serving(p, "term", SERVE);
}

/// Per-service (`{service}`) and per-action families have no series until a
/// service or an event exists.
fn needs_activity(d: &metric::Def) -> bool {
    d.labels.iter().any(|l| *l == "service" || *l == "action")
}

/// (11) /metrics exposes every metric name of docs/DESIGN.md section 3.
#[test]
fn metrics_expose_every_contract_name() {
    let ctx = TestCtx::new("metrics");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let idle = family_names(&bridge.metrics());
    let missing: Vec<&str> = metric::ALL
        .iter()
        .filter(|d| !needs_activity(d) && !idle.contains(d.name))
        .map(|d| d.name)
        .collect();
    assert!(
        missing.is_empty(),
        "missing at start: {missing:?}\n{idle:?}"
    );

    let _c = ctx.stub("metered", "metered");
    let p = bridge.wait_port("metered", 1, REGISTER);
    wait_serving(p, "metered", SERVE);
    let text = bridge.metrics();
    let names = family_names(&text);
    let missing: Vec<&str> = metric::ALL
        .iter()
        .filter(|d| !names.contains(d.name))
        .map(|d| d.name)
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}\n{text}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("mesh_bridge_") || n.starts_with("process_")),
        "{names:?}"
    );
    assert!(
        names.contains("process_cpu_seconds_total"),
        "process metrics"
    );
    assert_eq!(
        metric_in(
            &text,
            "mesh_bridge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_in(&text, "mesh_bridge_ports_capacity", &[]),
        Some(2.0)
    );
    assert_eq!(metric_in(&text, "mesh_bridge_ports_in_use", &[]), Some(1.0));
    assert_eq!(
        metric_in(&text, "mesh_bridge_services", &[("state", "serving")]),
        Some(1.0)
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Two daemon figures: registration latency (container start to the
/// port serving, p50/p99 over 50 starts) and recovery after kill -9 with 50
/// services (process start to every port serving).
///
/// `cargo test -p mesh-bridge --release --test e2e -- --ignored --nocapture figures`
#[test]
#[ignore = "measurement; run explicitly"]
fn figures_registration_and_recovery() {
    const N: usize = 50;
    let ctx = TestCtx::new("figures");
    let proxy = DockerProxy::start(&ctx);
    let mut opts = BridgeOpts::new(64).via(&proxy);
    opts.resync = "5s".into();
    let mut bridge = Bridge::start(opts);

    let mut containers = Vec::new();
    let mut lat = Vec::new();
    let mut ports = BTreeMap::new();
    for i in 0..N {
        let name = format!("fig-{i:02}");
        containers.push(ctx.stub(&name, &name));
        let started = Instant::now(); // `docker run -d` has returned: the container runs
        // Tight polling (1 ms) so that the figure is not the poll interval.
        let deadline = started + REGISTER;
        loop {
            let served = state_of(&bridge, &name)
                .ok()
                .and_then(|s| s["port"].as_u64())
                .map(|p| p as u16)
                .filter(|&p| initialize(local(p), Duration::from_secs(3)).is_ok_and(|n| n == name));
            if let Some(p) = served {
                ports.insert(name.clone(), p);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not serving within {REGISTER:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        lat.push(started.elapsed());
    }
    lat.sort();
    let text = bridge.metrics();
    let h = "mesh_bridge_registration_latency_seconds";
    let count = metric_in(&text, &format!("{h}_count"), &[]).unwrap_or(0.0);
    let sum = metric_in(&text, &format!("{h}_sum"), &[]).unwrap_or(0.0);
    println!(
        "registration latency, `docker run -d` returned -> port answers initialize, {N} starts: \
         p50 {:?}, p99 {:?}, min {:?}, max {:?}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[0],
        lat[N - 1]
    );
    println!(
        "registration latency, bridge histogram (start event -> listening), {count} observations: \
         mean {:.1} ms, p50 <= {:?} s, p99 <= {:?} s (bucket upper bounds)",
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
        histogram_quantile_upper(&text, h, 0.50),
        histogram_quantile_upper(&text, h, 0.99)
    );

    println!(
        "forward upstream errors during the starts (a replica not yet listening): {}; \
         duplicate registrations counted: {}",
        metric_in(&text, "mesh_bridge_forward_upstream_errors_total", &[]).unwrap_or(0.0),
        metric_in(
            &text,
            "mesh_bridge_duplicate_registration_attempts_total",
            &[]
        )
        .unwrap_or(0.0)
    );

    bridge.kill9();
    bridge.restart();
    let t0 = bridge.spawned_at;
    bridge.wait_ready(READY);
    let ready = t0.elapsed();
    let last = std::sync::Mutex::new(Duration::ZERO);
    let list: Vec<(&String, &u16)> = ports.iter().collect();
    std::thread::scope(|s| {
        for chunk in list.chunks(10) {
            let last = &last;
            s.spawn(move || {
                for (name, port) in chunk {
                    wait_serving(**port, name, REGISTER);
                    let t = t0.elapsed();
                    let mut l = last.lock().unwrap();
                    *l = (*l).max(t);
                }
            });
        }
    });
    let all = *last.lock().unwrap();
    let after = bridge.ports_by_service();
    for (n, p) in &ports {
        assert_eq!(after.get(n), Some(p), "{n} kept its port");
    }
    println!(
        "recovery after kill -9 with {N} services: process start -> /readyz 200 {ready:?}, \
         -> every port answers initialize {all:?}"
    );
}
