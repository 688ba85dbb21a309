//! Session probes: MCP clients that keep sessions open through the mesh
//! port of a stateful (streamable HTTP) or stdio service, the way users'
//! clients do, and record for every request which replica answered and in
//! which session ([`SessionEvent`]), for I8 (`invariants::sessions`).
//!
//! Each service keeps [`SESSIONS_PER_SERVICE`] sessions. A session is
//! `initialize` (on a fresh connection), `notifications/initialized`, then
//! one request per tick, in turn: a `tools/call` on a fresh connection, a
//! `ping` and a `tools/call` on the session's kept-alive connection; beside
//! them its GET stream stays open (opened again when it ends). After a
//! seeded number of requests the client ends it with `DELETE`. A 404 ends
//! it too (the bridge says its replica is gone): the probe starts a new one.
//! Every request also counts as a probe [`Sample`] of its service (I4, I7).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Method;
use hyper_util::rt::TokioIo;
use mesh_bridge::contract::mcp::SESSION_HEADER;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::{HttpError, KeepAlive, Reply};
use crate::metrics::HarnessMetrics;
use crate::probe::{Outcome, PROBE_TIMEOUT, PortMap, Recorder, Sample};

/// Sessions each session probe keeps open at once.
pub const SESSIONS_PER_SERVICE: usize = 3;
/// Fewest and most requests a session makes before its client ends it.
pub const LIFE: (u32, u32) = (12, 40);
/// How long an ended GET stream waits before it is opened again.
const STREAM_RETRY: Duration = Duration::from_millis(500);

/// Which process answered: the container (by the name the harness gave it)
/// and the process's random id (`whoami` of the stub).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// The container's name.
    pub container: String,
    /// The process's random id: a new one after a restart.
    pub process: String,
}

impl Replica {
    /// From the stub's identity object (`whoami`'s structured content, or a
    /// stream notification's `data`).
    pub fn from_identity(v: &Value) -> Option<Self> {
        Some(Self {
            container: v.get("container")?.as_str()?.to_string(),
            process: v.get("process")?.as_str()?.to_string(),
        })
    }
}

/// How a service serves sessions, which decides what may end one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionKind {
    /// Streamable HTTP servers that keep sessions in the process: a session
    /// ends with its process (a kill, a restart, a removal).
    Http,
    /// stdio servers behind the bridge, which keeps sessions across a new
    /// process of the same container: only a removed container ends one.
    Stdio,
}

/// What a request of a session was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `initialize` (opens the session).
    Initialize,
    /// `tools/call`.
    Call,
    /// `ping`.
    Ping,
    /// The GET stream: a notification on it, or its end.
    Stream,
    /// `DELETE` (the client ends the session).
    Delete,
}

/// How a request of a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Got {
    /// Answered in the session.
    Answered,
    /// HTTP 404: the session is gone.
    NotFound,
    /// Anything else (no answer, another status, a JSON-RPC error).
    Failed,
}

/// One request of one session (or one note on its stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// ms from the start of the run.
    pub t_ms: u64,
    /// The service.
    pub service: String,
    /// The session's number in this run (the probe's, not the server's id).
    pub session: u64,
    /// The request.
    pub op: Op,
    /// Sent on the session's kept-alive connection (else a fresh one).
    #[serde(default)]
    pub reused: bool,
    /// How it ended.
    pub reply: Got,
    /// Who answered, when the answer says (the stub's `whoami`, its stream).
    #[serde(default)]
    pub replica: Option<Replica>,
    /// What went wrong, for a failure.
    #[serde(default)]
    pub detail: Option<String>,
}

/// One run of the official MCP SDK client against a service (a real
/// client beside the harness's own), as its report gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdkRun {
    /// When it started (ms from the start of the run).
    pub t_ms: u64,
    /// When it ended.
    pub end_ms: u64,
    /// The service.
    pub service: String,
    /// Sessions it opened.
    pub sessions: u64,
    /// Sessions that failed.
    pub failed: u64,
    /// Calls answered.
    pub calls: u64,
    /// Why the run itself failed (no report, a crash), if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// A service the session probes keep sessions with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTarget {
    /// The service.
    pub service: String,
    /// How it serves sessions.
    pub kind: SessionKind,
    /// The `serverInfo.name` its `initialize` must answer with (I7).
    pub server: String,
    /// The tool each call calls: `whoami` of the stub names the replica.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
}

impl SessionTarget {
    /// The stub (`serverInfo.name` = the service), called with `whoami`.
    pub fn stub(service: &str, kind: SessionKind) -> Self {
        Self {
            service: service.to_string(),
            kind,
            server: service.to_string(),
            tool: "whoami".into(),
            arguments: json!({}),
        }
    }
}

