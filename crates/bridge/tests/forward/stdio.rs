//! The `stdio` transport through the forwarder: MCP streamable HTTP on the
//! mesh port, served by the bridge for stdio processes (the stub's stdio
//! mode, run in process and attached over pipes; the Docker attach is the
//! e2e tests' part). Sessions stay on their replica, a new process is
//! initialised again and its sessions go on, a gone replica's sessions get
//! 404, and a restarted bridge with the same secret and records takes up
//! the old sessions without initialising the process again.

use super::*;

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hyper::Method;
use mesh_bridge::stdio::attach::{AttachError, Attached};
use mesh_bridge::stdio::hub::{Attach, Hub, Kept};
use mesh_bridge::stdio::process::{Chunk, Config};
use mesh_chaos::http::{self, Reply};
use mesh_chaos::stub::{self, StubConfig};
use serde_json::{Value, json};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio_util::io::ReaderStream;

use mesh_bridge::contract::mcp::SESSION_HEADER as SESSION;

/// Stub processes in process, one per container, each attached through
/// its own pipe pair per attach (as Docker's attach does): a dropped attach
/// leaves the process running, and [`Stubs::restart`] replaces it with a new
/// one under a new key, as a container restart does. Our own stub, not a
/// stand-in for a dependency: the Docker attach it stands for is tested
/// against the engine in the e2e tests.
#[derive(Default)]
struct Stubs {
    procs: Mutex<HashMap<String, StubProc>>,
}

type Pipes = (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>);

struct StubProc {
    generation: u32,
    /// The process's stdout and stdin, lent to one attach at a time.
    pipes: Arc<tokio::sync::Mutex<Pipes>>,
    task: JoinHandle<std::io::Result<()>>,
}

fn start_stub(container: &str, generation: u32) -> StubProc {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let mut config = StubConfig::named("stdio-svc");
    config.replica = container.to_string();
    let task = tokio::spawn(async move {
        let (r, w) = tokio::io::split(theirs);
        stub::stdio::serve(&config, r, w).await
    });
    StubProc {
        generation,
        pipes: Arc::new(tokio::sync::Mutex::new(tokio::io::split(ours))),
        task,
    }
}

impl Stubs {
    /// Ends `container`'s process and starts a new one.
    fn restart(&self, container: &str) {
        let mut p = self.procs.lock().unwrap();
        let generation = p.get(container).map_or(0, |s| s.generation + 1);
        if let Some(old) = p.insert(container.to_string(), start_stub(container, generation)) {
            old.task.abort();
        }
    }
}

impl Attach for Stubs {
    fn attach<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<Attached, AttachError>> {
        Box::pin(async move {
            let (pipes, generation) = {
                let mut p = self.procs.lock().unwrap();
                let s = p
                    .entry(container.to_string())
                    .or_insert_with(|| start_stub(container, 0));
                (Arc::clone(&s.pipes), s.generation)
            };
            let (bridge, mine) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut p = pipes.lock().await;
                let (out, inp) = &mut *p;
                let (mut r, mut w) = tokio::io::split(mine);
                // Until this attach is dropped or the process ends.
                tokio::select! {
                    _ = tokio::io::copy(&mut r, inp) => {}
                    _ = tokio::io::copy(out, &mut w) => {}
                }
            });
            let (r, w) = tokio::io::split(bridge);
            let output = ReaderStream::new(r).map(|c| c.map(Chunk::Stdout));
            Ok(Attached {
                key: format!("{container}-gen{generation}"),
                input: Box::pin(w),
                output: Box::pin(output),
            })
        })
    }
}

use futures_util::StreamExt;

struct StdioBridge {
    fwd: Forwarder,
    hub: Arc<Hub>,
    port: u16,
    _token: CancellationToken,
}

