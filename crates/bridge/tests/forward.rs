//! The forwarder against real TCP on 127.0.0.1: splicing (bulk both ways, half-close,
//! resets), round robin, dead replicas,
//! hold, address-in-use detection, close, shutdown and the metrics it reports.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns are test code too

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_bridge::forward::{ForwardError, ForwardMetrics, Forwarder};
use mesh_chaos::wait;
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Upper bound for anything that should happen "promptly".
const PROMPT: Duration = Duration::from_secs(5);

struct Harness {
    fwd: Forwarder,
    registry: Registry,
    _token: CancellationToken,
}

fn harness(hold: Duration) -> Harness {
    let registry = Registry::new();
    let metrics = ForwardMetrics::register(&registry).unwrap();
    let token = CancellationToken::new();
    let fwd = Forwarder::new(LOCALHOST, hold, metrics, token.clone());
    Harness {
        fwd,
        registry,
        _token: token,
    }
}

impl Harness {
    /// The value of `name{service=...}` in the registry, None when the series is absent.
    fn metric(&self, name: &str, service: &str) -> Option<i64> {
        let families = self.registry.gather();
        let family = families.iter().find(|f| f.name() == name)?;
        let m = family.get_metric().iter().find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "service" && l.value() == service)
        })?;
        let v = if m.get_counter().has_value() {
            m.get_counter().value()
        } else {
            m.get_gauge().value()
        };
        Some(v as i64)
    }

    fn connections(&self, service: &str) -> i64 {
        self.metric("mesh_bridge_forward_connections_total", service)
            .unwrap_or(0)
    }
    fn active(&self, service: &str) -> i64 {
        self.metric("mesh_bridge_forward_active_connections", service)
            .unwrap_or(0)
    }
    fn upstream_errors(&self, service: &str) -> i64 {
        self.metric("mesh_bridge_forward_upstream_errors_total", service)
            .unwrap_or(0)
    }
}

/// A port that was free a moment ago (bind :0, read the port, release it).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// An echo server; returns its address and how many connections it accepted.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Polls `cond` every few milliseconds until it holds; panics after `PROMPT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let check = || {
        let held = cond();
        async move {
            if held {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    };
    if let Err(e) = wait::until_every_async(what, PROMPT, Duration::from_millis(5), check).await {
        panic!("{e}");
    }
}

async fn connect(port: u16) -> TcpStream {
    timeout(PROMPT, TcpStream::connect((LOCALHOST, port)))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Writes `msg` and expects it echoed back.
async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    timeout(PROMPT, stream.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("echo failed");
    assert_eq!(buf, msg);
}

/// Reads until the peer closes; returns how long that took. Panics after `limit`.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match timeout(limit, stream.read(&mut buf)).await {
        Err(_) => panic!("connection not closed within {limit:?}"),
        Ok(Ok(0) | Err(_)) => start.elapsed(),
        Ok(Ok(_)) => panic!("unexpected data on a connection that should close"),
    }
}