/// The answer to request `id` in a reply: the JSON body, or the SSE event
/// that carries it.
pub fn answer_in(reply: &Reply, id: u64) -> Result<Value, String> {
    let is_sse = reply
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !is_sse {
        return reply.json();
    }
    let text = reply.text();
    for data in sse_data(&text) {
        if let Ok(v) = serde_json::from_str::<Value>(data)
            && v.get("id").and_then(Value::as_u64) == Some(id)
        {
            return Ok(v);
        }
    }
    Err(format!(
        "no answer to request {id} in the SSE stream: {}",
        text.chars().take(200).collect::<String>()
    ))
}

/// The `data:` payloads of SSE text (one line each, as MCP servers send).
fn sse_data(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        l.strip_prefix("data:")
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
    })
}

/// The outcome of a failed exchange, as a probe counts it.
fn outcome_of(e: &HttpError) -> Outcome {
    match e {
        HttpError::Timeout { .. } => Outcome::Timeout,
        HttpError::Io { .. } | HttpError::Http { .. } => Outcome::Refused,
        HttpError::Build { .. } => Outcome::Error,
    }
}

/// One live session of a probe.
struct Live {
    n: u64,
    sid: String,
    addr: SocketAddr,
    port: u16,
    server: String,
    requests: u32,
    life: u32,
    conn: KeepAlive,
    stream: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stream.abort();
    }
}

/// What every session task shares.
#[derive(Clone)]
struct Ctx {
    rec: Recorder,
    ports: PortMap,
    start: Instant,
    metrics: HarnessMetrics,
    target: Arc<SessionTarget>,
    numbers: Arc<AtomicU64>,
}

impl Ctx {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn event(
        &self,
        n: u64,
        op: Op,
        reused: bool,
        reply: Got,
        replica: Option<Replica>,
    ) -> SessionEvent {
        SessionEvent {
            t_ms: self.now(),
            service: self.target.service.clone(),
            session: n,
            op,
            reused,
            reply,
            replica,
            detail: None,
        }
    }

    fn record(&self, e: SessionEvent) {
        self.rec.with(|h| h.sessions.push(e));
    }

    fn sample(
        &self,
        t_ms: u64,
        port: Option<u16>,
        outcome: Outcome,
        server: Option<String>,
        t: Instant,
    ) {
        let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
        self.metrics.probe(outcome, latency_ms / 1000.0);
        let s = Sample {
            t_ms,
            service: self.target.service.clone(),
            port,
            outcome,
            server,
            latency_ms,
        };
        self.rec.with(|h| h.samples.push(s));
    }

