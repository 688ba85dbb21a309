//! MCP streamable HTTP through the forwarder: requests routed one by one,
//! each session pinned to the replica that created it (three stateful stubs
//! in process), on fresh connections; DELETE, replica loss, foreign ids and
//! the GET stream.

use super::*;

use bytes::Bytes;
use hyper::Method;
use mesh_chaos::http::{self, Reply};
use mesh_chaos::stub::{self, StubConfig};
use serde_json::{Value, json};

use mesh_bridge::contract::mcp::SESSION_HEADER as SESSION;

/// A stateful stub served in process as replica `id`.
async fn stateful_replica(id: &str) -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = StubConfig::named("svc").stateful();
    config.replica = id.to_string();
    config.stream_every = Duration::from_millis(50);
    tokio::spawn(stub::serve(listener, config, std::future::pending()));
    addr
}

/// One POST of a JSON-RPC message to the mesh port on a fresh connection.
async fn post(port: u16, session: Option<&str>, msg: Value) -> Reply {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push((SESSION, s));
    }
    let addr = SocketAddr::new(LOCALHOST, port);
    let body = Bytes::from(msg.to_string());
    http::send(addr, Method::POST, "/mcp", &headers, body, PROMPT)
        .await
        .unwrap()
}

async fn initialize(port: u16) -> String {
    let r = post(port, None, stub::initialize_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header(SESSION).expect("a session id").to_string()
}

/// `tools/call whoami` in the session: which replica answered (the answer
/// comes as SSE, the stub's way for tools/call).
async fn whoami(port: u16, session: &str) -> Result<String, u16> {
    let r = post(
        port,
        Some(session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "whoami", "arguments": {}}}),
    )
    .await;
    if r.status != 200 {
        return Err(r.status);
    }
    let text = r.text();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("an SSE data line");
    let v: Value = serde_json::from_str(data).unwrap();
    Ok(v["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string())
}

fn replicas(addrs: &[(SocketAddr, &str)]) -> Endpoints {
    Endpoints {
        transport: Transport::StreamableHttp,
        upstreams: addrs.iter().map(|(a, id)| Upstream::new(*a, id)).collect(),
        waiting: Vec::new(),
    }
}

const IDS: [&str; 3] = ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"];

/// Three stateful replicas behind `svc` on a fresh port.
async fn three_replicas(h: &Harness) -> (u16, Vec<(SocketAddr, &'static str)>) {
    let mut ups = Vec::new();
    for id in IDS {
        ups.push((stateful_replica(id).await, id));
    }
    let port = free_port();
    h.fwd.open("svc", port).await.unwrap();
    h.fwd.set_endpoints("svc", replicas(&ups));
    (port, ups)
}

/// One stateful replica behind `svc` on a fresh port, and a session on it.
async fn one_replica_session(h: &Harness) -> (u16, String) {
    let ups = [(stateful_replica(IDS[0]).await, IDS[0])];
    let port = free_port();
    h.fwd.open("svc", port).await.unwrap();
    h.fwd.set_endpoints("svc", replicas(&ups));
    (port, initialize(port).await)
}

#[tokio::test]
async fn sessions_stay_on_their_replica_across_fresh_connections_and_are_balanced() {
    let h = harness(Duration::from_secs(2));
    let (port, _) = three_replicas(&h).await;

    let mut sessions = Vec::new();
    for _ in 0..30 {
        sessions.push(initialize(port).await);
    }
    let mut per_replica = std::collections::BTreeMap::<String, usize>::new();
    for s in &sessions {
        let (key, _) = s
            .split_once('.')
            .expect("the bridge's id names the replica");
        let first = whoami(port, s).await.unwrap();
        assert_eq!(first, key, "the replica the id names answered");
        for _ in 0..5 {
            assert_eq!(whoami(port, s).await.unwrap(), first, "session {s} moved");
        }
        *per_replica.entry(first).or_default() += 1;
    }
    assert_eq!(
        per_replica.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "new sessions go to the replica with the fewest: {per_replica:?}"
    );
    assert_eq!(h.metric("mesh_bridge_mcp_sessions", "svc"), Some(30));
    let counts = h.fwd.sessions("svc");
    assert_eq!(counts.values().sum::<usize>(), 30);

    // DELETE ends a session: the replica forgets it, the bridge stops counting it.
    let gone = &sessions[0];
    let addr = SocketAddr::new(LOCALHOST, port);
    let del = http::send(
        addr,
        Method::DELETE,
        "/mcp",
        &[(SESSION, gone)],
        Bytes::new(),
        PROMPT,
    )
    .await
    .unwrap();
    assert_eq!(del.status, 200, "{}", del.text());
    // The answer repeats the session id (as the SDKs' servers do): the
    // session must stay ended all the same.
    assert!(del.header(SESSION).is_some());
    assert_eq!(h.metric("mesh_bridge_mcp_sessions", "svc"), Some(29));
    assert_eq!(whoami(port, gone).await, Err(404));
}

#[tokio::test]
async fn a_lost_replica_ends_only_its_sessions_and_never_reaches_another() {
    let h = harness(Duration::from_secs(2));
    let (port, ups) = three_replicas(&h).await;
    let mut sessions = Vec::new();
    for _ in 0..9 {
        sessions.push(initialize(port).await);
    }
    // Replica b leaves.
    h.fwd.set_endpoints("svc", replicas(&[ups[0], ups[2]]));
    for s in &sessions {
        let on_b = s.starts_with(IDS[1]);
        match whoami(port, s).await {
            Ok(who) => {
                assert!(!on_b, "a session of the lost replica was answered by {who}");
                assert_eq!(s.split_once('.').unwrap().0, who);
            }
            Err(status) => {
                assert!(on_b, "a session of a live replica failed with {status}");
                assert_eq!(status, 404, "the client must start a new session");
            }
        }
    }
    let misses = h
        .registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "mesh_bridge_mcp_session_misses_total")
        .expect("misses counted");
    let gone: f64 = misses
        .get_metric()
        .iter()
        .filter(|m| m.get_label().iter().any(|l| l.value() == "replica-gone"))
        .map(|m| m.get_counter().value())
        .sum();
    assert_eq!(gone, 3.0, "each of b's three sessions missed once");
    // A new session works again, on a live replica.
    let again = initialize(port).await;
    assert!(!again.starts_with(IDS[1]));
    whoami(port, &again).await.unwrap();
    // An id the bridge never issued is a 404 of the bridge's own.
    assert_eq!(whoami(port, "not-ours").await, Err(404));
}

#[tokio::test]
async fn a_query_too_long_once_rewritten_gets_414_and_the_session_lives_on() {
    let h = harness(Duration::from_secs(2));
    let (port, session) = one_replica_session(&h).await;
    // The session in the query (the `sse` transport's way) after 4,000
    // empty session parameters: each is given the replica's id on the way,
    // which takes the target over the URI length limit. Sent on unchanged,
    // the replica would get the client's id, not its own: an `sse` server
    // answers 404 and the session ends (this stub reads only the header
    // and answered 400 before the fix).
    let target = format!("/mcp?{}session_id={session}", "session_id=&".repeat(4_000));
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let headers = [("Content-Type", "application/json")];
    let addr = SocketAddr::new(LOCALHOST, port);
    let r = http::send(
        addr,
        Method::POST,
        &target,
        &headers,
        Bytes::from(body.to_string()),
        PROMPT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 414, "{}", r.text());
    assert!(
        r.text().contains("send the session id once"),
        "{}",
        r.text()
    );
    assert_eq!(whoami(port, &session).await, Ok(IDS[0].to_string()));
}

#[tokio::test]
async fn a_paused_replica_takes_no_new_session_and_its_own_wait_for_it() {
    let h = harness(Duration::from_secs(30));
    let (port, ups) = three_replicas(&h).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(initialize(port).await);
    }
    let on_b = sessions
        .iter()
        .find(|s| s.starts_with(IDS[1]))
        .expect("one session per replica")
        .clone();
    // Replica b is paused: frozen, its sessions intact.
    let paused = |h: &Harness, ups: &[(SocketAddr, &str)]| {
        let mut e = replicas(&[ups[0], ups[2]]);
        e.waiting = vec![Upstream::new(ups[1].0, ups[1].1)];
        h.fwd.set_endpoints("svc", e);
    };
    paused(&h, &ups);
    for _ in 0..4 {
        assert!(
            !initialize(port).await.starts_with(IDS[1]),
            "a new session went to the paused replica"
        );
    }
    let waiting = tokio::spawn(async move { whoami(port, &on_b).await });
    let mut waiting = std::pin::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "a paused replica's session was answered (404?) instead of waiting for it"
    );
    h.fwd.set_endpoints("svc", replicas(&ups));
    assert_eq!(
        waiting.await.unwrap(),
        Ok(IDS[1].to_string()),
        "the session goes on after unpause, on its replica"
    );
    assert_eq!(h.fwd.sessions("svc").len(), 3, "no session was forgotten");

    // Paused for longer than the hold: 503, and the session lives on.
    let h = harness(Duration::from_millis(100));
    let (port, ups) = three_replicas(&h).await;
    let mut on_b = None;
    while on_b.is_none() {
        let s = initialize(port).await;
        on_b = s.starts_with(IDS[1]).then_some(s);
    }
    let on_b = on_b.unwrap();
    paused(&h, &ups);
    assert_eq!(whoami(port, &on_b).await, Err(503));
    h.fwd.set_endpoints("svc", replicas(&ups));
    assert_eq!(whoami(port, &on_b).await, Ok(IDS[1].to_string()));
}