/// True when nothing accepts on the port any more.
async fn refused(port: u16) -> bool {
    matches!(
        timeout(PROMPT, TcpStream::connect((LOCALHOST, port))).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

async fn eventually_refused(port: u16) {
    let what = format!("port {port} to refuse");
    let check = || async move {
        if refused(port).await {
            Ok(())
        } else {
            Err("still accepts".to_string())
        }
    };
    if let Err(e) = wait::until_every_async(&what, PROMPT, Duration::from_millis(5), check).await {
        panic!("{e}");
    }
}

#[tokio::test]
async fn splices_both_ways_round_robin_across_two_replicas() {
    let h = harness(Duration::from_secs(2));
    let (a, a_count) = echo_server().await;
    let (b, b_count) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("docs", vec![a, b]);
    h.fwd.open("docs", port).await.unwrap();
    assert_eq!(h.fwd.listening(), vec![("docs".to_owned(), port)]);

    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..4 {
        let mut c = connect(port).await;
        roundtrip(&mut c, b"hello").await;
        roundtrip(&mut c, &payload).await;
        // Half-close travels through: the replica sees EOF and closes its side.
        c.shutdown().await.unwrap();
        wait_closed(&mut c, PROMPT).await;
    }
    assert_eq!(a_count.load(Ordering::SeqCst), 2);
    assert_eq!(b_count.load(Ordering::SeqCst), 2);
    assert_eq!(h.connections("docs"), 4);
    assert_eq!(h.upstream_errors("docs"), 0);
    eventually("active back to 0", || h.active("docs") == 0).await;
}

#[tokio::test]
async fn dead_replica_is_skipped_and_counted() {
    let h = harness(Duration::from_secs(2));
    let dead = SocketAddr::new(LOCALHOST, free_port());
    let (live, live_count) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("svc", vec![dead, live]);
    h.fwd.open("svc", port).await.unwrap();

    for i in 0..4u8 {
        let mut c = connect(port).await;
        roundtrip(&mut c, &[i; 16]).await;
    }
    assert_eq!(live_count.load(Ordering::SeqCst), 4);
    // The first connection finds the dead replica; it is then ejected, so the
    // next ones go straight to the live one although round robin would start
    // at the dead one every other time.
    assert_eq!(h.upstream_errors("svc"), 1);
    assert_eq!(h.connections("svc"), 4);
}

#[tokio::test]
async fn ejected_replica_gets_connections_again_once_it_answers() {
    let h = harness(Duration::from_secs(2));
    let back = free_port();
    let back_addr = SocketAddr::new(LOCALHOST, back);
    let (live, _) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("svc", vec![back_addr, live]);
    h.fwd.open("svc", port).await.unwrap();

    let mut c = connect(port).await;
    roundtrip(&mut c, b"first").await;
    assert_eq!(
        h.upstream_errors("svc"),
        1,
        "the closed replica was dialled"
    );
    // It comes back; after its ejection it is dialled again and stays in rotation.
    let listener = TcpListener::bind(back_addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut clients = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the replica that came back got no connection"
        );
        clients.push(connect(port).await);
        if let Ok(Ok(_)) = timeout(Duration::from_millis(100), listener.accept()).await {
            break;
        }
    }
    assert_eq!(h.upstream_errors("svc"), 1, "no failure after it came back");
}

#[tokio::test]
async fn waiting_client_is_served_when_endpoints_arrive_within_hold() {
    let hold = Duration::from_secs(10);
    let h = harness(hold);
    let port = free_port();
    h.fwd.open("late", port).await.unwrap();

    let start = Instant::now();
    let mut c = connect(port).await;
    c.write_all(b"early bytes").await.unwrap();
    eventually("connection accepted and waiting", || h.active("late") == 1).await;

    let (echo, echo_count) = echo_server().await;
    h.fwd.set_endpoints("late", vec![echo]);
    let mut buf = [0u8; 11];
    timeout(PROMPT, c.read_exact(&mut buf))
        .await
        .expect("not served after endpoints arrived")
        .unwrap();
    assert_eq!(&buf, b"early bytes");
    assert!(start.elapsed() < hold, "served only after hold expired");
    assert_eq!(echo_count.load(Ordering::SeqCst), 1);
    roundtrip(&mut c, b"more").await;
}

#[tokio::test]
async fn client_is_closed_after_hold_without_endpoints() {
    let hold = Duration::from_millis(600);
    let h = harness(hold);
    let port = free_port();
    h.fwd.open("none", port).await.unwrap();

    let mut c = connect(port).await;
    let waited = wait_closed(&mut c, hold + PROMPT).await;
    assert!(
        waited >= hold - Duration::from_millis(50),
        "closed after {waited:?}, before hold {hold:?}"
    );
    assert!(
        waited < hold + Duration::from_secs(3),
        "closed late: {waited:?}"
    );
    eventually("active back to 0", || h.active("none") == 0).await;
    assert_eq!(h.connections("none"), 1);
}

#[tokio::test]
async fn unreachable_replicas_are_counted_then_closed_after_hold() {
    let hold = Duration::from_millis(400);
    let h = harness(hold);
    let dead1 = SocketAddr::new(LOCALHOST, free_port());
    let dead2 = SocketAddr::new(LOCALHOST, free_port());
    let port = free_port();
    h.fwd.set_endpoints("down", vec![dead1, dead2]);
    h.fwd.open("down", port).await.unwrap();

    let mut c = connect(port).await;
    let waited = wait_closed(&mut c, hold + PROMPT).await;
    assert!(
        waited >= hold - Duration::from_millis(50),
        "closed after {waited:?}"
    );
    // Retried within the hold, but each replica's failure counted once per client.
    assert_eq!(h.upstream_errors("down"), 2);
}

#[tokio::test]
async fn replica_that_starts_listening_within_hold_is_reached_without_a_new_endpoint_set() {
    // A container is registered a few ms before its server listens: the
    // first dial is refused; the same endpoint set must be tried again.
    let hold = Duration::from_secs(3);
    let h = harness(hold);
    let late = free_port();
    let addr = SocketAddr::new(LOCALHOST, late);
    let port = free_port();
    h.fwd.set_endpoints("late", vec![addr]);
    h.fwd.open("late", port).await.unwrap();

    let mut c = connect(port).await;
    c.write_all(b"hi").await.unwrap();
    eventually("the refused dial is counted", || {
        h.upstream_errors("late") >= 1
    })
    .await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let started = Instant::now();
    let (mut up, _) = timeout(PROMPT, listener.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 2];
    up.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "reached only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn open_on_port_held_by_foreign_listener_is_addr_in_use() {
    let h = harness(Duration::from_secs(1));
    let foreign = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = foreign.local_addr().unwrap().port();

    match h.fwd.open("squatted", port).await {
        Err(ForwardError::AddrInUse { port: p }) => assert_eq!(p, port),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    assert!(h.fwd.listening().is_empty());

    // Once the squatter leaves, the same port can be opened.
    drop(foreign);
    h.fwd.open("squatted", port).await.unwrap();
    assert_eq!(h.fwd.listening(), vec![("squatted".to_owned(), port)]);
}

#[tokio::test]
async fn open_is_idempotent_and_moves_a_service_between_ports() {
    let h = harness(Duration::from_secs(1));
    let (echo, _) = echo_server().await;
    let p1 = free_port();
    let p2 = free_port();
    h.fwd.set_endpoints("mover", vec![echo]);
    h.fwd.open("mover", p1).await.unwrap();
    h.fwd.open("mover", p1).await.unwrap();
    let mut kept = connect(p1).await;
    roundtrip(&mut kept, b"before").await;

    h.fwd.open("mover", p2).await.unwrap();
    assert_eq!(h.fwd.listening(), vec![("mover".to_owned(), p2)]);
    // `open` returns once the old socket is released.
    assert!(refused(p1).await, "old port still accepts after the move");
    let mut c = connect(p2).await;
    roundtrip(&mut c, b"after").await;
    roundtrip(&mut kept, b"still works").await;

    // The released port can be taken by another service straight away.
    h.fwd.open("other", p1).await.unwrap();
}

#[tokio::test]
async fn close_stops_accepting_while_existing_connection_keeps_working() {
    let h = harness(Duration::from_secs(1));
    let (echo, _) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("closing", vec![echo]);
    h.fwd.open("closing", port).await.unwrap();
    let mut c = connect(port).await;
    roundtrip(&mut c, b"one").await;
    assert_eq!(h.connections("closing"), 1);

    h.fwd.close("closing");
    assert!(h.fwd.listening().is_empty());
    eventually_refused(port).await;
    roundtrip(&mut c, b"two").await;
    // The label values are gone.
    assert_eq!(
        h.metric("mesh_bridge_forward_connections_total", "closing"),
        None
    );
    assert_eq!(
        h.metric("mesh_bridge_forward_active_connections", "closing"),
        None
    );

    // Reopening the port right after close works (the old socket is released first).
    h.fwd.open("closing", port).await.unwrap();
    h.fwd.set_endpoints("closing", vec![echo]);
    let mut c2 = connect(port).await;
    roundtrip(&mut c2, b"three").await;
    assert_eq!(h.connections("closing"), 1);
}

#[tokio::test]
async fn active_gauge_returns_to_zero_after_clients_disconnect() {
    let h = harness(Duration::from_secs(1));
    let (echo, _) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("gauge", vec![echo]);
    h.fwd.open("gauge", port).await.unwrap();

    let mut clients = Vec::new();
    for i in 0..3u8 {
        let mut c = connect(port).await;
        roundtrip(&mut c, &[i]).await;
        clients.push(c);
    }
    assert_eq!(h.active("gauge"), 3);
    assert_eq!(h.connections("gauge"), 3);
    drop(clients);
    eventually("active back to 0", || h.active("gauge") == 0).await;
    assert_eq!(h.connections("gauge"), 3);
}

#[tokio::test]
async fn shutdown_aborts_idle_connection_within_deadline() {
    let h = harness(Duration::from_secs(1));
    let (echo, _) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("busy", vec![echo]);
    h.fwd.open("busy", port).await.unwrap();
    let mut idle = connect(port).await;
    roundtrip(&mut idle, b"hi").await;

    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let aborted = timeout(PROMPT, h.fwd.shutdown(deadline))
        .await
        .expect("shutdown hung");
    let took = start.elapsed();
    assert_eq!(aborted, 1);
    assert!(
        took >= deadline - Duration::from_millis(50),
        "took {took:?}"
    );
    assert!(took < deadline + Duration::from_secs(1), "took {took:?}");
    wait_closed(&mut idle, PROMPT).await;
    assert!(refused(port).await, "still accepting after shutdown");
    assert!(h.fwd.listening().is_empty());
    assert_eq!(h.active("busy"), 0);
    assert!(matches!(
        h.fwd.open("busy", port).await,
        Err(ForwardError::Bind { .. })
    ));
}

#[tokio::test]
async fn shutdown_without_connections_returns_at_once() {
    let h = harness(Duration::from_secs(1));
    let port = free_port();
    h.fwd.open("quiet", port).await.unwrap();
    let start = Instant::now();
    assert_eq!(h.fwd.shutdown(Duration::from_secs(5)).await, 0);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(refused(port).await);
}

#[tokio::test]
async fn cancelling_the_shutdown_token_stops_listeners() {
    let registry = Registry::new();
    let metrics = ForwardMetrics::register(&registry).unwrap();
    let token = CancellationToken::new();
    let fwd = Forwarder::new(LOCALHOST, Duration::from_secs(1), metrics, token.clone());
    let port = free_port();
    fwd.open("svc", port).await.unwrap();
    token.cancel();
    eventually_refused(port).await;
}

/// `len` seeded pseudo-random bytes: the same seed gives the same bytes and
/// no two chunks look alike, so a dropped, doubled or reordered chunk shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Like `assert_eq!` on byte strings, but names the first differing offset
/// instead of printing megabytes.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!("{what}: first difference at byte {at} of {}", want.len());
    }
    assert_eq!(got.len(), want.len(), "{what}: length differs");
}