async fn stdio_bridge(stubs: Arc<Stubs>, secret: [u8; 32], kept: Kept, port: u16) -> StdioBridge {
    let registry = Registry::new();
    let metrics = ForwardMetrics::register(&registry).unwrap();
    let token = CancellationToken::new();
    let hub = Arc::new(Hub::new(Some(stubs), None, Config::default(), secret, kept));
    let fwd = Forwarder::with_stdio(
        LOCALHOST,
        Duration::from_secs(3),
        metrics,
        token.clone(),
        Arc::clone(&hub),
    );
    let port = if port == 0 { free_port().await } else { port };
    fwd.open("stdio-svc", port).await.unwrap();
    StdioBridge {
        fwd,
        hub,
        port,
        _token: token,
    }
}

async fn free_port() -> u16 {
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    l.local_addr().unwrap().port()
}

/// Container ids (hex, as Docker's), and the replica keys that name them.
const A: &str = "aaaaaaaaaaaa0000";
const B: &str = "bbbbbbbbbbbb0000";
const KEY_A: &str = "aaaaaaaaaaaa";

fn running(ids: &[&str]) -> Endpoints {
    Endpoints {
        transport: Transport::Stdio,
        upstreams: ids.iter().map(|id| Upstream::stdio(id)).collect(),
        waiting: Vec::new(),
    }
}

async fn post(port: u16, session: Option<&str>, msg: Value, accept: &str) -> Reply {
    let mut headers = vec![("Content-Type", "application/json"), ("Accept", accept)];
    if let Some(s) = session {
        headers.push((SESSION, s));
    }
    let addr = SocketAddr::new(LOCALHOST, port);
    http::send(
        addr,
        Method::POST,
        "/mcp",
        &headers,
        Bytes::from(msg.to_string()),
        PROMPT,
    )
    .await
    .unwrap()
}

const BOTH: &str = "application/json, text/event-stream";

/// Ends session `s` with a DELETE, which must succeed.
async fn delete(port: u16, s: &str) {
    let addr = SocketAddr::new(LOCALHOST, port);
    let r = http::send(
        addr,
        Method::DELETE,
        "/mcp",
        &[(SESSION, s)],
        Bytes::new(),
        PROMPT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn initialize(port: u16) -> (String, Value) {
    let r = post(port, None, stub::initialize_request(), BOTH).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header(SESSION).expect("a session id").to_string();
    (id, serde_json::from_str(&r.text()).unwrap())
}

fn call(id: Value, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

/// The text of a tools/call answer (JSON), or the status.
async fn tool(port: u16, session: &str, name: &str, args: Value) -> Result<String, String> {
    let r = post(port, Some(session), call(json!(1), name, args), BOTH).await;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.text()));
    }
    let v: Value = serde_json::from_str(&r.text()).map_err(|e| e.to_string())?;
    v["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| v.to_string())
}

#[tokio::test]
async fn sessions_share_processes_stay_on_their_replica_and_survive_a_new_process() {
    let stubs = Arc::new(Stubs::default());
    let b = stdio_bridge(Arc::clone(&stubs), [7; 32], Kept::new(), 0).await;
    b.fwd.set_endpoints("stdio-svc", running(&[A, B]));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let port = b.port;
        tasks.spawn(async move {
            let (session, init) = initialize(port).await;
            assert_eq!(init["result"]["serverInfo"]["name"], "stdio-svc", "{init}");
            let me = tool(port, &session, "whoami", json!({})).await.unwrap();
            for n in 0..5 {
                let text = format!("s{i} c{n}");
                assert_eq!(
                    tool(port, &session, "echo", json!({"text": text})).await,
                    Ok(text)
                );
                assert_eq!(tool(port, &session, "whoami", json!({})).await.unwrap(), me);
            }
            (session, me)
        });
    }
    let sessions = tasks.join_all().await;
    let on_a = sessions.iter().filter(|(_, me)| me == KEY_A).count();
    assert_eq!(on_a, 10, "balanced over both replicas: {sessions:?}");
    let per = b.fwd.sessions("stdio-svc");
    assert_eq!(per.values().sum::<usize>(), 20, "{per:?}");

    // A's process ends and a new one starts: A's sessions go on once it is
    // initialised again (the stub refuses a second initialize, so an
    // answer proves the bridge initialised the new process exactly once).
    stubs.restart(KEY_A);
    let (s_a, _) = sessions.iter().find(|(_, me)| me == KEY_A).unwrap();
    let answer = wait::until_async("a call after the restart", PROMPT, || async {
        tool(b.port, s_a, "echo", json!({"text": "after"})).await
    })
    .await
    .unwrap();
    assert_eq!(answer, "after");
    for (s, me) in &sessions {
        assert_eq!(tool(b.port, s, "whoami", json!({})).await.unwrap(), *me);
    }
}

