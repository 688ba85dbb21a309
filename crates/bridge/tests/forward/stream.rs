//! Byte streams: megabytes both ways intact and in order, half-closes, resets mid-stream.

use super::*;

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
    h.fwd.set_endpoints(service, tcp(&[replica]));
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