    fn headers(sid: Option<&str>) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("Content-Type", "application/json".to_string()),
            ("Accept", "application/json, text/event-stream".to_string()),
        ];
        if let Some(s) = sid {
            h.push((SESSION_HEADER, s.to_string()));
        }
        h
    }

    /// Opens a session; `None` when it could not (recorded as a sample).
    async fn open(&self, seed: &mut u64) -> Option<Live> {
        let t = Instant::now();
        let t_ms = self.now();
        let port = self.rec.port_of(&self.target.service);
        let Some((port, addr)) = port.and_then(|p| self.ports.addr(p).map(|a| (p, a))) else {
            self.sample(t_ms, None, Outcome::NoPort, None, t);
            return None;
        };
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                          "params": crate::stub::initialize_params()});
        let headers = Self::headers(None);
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = crate::http::send(
            addr,
            Method::POST,
            "/mcp",
            &h,
            Bytes::from(init.to_string()),
            PROBE_TIMEOUT,
        )
        .await;
        let reply = match r {
            Ok(r) => r,
            Err(e) => {
                self.sample(t_ms, Some(port), outcome_of(&e), None, t);
                return None;
            }
        };
        let sid = reply.header(SESSION_HEADER).map(str::to_string);
        let name = answer_in(&reply, 1).ok().and_then(|v| {
            v["result"]["serverInfo"]["name"]
                .as_str()
                .map(str::to_string)
        });
        let (Some(sid), Some(name), 200) = (sid, name, reply.status) else {
            self.sample(t_ms, Some(port), Outcome::Error, None, t);
            return None;
        };
        if name != self.target.server {
            self.sample(t_ms, Some(port), Outcome::Wrong, Some(name), t);
            return None;
        }
        self.sample(t_ms, Some(port), Outcome::Ok, Some(name.clone()), t);
        let n = self.numbers.fetch_add(1, Ordering::Relaxed);
        self.metrics.session("started");
        self.record(self.event(n, Op::Initialize, false, Got::Answered, None));
        let mut conn = KeepAlive::new(addr);
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let headers = Self::headers(Some(&sid));
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let _ = conn
            .send(
                Method::POST,
                "/mcp",
                &h,
                Bytes::from(note.to_string()),
                PROBE_TIMEOUT,
            )
            .await;
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let life = LIFE.0 + ((*seed >> 33) % u64::from(LIFE.1 - LIFE.0)) as u32;
        let stream = tokio::spawn(self.clone().stream(n, addr, sid.clone()));
        Some(Live {
            n,
            sid,
            addr,
            port,
            server: name,
            requests: 0,
            life,
            conn,
            stream,
        })
    }

    /// One request of a live session. Returns false when the session ended.
    async fn step(&self, l: &mut Live) -> bool {
        if l.requests >= l.life {
            self.end(l).await;
            return false;
        }
        let op = match l.requests % 3 {
            1 => Op::Ping,
            _ => Op::Call,
        };
        let reused = !l.requests.is_multiple_of(3);
        l.requests += 1;
        let id = u64::from(l.requests) + 1;
        let msg = match op {
            Op::Ping => json!({"jsonrpc": "2.0", "id": id, "method": "ping"}),
            _ => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                        "params": {"name": self.target.tool, "arguments": self.target.arguments}}),
        };
        let t = Instant::now();
        let t_ms = self.now();
        let headers = Self::headers(Some(&l.sid));
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = Bytes::from(msg.to_string());
        let r = if reused {
            l.conn
                .send(Method::POST, "/mcp", &h, body, PROBE_TIMEOUT)
                .await
                .map(|(r, _)| r)
        } else {
            crate::http::send(l.addr, Method::POST, "/mcp", &h, body, PROBE_TIMEOUT).await
        };
        let mut ev = self.event(l.n, op, reused, Got::Failed, None);
        let (outcome, alive) = match r {
            Err(e) => {
                ev.detail = Some(e.to_string());
                (outcome_of(&e), true)
            }
            Ok(reply) if reply.status == 404 => {
                ev.reply = Got::NotFound;
                ev.detail = Some(reply.text().chars().take(200).collect());
                (Outcome::Error, false)
            }
            Ok(reply) if reply.status != 200 => {
                ev.detail = Some(format!(
                    "HTTP {}: {}",
                    reply.status,
                    reply.text().chars().take(200).collect::<String>()
                ));
                (Outcome::Error, true)
            }
            Ok(reply) => match answer_in(&reply, id) {
                Ok(v) if v.get("result").is_some() => {
                    ev.reply = Got::Answered;
                    ev.replica = Replica::from_identity(&v["result"]["structuredContent"]);
                    (Outcome::Ok, true)
                }
                Ok(v) => {
                    ev.detail = Some(format!("JSON-RPC error: {}", v["error"]));
                    (Outcome::Error, true)
                }
                Err(e) => {
                    ev.detail = Some(e);
                    (Outcome::Error, true)
                }
            },
        };
        self.record(ev);
        let server = (outcome == Outcome::Ok).then(|| l.server.clone());
        self.sample(t_ms, Some(l.port), outcome, server, t);
        if !alive {
            self.metrics.session("lost");
        }
        alive
    }

    /// The client ends the session with `DELETE`.
    async fn end(&self, l: &mut Live) {
        l.stream.abort();
        let headers = [(SESSION_HEADER, l.sid.as_str())];
        let r = l
            .conn
            .send(
                Method::DELETE,
                "/mcp",
                &headers,
                Bytes::new(),
                PROBE_TIMEOUT,
            )
            .await;
        let mut ev = self.event(l.n, Op::Delete, true, Got::Failed, None);
        match r {
            Ok((reply, _)) if matches!(reply.status, 200 | 202 | 204) => {
                ev.reply = Got::Answered;
            }
            Ok((reply, _)) if reply.status == 404 => ev.reply = Got::NotFound,
            Ok((reply, _)) => ev.detail = Some(format!("HTTP {}", reply.status)),
            Err(e) => ev.detail = Some(e.to_string()),
        }
        self.metrics.session(match ev.reply {
            Got::NotFound => "lost",
            _ => "completed",
        });
        self.record(ev);
    }

    /// The session's GET stream, opened again whenever it ends, until the
    /// task is aborted (the session ended). Records who sent each
    /// notification that names its sender, and each end.
    async fn stream(self, n: u64, addr: SocketAddr, sid: String) {
        // Bounded: a session lives at most LIFE.1 requests.
        for _ in 0..1_000 {
            let mut ev = self.event(n, Op::Stream, false, Got::Failed, None);
            match self.stream_once(n, addr, &sid).await {
                Ok(404) => ev.reply = Got::NotFound,
                Ok(status) => ev.detail = Some(format!("stream ended (HTTP {status})")),
                Err(e) => ev.detail = Some(format!("stream ended: {e}")),
            }
            ev.t_ms = self.now();
            let gone = ev.reply == Got::NotFound;
            self.record(ev);
            if gone {
                return;
            }
            tokio::time::sleep(STREAM_RETRY).await;
        }
    }

    /// One GET stream, read until it ends; the HTTP status it had.
    async fn stream_once(&self, n: u64, addr: SocketAddr, sid: &str) -> Result<u16, String> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::builder()
                .method(Method::GET)
                .uri("/mcp")
                .header(hyper::header::HOST, addr.to_string())
                .header("Accept", "text/event-stream")
                .header(SESSION_HEADER, sid)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((resp, driver))
        };
        let (resp, driver) = tokio::time::timeout(PROBE_TIMEOUT, connect)
            .await
            .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))??;
        let status = resp.status().as_u16();
        if status != 200 {
            driver.abort();
            return Ok(status);
        }
        let mut body = resp.into_body();
        let mut buf = String::new();
        // Bounded by the session's life (the task is aborted with it).
        let r = loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.push_str(&String::from_utf8_lossy(&data));
                        while let Some(end) = buf.find("\n\n") {
                            let event: String = buf.drain(..end + 2).collect();
                            self.note(n, &event);
                        }
                    }
                }
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(status),
            }
        };
        driver.abort();
        r
    }

    /// A notification on the stream that names its sender.
    fn note(&self, n: u64, event: &str) {
        for data in sse_data(event) {
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(r) = Replica::from_identity(&v["params"]["data"]) {
                self.record(self.event(n, Op::Stream, false, Got::Answered, Some(r)));
            }
        }
    }
}