#[tokio::test]
async fn a_gone_replica_foreign_ids_and_deleted_sessions_get_404() {
    let stubs = Arc::new(Stubs::default());
    let b = stdio_bridge(stubs, [7; 32], Kept::new(), 0).await;
    b.fwd.set_endpoints("stdio-svc", running(&[A]));
    let (s, _) = initialize(b.port).await;
    assert!(s.starts_with("aaaaaaaaaaaa."), "{s}");
    // A forged token for a real replica, and an id of no replica.
    let forged = format!("aaaaaaaaaaaa.1-{}", "0".repeat(32));
    for bad in [forged.as_str(), "nonsense"] {
        let r = post(b.port, Some(bad), call(json!(1), "echo", json!({})), BOTH).await;
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
    }
    // A request that is not initialize without a session.
    let r = post(b.port, None, call(json!(1), "echo", json!({})), BOTH).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Larger than the stdio message limit: 413, naming the flag.
    let big = call(json!(1), "echo", json!({"text": "x".repeat(5 << 20)}));
    let r = post(b.port, Some(&s), big, BOTH).await;
    assert_eq!(r.status, 413);
    assert!(r.text().contains("--stdio-max-message"), "{}", r.text());
    // Notifications alone: 202.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(b.port, Some(&s), note, BOTH).await.status, 202);
    // Not JSON: a JSON-RPC parse error.
    let addr = SocketAddr::new(LOCALHOST, b.port);
    let r = http::send(
        addr,
        Method::POST,
        "/mcp",
        &[(SESSION, s.as_str())],
        Bytes::from_static(b"{nope"),
        PROMPT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("-32700"), "{}", r.text());

    delete(b.port, &s).await;
    assert_eq!(b.fwd.sessions("stdio-svc").values().sum::<usize>(), 0);

    let (s2, _) = initialize(b.port).await;
    b.fwd.set_endpoints("stdio-svc", running(&[B]));
    let r = post(b.port, Some(&s2), call(json!(1), "echo", json!({})), BOTH).await;
    assert_eq!(r.status, 404, "the replica left: {}", r.text());
    assert!(b.hub.replica(KEY_A).is_none());
}

