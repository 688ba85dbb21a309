//! The process: a damaged store kept aside, SIGTERM with an open connection, and the measured figures.

use super::*;

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