#[tokio::test]
async fn the_get_stream_flows_through_without_buffering() {
    let h = harness(Duration::from_secs(2));
    let (port, session) = one_replica_session(&h).await;
    let mut c = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    let req = format!(
        "GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{SESSION}: {session}\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    // The stub sends a notification every 50 ms on a stream that never
    // ends: three must arrive while it is open.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let got = timeout(PROMPT, async {
        while seen.matches("notifications/message").count() < 3 {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(got.is_ok(), "notifications did not stream: {seen:?}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains(IDS[0]), "{seen}");
}

/// A replica that answers any request with an event stream written as fast
/// as the connection takes it; `written` counts the bytes that went out.
async fn flooding_replica(written: Arc<std::sync::atomic::AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            head.extend_from_slice(&buf[..n]);
        }
        let start = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        s.write_all(start).await.unwrap();
        let event = format!("data: {}\n\n", "x".repeat(16 * 1024 - 8));
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        // Ends when the bridge drops the connection (the test is over).
        while s.write_all(chunk.as_bytes()).await.is_ok() {
            written.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_back_its_replica_and_no_one_else() {
    let h = harness(Duration::from_secs(2));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = [(flooding_replica(Arc::clone(&written)).await, IDS[0])];
    let flood_port = free_port();
    h.fwd.open("flood", flood_port).await.unwrap();
    h.fwd.set_endpoints("flood", replicas(&flood));
    let ok = [(stateful_replica(IDS[1]).await, IDS[1])];
    let ok_port = free_port();
    h.fwd.open("svc", ok_port).await.unwrap();
    h.fwd.set_endpoints("svc", replicas(&ok));

    // The slow client asks for the stream and never reads it.
    let mut slow = TcpStream::connect((LOCALHOST, flood_port)).await.unwrap();
    slow.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    // Backpressure reaches the replica: what it wrote stops growing, at
    // what socket buffers and the bridge's bounded buffers hold.
    let mut last = u64::MAX;
    let plateau = wait::until_every_async(
        "the flooding replica to be held back",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            let was = std::mem::replace(&mut last, now);
            async move {
                if now == was && now > 0 {
                    Ok(now)
                } else {
                    Err(format!("{now} bytes written"))
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(
        plateau < 64 * 1024 * 1024,
        "the bridge buffered a stalled stream: {plateau} bytes taken from the replica"
    );
    // Meanwhile other clients are served as usual.
    for _ in 0..20 {
        let session = timeout(PROMPT, initialize(ok_port))
            .await
            .expect("initialize in time");
        let who = timeout(PROMPT, whoami(ok_port, &session))
            .await
            .expect("whoami in time");
        assert_eq!(who.as_deref(), Ok(IDS[1]));
    }
    // And the stalled stream is whole when its client reads again.
    let mut buf = vec![0u8; 64 * 1024];
    let n = timeout(PROMPT, slow.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0 && String::from_utf8_lossy(&buf[..n]).contains("text/event-stream"));
}

/// Reads `stream` until the bridge closes it (panics after `limit`); when
/// each byte arrived does not matter, only when the close came.
async fn closed_at(stream: &mut TcpStream, limit: Duration) -> (Instant, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    });
    let at = read
        .await
        .expect("the bridge closed the connection in time");
    (at, String::from_utf8_lossy(&seen).into_owned())
}

#[tokio::test]
async fn quiet_connections_are_cut_off_and_a_long_stream_is_not() {
    use mesh_bridge::forward::idle::{HEADER_TIMEOUT, TICK};
    let h = harness(Duration::from_secs(2));
    let (port, session) = one_replica_session(&h).await;
    let limit = HEADER_TIMEOUT + TICK + PROMPT;

    // Kept alive after one answered request, then silent.
    let idle = async {
        let mut c = connect(port).await;
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{SESSION}: {session}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        c.read_exact(&mut first).await.unwrap();
        let answered = Instant::now();
        assert_eq!(&first, b"HTTP/1.1 200");
        let (closed, _) = closed_at(&mut c, limit).await;
        closed - answered
    };
    // A slowloris: a header line every half second, the head never done.
    let slow = async {
        let start = Instant::now();
        let mut c = connect(port).await;
        c.write_all(b"POST /mcp HTTP/1.1\r\n").await.unwrap();
        let (mut r, mut w) = c.split();
        let trickle = async {
            for i in 0.. {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if w.write_all(format!("x-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let mut buf = [0u8; 64];
        let closed = tokio::select! {
            () = trickle => Instant::now(),
            r = timeout(limit, r.read(&mut buf)) => {
                let n = r.expect("the bridge closed the slowloris in time");
                assert!(matches!(n, Ok(0) | Err(_)), "an answer to a head never sent");
                Instant::now()
            }
        };
        closed - start
    };
    // A GET stream of notifications, open longer than the timeout.
    let stream = async {
        let mut c = connect(port).await;
        let req = format!(
            "GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{SESSION}: {session}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let until = Instant::now() + HEADER_TIMEOUT + TICK + Duration::from_secs(1);
        let mut buf = [0u8; 4096];
        let mut events = 0;
        while Instant::now() < until {
            let n = timeout(PROMPT, c.read(&mut buf)).await;
            let n = n.expect("the stream went silent").unwrap();
            assert!(n > 0, "the stream was cut off after {events} notifications");
            events += String::from_utf8_lossy(&buf[..n])
                .matches("notifications/message")
                .count();
        }
        events
    };
    let (idle, slow, events) = tokio::join!(idle, slow, stream);
    // Closed one tick after the timeout at most (and a second for a slow
    // machine); the idle one's clock starts when its answer arrived, just
    // after the bridge counted it sent.
    let early = Duration::from_millis(200);
    for (what, after) in [("idle keep-alive", idle), ("slowloris", slow)] {
        assert!(
            after >= HEADER_TIMEOUT - early
                && after <= HEADER_TIMEOUT + TICK + Duration::from_secs(1),
            "{what} closed after {after:?}, not within {HEADER_TIMEOUT:?} + {TICK:?}"
        );
    }
    assert!(events > 100, "only {events} notifications streamed");
}
