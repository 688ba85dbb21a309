//! The HTTP API and operations: duplicates, refusal statuses, SIGHUP reload, readiness, the metric names.

use super::*;

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
    let body = mesh_chaos::stub::initialize_request().to_string();
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
    // The stdio families have series once a stdio service runs (the
    // stdio tests check them).
    let missing: Vec<&str> = metric::ALL
        .iter()
        .filter(|d| !names.contains(d.name) && !metric::STDIO.contains(d))
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
