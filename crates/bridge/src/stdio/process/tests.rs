//! The process task against the MCP stub's stdio mode, served in process
//! over an in-memory pipe (the Docker attach is the e2e tests' part).

use std::time::Duration;

use mesh_chaos::stub::{StubConfig, stdio};
use serde_json::json;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::io::ReaderStream;

use super::*;

/// A stub process named `name`: the bridge's ends of its stdin and stdout,
/// and the task serving it (abort it to end the process).
fn stub_process(name: &str) -> (Input, Output, JoinHandle<std::io::Result<()>>) {
    let (bridge, stub) = tokio::io::duplex(64 * 1024);
    let config = StubConfig::named(name);
    let task = tokio::spawn(async move {
        let (r, w) = tokio::io::split(stub);
        stdio::serve(&config, r, w).await
    });
    let (r, w) = tokio::io::split(bridge);
    let output = ReaderStream::new(r).map(|c| c.map(Chunk::Stdout));
    (Box::pin(w), Box::pin(output), task)
}

fn req(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn echo(text: &str) -> Value {
    json!({"name": "echo", "arguments": {"text": text}})
}

/// Sends `msg` and waits (bounded) for its answer.
async fn ask(h: &Handle, session: SessionId, msg: Value) -> Value {
    let (tx, mut rx) = mpsc::channel(4);
    h.send(session, msg, Some(tx)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an answer within 5 s")
        .expect("the answer channel stays open until answered")
}

fn init() -> Value {
    req(
        json!(1),
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    )
}

#[tokio::test]
async fn twenty_sessions_share_one_process_with_their_own_ids() {
    let h = Handle::spawn("svc", Config::default(), None);
    let (input, output, _stub) = stub_process("one");
    h.attach("p1".into(), input, output).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let h = h.clone();
        tasks.spawn(async move {
            let s = h.open().await.unwrap();
            // The stub refuses a second initialize: every session getting
            // the result proves the process saw one.
            let answer = ask(&h, s.id, init()).await;
            assert_eq!(answer["result"]["serverInfo"]["name"], "one", "{answer}");
            assert_eq!(answer["id"], 1);
            for n in 0..5 {
                let text = format!("session {i} call {n}");
                let answer = ask(&h, s.id, req(json!(1), "tools/call", echo(&text))).await;
                assert_eq!(answer["id"], 1);
                assert_eq!(answer["result"]["content"][0]["text"], text);
            }
            s
        });
    }
    let sessions = tasks.join_all().await;
    assert_eq!(h.stats.sessions.load(Ordering::Relaxed), 20);
    assert_eq!(h.stats.in_flight.load(Ordering::Relaxed), 0);
    let record = h
        .record
        .borrow()
        .clone()
        .expect("kept after the initialisation");
    assert!(record.record.result.is_some());
    for s in &sessions {
        h.close(s.id).await.unwrap();
    }
    let closed = h.open().await.unwrap();
    assert_eq!(h.stats.sessions.load(Ordering::Relaxed), 1, "{closed:?}");
}

#[tokio::test]
async fn a_new_process_is_initialised_again_and_the_sessions_go_on() {
    let h = Handle::spawn("svc", Config::default(), None);
    let (input, output, stub) = stub_process("one");
    h.attach("p1".into(), input, output).await.unwrap();
    let s = h.open().await.unwrap();
    ask(&h, s.id, init()).await;
    stub.abort();
    // While nothing runs, a request fails at once (no answer can come).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = ask(&h, s.id, req(json!(2), "tools/call", echo("x"))).await;
        if answer.get("error").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still answered: {answer}"
        );
        tokio::task::yield_now().await;
    }
    let (input, output, _stub) = stub_process("two");
    h.attach("p2".into(), input, output).await.unwrap();
    let answer = ask(&h, s.id, req(json!(3), "tools/call", echo("after"))).await;
    assert_eq!(answer["result"]["content"][0]["text"], "after", "{answer}");
    assert_eq!(h.stats.restarts.load(Ordering::Relaxed), 1);
    assert_eq!(h.stats.attaches.load(Ordering::Relaxed), 2);
    // The same process attached again is not initialised again.
    let (input, output, _stub3) = stub_process("three");
    h.attach("p2".into(), input, output).await.unwrap();
    let answer = ask(&h, s.id, req(json!(4), "tools/call", echo("same"))).await;
    assert_eq!(answer["result"]["content"][0]["text"], "same");
    assert_eq!(h.stats.restarts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn log_lines_on_stdout_are_counted_and_skipped() {
    let h = Handle::spawn("svc", Config::default(), None);
    let (tx, rx) = mpsc::channel::<std::io::Result<Chunk>>(8);
    let (sink, _keep) = tokio::io::duplex(1024);
    let output = tokio_stream_from(rx);
    h.attach("p".into(), Box::pin(sink), output).await.unwrap();
    tx.send(Ok(Chunk::Stdout(Bytes::from_static(
        b"Listening on stdio\n",
    ))))
    .await
    .unwrap();
    tx.send(Ok(Chunk::Stderr(Bytes::from_static(b"a log line\n"))))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.stats.dropped_lines.load(Ordering::Relaxed) == 0
        || h.stats.stderr_lines.load(Ordering::Relaxed) == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "lines not counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.stats.dropped_lines.load(Ordering::Relaxed), 1);
    assert_eq!(h.stats.stderr_lines.load(Ordering::Relaxed), 1);
}

/// A stream of the chunks sent on `rx`.
fn tokio_stream_from(rx: mpsc::Receiver<std::io::Result<Chunk>>) -> Output {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }))
}