#[tokio::test]
async fn progress_comes_on_the_posts_event_stream_and_a_get_holds_the_session_stream() {
    let stubs = Arc::new(Stubs::default());
    let b = stdio_bridge(stubs, [7; 32], Kept::new(), 0).await;
    b.fwd.set_endpoints("stdio-svc", running(&[A]));
    let (s, _) = initialize(b.port).await;
    let mut msg = call(json!("p1"), "echo", json!({"text": "with progress"}));
    msg["params"]["_meta"] = json!({"progressToken": "tok"});
    let r = post(b.port, Some(&s), msg.clone(), BOTH).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data: Vec<Value> = r
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = data.last().expect("the answer");
    assert_eq!(last["id"], "p1", "{data:?}");
    assert_eq!(last["result"]["content"][0]["text"], "with progress");
    // The same request from a client that takes only JSON: a JSON answer.
    let r = post(b.port, Some(&s), msg, "application/json").await;
    assert_eq!(r.header("content-type"), Some("application/json"));

    // The GET stream: one at a time.
    let addr = SocketAddr::new(LOCALHOST, b.port);
    let mut get = TcpStream::connect(addr).await.unwrap();
    get.write_all(
        format!(
            "GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{SESSION}: {s}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 512];
    let n = timeout(PROMPT, get.read(&mut head)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let r = http::send(
        addr,
        Method::GET,
        "/mcp",
        &[(SESSION, s.as_str()), ("Accept", "text/event-stream")],
        Bytes::new(),
        PROMPT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409, "a second GET: {}", r.text());
    drop(get);
    // The stream goes back to the session when its GET ends.
    wait::until_async("the stream back", PROMPT, || async {
        let mut g = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        g.write_all(format!("GET /mcp HTTP/1.1\r\nHost: x\r\n{SESSION}: {s}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64];
        let n = g.read(&mut buf).await.map_err(|e| e.to_string())?;
        let h = String::from_utf8_lossy(&buf[..n]).into_owned();
        if h.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(h)
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restarted_bridge_takes_up_its_sessions_without_initialising_again() {
    let stubs = Arc::new(Stubs::default());
    let secret = [9; 32];
    let b = stdio_bridge(Arc::clone(&stubs), secret, Kept::new(), 0).await;
    b.fwd.set_endpoints("stdio-svc", running(&[A]));
    let (s, _) = initialize(b.port).await;
    assert_eq!(
        tool(b.port, &s, "echo", json!({"text": "one"})).await,
        Ok("one".into())
    );
    let kept = b.hub.kept();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let port = b.port;
    b.fwd.shutdown(Duration::from_secs(1)).await;
    drop(b);

    // The same process goes on under the same key: were it initialised
    // again it would refuse, and the new session's initialize would fail.
    let b = stdio_bridge(Arc::clone(&stubs), secret, kept, port).await;
    b.fwd.set_endpoints("stdio-svc", running(&[A]));
    let answer = wait::until_async("the old session answered", PROMPT, || async {
        tool(port, &s, "echo", json!({"text": "two"})).await
    })
    .await
    .unwrap();
    assert_eq!(answer, "two");
    let (fresh, init) = initialize(port).await;
    assert_eq!(
        init["result"]["serverInfo"]["name"], "stdio-svc",
        "the kept result: {init}"
    );
    assert_ne!(fresh, s);
    // Another secret does not know the session.
    let other = stdio_bridge(stubs, [1; 32], Kept::new(), 0).await;
    other.fwd.set_endpoints("stdio-svc", running(&[A]));
    let r = post(
        other.port,
        Some(&s),
        call(json!(1), "echo", json!({})),
        BOTH,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Sessions that came and went leave nothing behind: no session in the
/// process, no task, no session in the counting table.
#[tokio::test]
async fn sessions_that_came_and_went_leave_no_task_and_no_state() {
    let stubs = Arc::new(Stubs::default());
    let b = stdio_bridge(stubs, [7; 32], Kept::new(), 0).await;
    b.fwd.set_endpoints("stdio-svc", running(&[A]));
    // Attached, one session come and gone: the baseline.
    let (s, _) = initialize(b.port).await;
    let addr = SocketAddr::new(LOCALHOST, b.port);
    delete(b.port, &s).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let settled = |what: &'static str, want: usize| {
        wait::until_async(what, PROMPT, move || async move {
            let n = tasks();
            if n <= want {
                Ok(n)
            } else {
                Err(format!("{n} tasks alive, want {want}"))
            }
        })
    };
    let base = settled("the baseline", usize::MAX).await.unwrap();
    for round in 0..10 {
        let mut js = tokio::task::JoinSet::new();
        for i in 0..50 {
            js.spawn(async move {
                let (s, _) = initialize(addr.port()).await;
                let text = format!("r{round} s{i}");
                assert_eq!(
                    tool(addr.port(), &s, "echo", json!({"text": text})).await,
                    Ok(text)
                );
                s
            });
        }
        for s in js.join_all().await {
            delete(addr.port(), &s).await;
        }
    }
    let r = b.hub.replica(KEY_A).expect("attached");
    assert_eq!(
        r.handle
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        r.handle
            .stats
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(b.fwd.sessions("stdio-svc").values().sum::<usize>(), 0);
    assert_eq!(b.hub.sessions("stdio-svc").values().sum::<usize>(), 0);
    settled("500 sessions' tasks gone", base).await.unwrap();
}
