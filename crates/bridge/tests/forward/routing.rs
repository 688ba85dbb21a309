//! Routing: round robin, failover and ejection, the hold for clients without endpoints, open/close/move, shutdown.

use super::*;

#[tokio::test]
async fn splices_both_ways_round_robin_across_two_replicas() {
    let h = harness(Duration::from_secs(2));
    let (a, a_count) = echo_server().await;
    let (b, b_count) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("docs", tcp(&[a, b]));
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
    h.fwd.set_endpoints("svc", tcp(&[dead, live]));
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
    h.fwd.set_endpoints("svc", tcp(&[back_addr, live]));
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
    h.fwd.set_endpoints("late", tcp(&[echo]));
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
    h.fwd.set_endpoints("down", tcp(&[dead1, dead2]));
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
    h.fwd.set_endpoints("late", tcp(&[addr]));
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
    h.fwd.set_endpoints("mover", tcp(&[echo]));
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
    h.fwd.set_endpoints("closing", tcp(&[echo]));
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
    h.fwd.set_endpoints("closing", tcp(&[echo]));
    let mut c2 = connect(port).await;
    roundtrip(&mut c2, b"three").await;
    assert_eq!(h.connections("closing"), 1);
}

#[tokio::test]
async fn active_gauge_returns_to_zero_after_clients_disconnect() {
    let h = harness(Duration::from_secs(1));
    let (echo, _) = echo_server().await;
    let port = free_port();
    h.fwd.set_endpoints("gauge", tcp(&[echo]));
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
    h.fwd.set_endpoints("busy", tcp(&[echo]));
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
