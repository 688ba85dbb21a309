//! Hostile clients of the API: a slowloris (connections that never finish
//! their headers) and a flood of idle connections. The API's bounds hold
//! (at most `MAX_CONNECTIONS` accepted, each closed by the header timeout),
//! the mesh ports serve throughout, and the API answers again once the
//! attack's connections are gone.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mesh_bridge::api::{HEADER_TIMEOUT, MAX_CONNECTIONS};

use super::*;

/// Open file descriptors of `pid` (sockets among them).
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Probes `port` with `initialize` until `stop`; returns (probes, failures,
/// slowest answer).
fn probe_mesh(port: u16, name: String, stop: Arc<AtomicBool>) -> (u32, Vec<String>, Duration) {
    let mut probes = 0;
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    // Bounded: the attack lasts well under this many probes.
    for _ in 0..2000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t = Instant::now();
        match initialize(local(port), Duration::from_secs(3)) {
            Ok(got) if got == name => {}
            Ok(got) => failures.push(format!("answered as {got}")),
            Err(e) => failures.push(e),
        }
        probes += 1;
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    (probes, failures, slowest)
}

/// A connection the bridge has closed: a read sees EOF or a reset (or the
/// 408 hyper may send first).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => closed(s),
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Runs `attack` with `n` connections to the API while the mesh port is
/// probed; the connections are then watched until the bridge closes them.
fn under_attack(name: &str, n: usize, slowloris: bool) {
    let ctx = TestCtx::new(name);
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(2).via(&proxy));
    let svc = format!("{name}-svc");
    let _c = ctx.stub(&svc, &svc);
    let port = bridge.wait_port(&svc, 1, REGISTER);
    wait_serving(port, &svc, SERVE);
    let pid = bridge.pid();
    let before = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (svc, stop) = (svc.clone(), Arc::clone(&stop));
        std::thread::spawn(move || probe_mesh(port, svc, stop))
    };

    let started = Instant::now();
    let mut conns: Vec<TcpStream> = (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&bridge.api, Duration::from_millis(500)).ok())
        .collect();
    assert!(
        conns.len() > MAX_CONNECTIONS,
        "only {} connected",
        conns.len()
    );
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("a read timeout");
        if slowloris {
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        }
    }
    // Until every connection is closed by the bridge (or the limit passes):
    // the slowloris trickles a header line per second meanwhile.
    let rounds = n.div_ceil(MAX_CONNECTIONS) as u32;
    let limit = HEADER_TIMEOUT * rounds + Duration::from_secs(8);
    let mut most_fds = 0;
    let mut open: Vec<TcpStream> = conns;
    let mut tick = 0u64;
    while !open.is_empty() && started.elapsed() < limit + SERVE {
        most_fds = most_fds.max(open_fds(pid));
        if slowloris {
            for c in &mut open {
                let _ = c.write_all(format!("X-Slow-{tick}: a\r\n").as_bytes());
            }
        }
        open.retain_mut(|c| !closed(c));
        tick += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = started.elapsed();
    let left = open.len();
    drop(open);
    // The API answers again.
    wait_for("the API to answer after the attack", SERVE, || {
        bridge.get("/healthz").map(|r| r.status)
    });
    stop.store(true, Ordering::Relaxed);
    let (probes, failures, slowest) = prober.join().expect("the prober ends");
    println!(
        "{name}: {n} connections, all closed by the bridge after {took:?}; fds {before} -> at most {most_fds}; mesh probes {probes}, slowest {slowest:?}"
    );
    assert_eq!(left, 0, "{left} connections still open after {took:?}");
    // Connections past the limit wait in the kernel's queue, unaccepted,
    // and each accepted one is closed by the header timeout: the attack is
    // worked off in rounds of the limit, a header timeout each.
    assert!(took <= limit, "{took:?} for {rounds} rounds");
    assert!(
        most_fds <= before + MAX_CONNECTIONS + 8,
        "the bridge held {most_fds} fds (from {before}): more connections than its limit"
    );
    assert!(probes >= 10, "the mesh port was probed {probes} times");
    assert!(
        failures.is_empty(),
        "the mesh port failed under the attack: {failures:?}"
    );
}

#[test]
fn a_slowloris_on_the_api_is_cut_off_and_the_mesh_ports_keep_serving() {
    under_attack("slowloris", MAX_CONNECTIONS + 100, true);
}

#[test]
fn a_flood_of_idle_connections_is_bounded_and_the_mesh_ports_keep_serving() {
    under_attack("flood", MAX_CONNECTIONS * 2, false);
}