/// Keeps [`SESSIONS_PER_SERVICE`] sessions with every target, one request
/// per session every `every`, until `stop` fires; then ends them.
pub async fn run_sessions(
    rec: Recorder,
    targets: Vec<SessionTarget>,
    ports: PortMap,
    start: Instant,
    every: Duration,
    metrics: HarnessMetrics,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let numbers = Arc::new(AtomicU64::new(1));
    let mut set = tokio::task::JoinSet::new();
    for (i, target) in targets.into_iter().enumerate() {
        let ctx = Ctx {
            rec: rec.clone(),
            ports: ports.clone(),
            start,
            metrics: metrics.clone(),
            target: Arc::new(target),
            numbers: numbers.clone(),
        };
        set.spawn(service_loop(ctx, every, i as u64, stop.clone()));
    }
    while set.join_next().await.is_some() {}
}

async fn service_loop(
    ctx: Ctx,
    every: Duration,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut live: Vec<Live> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: at most one round a tick for at most a day.
    for _ in 0..(86_400_000 / every.as_millis().max(1) as u64) {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        // A service a fault removed for good (service churn) is no longer
        // probed.
        if !ctx.rec.with(|h| h.live.contains(&ctx.target.service)) {
            break;
        }
        if live.len() < SESSIONS_PER_SERVICE
            && let Some(l) = ctx.open(&mut seed).await
        {
            live.push(l);
        }
        let mut kept = Vec::with_capacity(live.len());
        for mut l in live.drain(..) {
            if ctx.step(&mut l).await {
                kept.push(l);
            }
        }
        live = kept;
    }
    for mut l in live {
        ctx.end(&mut l).await;
    }
}

/// The events grouped by session (service, number), each in time order.
pub fn by_session(events: &[SessionEvent]) -> BTreeMap<(String, u64), Vec<&SessionEvent>> {
    let mut m: BTreeMap<(String, u64), Vec<&SessionEvent>> = BTreeMap::new();
    for e in events {
        m.entry((e.service.clone(), e.session)).or_default().push(e);
    }
    for v in m.values_mut() {
        v.sort_by_key(|e| e.t_ms);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_found_in_json_and_in_sse() {
        let mut headers = hyper::HeaderMap::new();
        let json = Reply {
            status: 200,
            headers: headers.clone(),
            body: Bytes::from(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#),
        };
        assert_eq!(answer_in(&json, 3).unwrap()["id"], 3);
        headers.insert("content-type", "text/event-stream".parse().unwrap());
        let sse = Reply {
            status: 200,
            headers,
            body: Bytes::from(
                "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                 event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"ok\":1}}\n\n",
            ),
        };
        assert_eq!(answer_in(&sse, 3).unwrap()["result"]["ok"], 1);
        assert!(answer_in(&sse, 4).is_err());
    }

    #[test]
    fn a_replica_is_read_from_the_stubs_identity() {
        let config = crate::stub::StubConfig::named("docs");
        let r = Replica::from_identity(&config.identity()).expect("identity");
        assert_eq!(r.process, config.process);
        assert_eq!(r.container, config.replica, "no name given: the short id");
        assert_eq!(Replica::from_identity(&json!({"container": "x"})), None);
    }
}