/// Writes `data` in uneven pieces (1 byte to ~100 KiB), so the forwarder sees
/// reads of every size.
async fn write_uneven(w: &mut (impl AsyncWrite + Unpin), data: &[u8]) {
    let mut sizes = [1usize, 7, 1500, 4096, 65_536, 100_003, 333]
        .into_iter()
        .cycle();
    let mut at = 0;
    while at < data.len() {
        let end = (at + sizes.next().unwrap()).min(data.len());
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
    }
}

/// A replica that accepts one connection and runs `serve` on it.
async fn one_shot_replica<F, Fut, T>(serve: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(stream).await
    });
    (addr, task)
}

/// Opens the forwarder for `service` in front of the single `replica`; returns its port.
async fn forward_to(h: &Harness, service: &str, replica: SocketAddr) -> u16 {
    let port = free_port();
    h.fwd.set_endpoints(service, vec![replica]);
    h.fwd.open(service, port).await.unwrap();
    port
}

/// Sends `data` in uneven pieces and half-closes, while reading everything the
/// peer sends until its EOF; returns what was read.
async fn send_and_receive(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let send = async {
        write_uneven(&mut w, data).await;
        w.shutdown().await.unwrap();
    };
    let receive = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    tokio::join!(send, receive).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_both_ways_at_once_arrive_intact_and_in_order() {
    const LEN: usize = 8 << 20;
    let up = pattern(1, LEN);
    let down = pattern(2, LEN);
    let h = harness(Duration::from_secs(1));
    let (replica, served) = one_shot_replica({
        let down = down.clone();
        move |s| async move { send_and_receive(s, &down).await }
    })
    .await;
    let port = forward_to(&h, "bulk", replica).await;

    let c = connect(port).await;
    let got_down = timeout(Duration::from_secs(60), send_and_receive(c, &up))
        .await
        .expect("transfer hung");
    let got_up = timeout(PROMPT, served)
        .await
        .expect("replica hung")
        .unwrap();
    assert_same("client to replica", &got_up, &up);
    assert_same("replica to client", &got_down, &down);
    eventually("active back to 0", || h.active("bulk") == 0).await;
}

#[tokio::test]
async fn client_half_close_still_gets_the_whole_reply_then_eof() {
    let request = pattern(3, 300_000);
    let reply = pattern(4, 2 << 20);
    let h = harness(Duration::from_secs(1));
    let (replica, served) = one_shot_replica({
        let reply = reply.clone();
        move |mut s| async move {
            // Answers only once the request has ended, like an HTTP/1.0 server.
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            write_uneven(&mut s, &reply).await;
            s.shutdown().await.unwrap();
            got
        }
    })
    .await;
    let port = forward_to(&h, "halfc", replica).await;

    let mut c = connect(port).await;
    c.write_all(&request).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(PROMPT, c.read_to_end(&mut got))
        .await
        .expect("reply or EOF never came")
        .unwrap();
    assert_same("reply", &got, &reply);
    let got_request = timeout(PROMPT, served)
        .await
        .expect("replica hung")
        .unwrap();
    assert_same("request", &got_request, &request);
    eventually("active back to 0", || h.active("halfc") == 0).await;
}

#[tokio::test]
async fn replica_half_close_still_gets_the_whole_request_then_eof() {
    let greeting = pattern(5, 1 << 20);
    let request = pattern(6, 1 << 20);
    let h = harness(Duration::from_secs(1));
    let (replica, served) = one_shot_replica({
        let greeting = greeting.clone();
        move |mut s| async move {
            // Says everything first and half-closes, then listens to the end.
            write_uneven(&mut s, &greeting).await;
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        }
    })
    .await;
    let port = forward_to(&h, "halfr", replica).await;

    let mut c = connect(port).await;
    let mut got = Vec::new();
    timeout(PROMPT, c.read_to_end(&mut got))
        .await
        .expect("greeting or EOF never came")
        .unwrap();
    assert_same("greeting", &got, &greeting);
    // Our write half is still open through the forwarder.
    write_uneven(&mut c, &request).await;
    c.shutdown().await.unwrap();
    let got_request = timeout(PROMPT, served)
        .await
        .expect("replica hung")
        .unwrap();
    assert_same("request", &got_request, &request);
    wait_closed(&mut c, PROMPT).await;
    eventually("active back to 0", || h.active("halfr") == 0).await;
}

#[tokio::test]
async fn replica_reset_mid_stream_ends_the_session() {
    let h = harness(Duration::from_secs(1));
    let (replica, served) = one_shot_replica(|mut s| async move {
        let mut buf = vec![0; 64 * 1024];
        s.read_exact(&mut buf).await.unwrap();
        // Close with RST while the client is still sending.
        s.set_zero_linger().unwrap();
        drop(s);
    })
    .await;
    let port = forward_to(&h, "rstr", replica).await;

    let c = connect(port).await;
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        let chunk = pattern(7, 16 * 1024);
        loop {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    timeout(PROMPT, served)
        .await
        .expect("replica hung")
        .unwrap();
    let mut buf = [0u8; 64];
    match timeout(PROMPT, r.read(&mut buf)).await {
        Err(_) => panic!("client connection still open after the replica's reset"),
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected {n} bytes from a replica that sent nothing"),
    }
    timeout(PROMPT, writer)
        .await
        .expect("client writes still accepted after the replica's reset")
        .unwrap();
    eventually("active back to 0", || h.active("rstr") == 0).await;
}

#[tokio::test]
async fn client_reset_mid_stream_ends_the_session() {
    let h = harness(Duration::from_secs(1));
    let (replica, served) = one_shot_replica(|mut s| async move {
        // Streams until the forwarder gives up on the connection.
        let chunk = pattern(8, 16 * 1024);
        loop {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let port = forward_to(&h, "rstc", replica).await;

    let mut c = connect(port).await;
    let mut buf = vec![0; 64 * 1024];
    timeout(PROMPT, c.read_exact(&mut buf))
        .await
        .expect("stream never came")
        .unwrap();
    assert_same("stream start", &buf[..16 * 1024], &pattern(8, 16 * 1024));
    c.set_zero_linger().unwrap();
    drop(c);
    timeout(PROMPT, served)
        .await
        .expect("replica still streaming after the client's reset")
        .unwrap();
    eventually("active back to 0", || h.active("rstc") == 0).await;
}

#[test]
fn metrics_register_once_per_registry() {
    let registry = Registry::new();
    ForwardMetrics::register(&registry).unwrap();
    assert!(ForwardMetrics::register(&registry).is_err());
}

/// Set in the child process that runs `accept_errors_child`.
const EMFILE_CHILD_ENV: &str = "MESH_BRIDGE_FORWARD_EMFILE_CHILD";

/// Accept failing with EMFILE must neither spin nor flood the log. Runs
/// `accept_errors_child` in a child process with a low descriptor limit, so exhausting
/// descriptors cannot disturb the other tests.
#[test]
fn accept_errors_back_off_and_log_once() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 128 && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "accept_errors_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// CPU time (user + system) this process has used, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5), counted from the state (field 3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

#[tokio::test]
#[ignore = "run by accept_errors_back_off_and_log_once in a child process"]
async fn accept_errors_child() {
    if std::env::var_os(EMFILE_CHILD_ENV).is_none() {
        return;
    }
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let h = harness(Duration::from_millis(100));
    let port = free_port();
    h.fwd.open("starved", port).await.unwrap();
    let cpu_before = cpu_ticks();

    // Use up every descriptor but one, which the client socket takes.
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(24) => break, // EMFILE
            Err(e) => panic!("unexpected error while using up descriptors: {e}"),
        }
    }
    hog.pop();
    let _client = std::net::TcpStream::connect((LOCALHOST, port)).unwrap();
    // The forwarder now fails to accept (EMFILE) for a while; a hot loop would burn
    // this whole second of CPU on this single-threaded runtime.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failing_logs = logs.count("accept failing");
    drop(hog);

    let cpu_used = cpu_ticks() - cpu_before;
    assert!(cpu_used < 30, "accept loop spun: {cpu_used} ticks in 1 s");
    assert_eq!(failing_logs, 1, "logged more than once per state change");
    eventually("accepted after descriptors came back", || {
        h.connections("starved") == 1
    })
    .await;
    assert_eq!(logs.count("accepting again"), 1);
    assert_eq!(logs.count("accept failing"), 1);
}