#[tokio::test]
async fn a_resumed_task_initialises_only_a_process_it_did_not_know() {
    let h = Handle::spawn("svc", Config::default(), None);
    let (input, output, stub) = stub_process("one");
    h.attach("p1".into(), input, output).await.unwrap();
    let s = h.open().await.unwrap();
    ask(&h, s.id, init()).await;
    let kept = h.record.borrow().clone().expect("kept");
    assert_eq!(kept.key.as_deref(), Some("p1"));
    drop(h);
    // The same process key after a bridge restart: not initialised again
    // (had it been, the client's initialize would get the new stub's name).
    let resume = |first_id| Resume {
        durable: kept.clone(),
        first_id,
    };
    let h = Handle::spawn("svc", Config::default(), Some(resume(1000)));
    stub.abort();
    let (input, output, _stub) = stub_process("two");
    h.attach("p1".into(), input, output).await.unwrap();
    let s = h.open().await.unwrap();
    let answer = ask(&h, s.id, init()).await;
    assert_eq!(
        answer["result"]["serverInfo"]["name"], "one",
        "the kept result"
    );
    assert_eq!(h.stats.restarts.load(Ordering::Relaxed), 0);
    // Another process: initialised with the kept parameters first.
    let h = Handle::spawn("svc", Config::default(), Some(resume(2000)));
    let (input, output, _stub) = stub_process("three");
    h.attach("p9".into(), input, output).await.unwrap();
    let s = h.open().await.unwrap();
    let call = ask(&h, s.id, req(json!(5), "tools/call", echo("new process"))).await;
    assert_eq!(call["result"]["content"][0]["text"], "new process");
    assert_eq!(h.stats.restarts.load(Ordering::Relaxed), 1);
    let kept = h.record.borrow().clone().expect("kept");
    assert_eq!(kept.key.as_deref(), Some("p9"));
    assert_eq!(
        kept.record.result.as_ref().unwrap()["serverInfo"]["name"],
        "three",
        "the new process's own result is kept"
    );
}

#[tokio::test]
async fn a_server_that_stops_reading_stdin_fails_new_requests_and_still_answers() {
    let config = Config {
        stdin_queue: 2,
        ..Config::default()
    };
    let h = Handle::spawn("svc", config, None);
    // A server the test plays: it reads the initialize, answers it, then
    // never reads stdin again (a pipe of 256 bytes fills up).
    let (bridge, mut server_in) = tokio::io::duplex(256);
    let (out_tx, out_rx) = mpsc::channel(8);
    h.attach("p1".into(), Box::pin(bridge), tokio_stream_from(out_rx))
        .await
        .unwrap();
    let s = h.open().await.unwrap();
    let (tx, mut answers) = mpsc::channel(64);
    h.send(s.id, init(), Some(tx.clone())).await.unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let mut b = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut server_in, &mut b)
            .await
            .unwrap();
        line.push(b[0]);
    }
    let sent: Value = serde_json::from_slice(&line).unwrap();
    let result = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "t", "version": "1"}});
    let reply = json!({"jsonrpc": "2.0", "id": sent["id"], "result": result});
    out_tx
        .send(Ok(Chunk::Stdout(Bytes::from(format!("{reply}\n")))))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), answers.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got["result"]["serverInfo"]["name"], "t");
    // 40 calls of ~100 bytes: the pipe and the 2-line queue fill, the rest
    // are answered with an error at once.
    for i in 0..40 {
        let msg = req(json!(100 + i), "tools/call", echo(&"x".repeat(40)));
        h.send(s.id, msg, Some(tx.clone())).await.unwrap();
    }
    let refused = tokio::time::timeout(Duration::from_secs(5), answers.recv())
        .await
        .expect("a refusal at once, not a wait")
        .unwrap();
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot take input")),
        "{refused}"
    );
    assert!(h.stats.unsent_lines.load(Ordering::Relaxed) >= 30);
    // stdout is still read: an answer to a queued request still arrives.
    let late = json!({"jsonrpc": "2.0", "id": sent["id"].as_u64().unwrap() + 2, "result": {"content": []}});
    out_tx
        .send(Ok(Chunk::Stdout(Bytes::from(format!("{late}\n")))))
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(2), answers.recv()).await {
        if a.get("result").is_some() {
            ids.push(a["id"].clone());
            break;
        }
    }
    assert_eq!(ids.len(), 1, "the server's answer went through");
}
