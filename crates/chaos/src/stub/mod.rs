//! The MCP stub service (docs/DESIGN.md section 3, "MCP stub") and the small client
//! the harness uses to probe it.
//!
//! Server side: JSON-RPC 2.0 over HTTP/1.1 on `POST /mcp` (`initialize`, `ping`,
//! `tools/list`, `tools/call` of `echo`), `GET /healthz`. `initialize` answers
//! with `serverInfo.name` set to the configured name, so a probe can prove which
//! service it reached (invariant I7).
//!
//! Delay mode, for the `net-latency` fault (this kernel has no netem): `PUT
//! /chaos/delay` with a body of milliseconds (0 ends it, at most
//! [`MAX_DELAY_MS`]) makes every later `/mcp` answer wait that long. Only a
//! loopback peer may set it, i.e. `docker exec <replica> mcp-stub --delay MS`
//! ([`set_delay`]); clients coming through the bridge get 403.
//!
//! Client side: [`initialize`] (the one MCP `initialize` the harness and the
//! tests send), [`ping`], [`rpc`] and [`healthz`], each one request through
//! [`crate::http::send`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};

use crate::http::HttpError;

mod stateful;
pub mod stdio;

/// A response body of the stub: whole, or a stream (stateful GET).
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Default listening port (`MCP_STUB_PORT`).
pub const DEFAULT_PORT: u16 = 8080;
/// Default `serverInfo.name` (`MCP_STUB_NAME`).
pub const DEFAULT_NAME: &str = "mcp-stub";
/// The MCP protocol revision the stub speaks.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Largest request body the stub accepts; larger ones get HTTP 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// An oversized body up to this size is still read (and dropped) before the
/// 413, so the client gets the answer rather than a connection reset.
pub const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;
/// How long in-flight connections get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest delay `PUT /chaos/delay` accepts.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Path of the delay control.
pub const DELAY_PATH: &str = "/chaos/delay";

/// JSON-RPC 2.0 error codes used by the stub.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
}

/// What the stub serves.
#[derive(Debug, Clone)]
pub struct StubConfig {
    /// `serverInfo.name` returned by `initialize`.
    pub name: String,
    /// `serverInfo.version` returned by `initialize`.
    pub version: String,
    /// Milliseconds every `/mcp` answer waits (delay mode; 0 = none).
    pub delay_ms: std::sync::Arc<AtomicU64>,
    /// Stateful mode (`MCP_STUB_STATEFUL=1`): sessions, 404 for unknown
    /// ones, SSE answers to `tools/call`, a GET stream of notifications.
    pub stateful: bool,
    /// This replica's identity, returned by the `whoami` tool (`HOSTNAME`,
    /// which Docker sets to the container's short id).
    pub replica: String,
    /// The container's name as its starter knows it (`MCP_STUB_REPLICA`;
    /// default [`Self::replica`]), so a harness can tie an answer to the
    /// container it killed.
    pub container: String,
    /// This process's random id: a restarted container answers with a new
    /// one, so a session that outlived its process is visible.
    pub process: String,
    /// How often the GET stream sends a notification.
    pub stream_every: Duration,
    /// The live sessions (stateful mode).
    pub(crate) sessions: std::sync::Arc<stateful::Sessions>,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            delay_ms: std::sync::Arc::default(),
            stateful: false,
            replica: replica_id(),
            container: String::new(),
            process: format!("{:016x}", rand::random::<u64>()),
            stream_every: Duration::from_secs(1),
            sessions: std::sync::Arc::default(),
        }
    }
}

/// `HOSTNAME` (a container's short id), else a random id.
fn replica_id() -> String {
    match std::env::var("HOSTNAME") {
        Ok(h) if !h.is_empty() => h,
        _ => format!("{:016x}", rand::random::<u64>()),
    }
}

impl StubConfig {
    /// A config with the given `serverInfo.name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Who answers: the container (short id and name) and this process, as
    /// `whoami`'s `structuredContent` and the stream's notifications carry it.
    pub fn identity(&self) -> Value {
        let container = if self.container.is_empty() {
            &self.replica
        } else {
            &self.container
        };
        json!({"replica": self.replica, "container": container, "process": self.process})
    }

    /// The same stub in stateful mode.
    pub fn stateful(mut self) -> Self {
        self.stateful = true;
        self
    }

    /// Reads `MCP_STUB_NAME` (default [`DEFAULT_NAME`]), `MCP_STUB_STATEFUL`
    /// (`1` for stateful mode), `MCP_STUB_STREAM_MS` (the GET stream's
    /// pace, default 1000) and `MCP_STUB_REPLICA` (the container's name).
    pub fn from_env() -> Result<Self, StubError> {
        let mut c = match std::env::var("MCP_STUB_NAME") {
            Ok(name) if !name.is_empty() => Self::named(name),
            _ => Self::default(),
        };
        if let Ok(name) = std::env::var("MCP_STUB_REPLICA") {
            c.container = name;
        }
        match std::env::var("MCP_STUB_STATEFUL").as_deref() {
            Ok("1") => c.stateful = true,
            Ok("0" | "") | Err(_) => {}
            Ok(other) => {
                return Err(StubError::Config(format!(
                    "MCP_STUB_STATEFUL={other:?}: use 1 (stateful) or 0"
                )));
            }
        }
        if let Ok(raw) = std::env::var("MCP_STUB_STREAM_MS") {
            match raw.trim().parse::<u64>() {
                Ok(ms) if (10..=60_000).contains(&ms) => c.stream_every = Duration::from_millis(ms),
                _ => {
                    return Err(StubError::Config(format!(
                        "MCP_STUB_STREAM_MS={raw:?}: use 10 to 60000 milliseconds"
                    )));
                }
            }
        }
        Ok(c)
    }
}

/// Reads `MCP_STUB_PORT` (default [`DEFAULT_PORT`]).
pub fn port_from_env() -> Result<u16, StubError> {
    match std::env::var("MCP_STUB_PORT") {
        Ok(raw) if !raw.is_empty() => raw.trim().parse::<u16>().map_err(|_| {
            StubError::Config(format!(
                "MCP_STUB_PORT={raw:?} is not a port (expected 1-65535)"
            ))
        }),
        _ => Ok(DEFAULT_PORT),
    }
}

/// Errors of the stub's server and client.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    /// Bad configuration (environment).
    #[error("{0}")]
    Config(String),
    /// No HTTP answer at all (timeout, connect, reset).
    #[error(transparent)]
    Transport(#[from] HttpError),
    /// The server answered with an unexpected HTTP status.
    #[error("{addr} answered HTTP {status}: {body}")]
    Status {
        /// Where the request went.
        addr: SocketAddr,
        /// The status code.
        status: u16,
        /// The start of the body, for the log.
        body: String,
    },
    /// The answer is not the JSON-RPC response expected.
    #[error("bad answer from {addr}: {reason}")]
    Protocol {
        /// Where the request went.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The server answered with a JSON-RPC error object.
    #[error("{addr} answered JSON-RPC error {code}: {message}")]
    Rpc {
        /// Where the request went.
        addr: SocketAddr,
        /// The JSON-RPC error code.
        code: i64,
        /// The error message.
        message: String,
    },
}

// ---------------------------------------------------------------- server ----

/// Binds `0.0.0.0:port` and serves until `shutdown` completes, then drains
/// in-flight connections for up to [`DRAIN_TIMEOUT`].
pub async fn run(
    port: u16,
    config: StubConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await?;
    serve(listener, config, shutdown).await
}

/// Serves the stub on an already bound listener until `shutdown` completes,
/// then stops accepting and gives in-flight connections up to
/// [`DRAIN_TIMEOUT`] to finish.
pub async fn serve(
    listener: TcpListener,
    config: StubConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = std::sync::Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    // Per-connection errors (e.g. the peer reset before accept,
                    // or fd exhaustion): back off briefly, keep serving.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let config = config.clone();
                let mut stop_rx = stop_rx.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        let config = config.clone();
                        async move { Ok::<_, Infallible>(handle(&config, peer, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = async { let _ = stop_rx.wait_for(|stop| *stop).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        conns.abort_all();
    }
    Ok(())
}

/// Routes one HTTP request from `peer`.
async fn handle(config: &StubConfig, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::PUT, DELAY_PATH) => {
            if !peer.ip().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "the delay is set from inside the container (mcp-stub --delay MS)\n",
                );
            }
            let body = match read_body(req.into_body()).await {
                Ok(Some(body)) => body,
                Ok(None) => return too_large(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body\n"),
            };
            match parse_delay(&body) {
                Ok(ms) => {
                    config.delay_ms.store(ms, Ordering::Relaxed);
                    text(StatusCode::OK, format!("{ms}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (_, DELAY_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "use PUT\n"),
        (_, "/mcp") if config.stateful => stateful::handle(config, req).await,
        (&Method::POST, "/mcp") => {
            let declared = req
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > DRAIN_LIMIT_BYTES as u64) {
                // Too big to even read: answer now and close.
                return too_large();
            }
            let body = match read_body(req.into_body()).await {
                Ok(Some(body)) => body,
                // Read (and dropped) in full, so the peer sees the 413
                // instead of a reset from unread data.
                Ok(None) => return too_large(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body\n"),
            };
            let delay = config.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            pause_for(&body).await;
            match handle_rpc(config, &body) {
                Some(answer) => json_response(StatusCode::OK, &answer),
                // A notification: MCP's streamable HTTP says 202, no body.
                None => empty(StatusCode::ACCEPTED),
            }
        }
        // The stub offers no server-initiated SSE stream.
        (_, "/mcp") => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
            resp.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("POST"),
            );
            resp
        }
        (_, "/healthz") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Parses a delay body: whole milliseconds, 0 to [`MAX_DELAY_MS`].
pub fn parse_delay(body: &[u8]) -> Result<u64, String> {
    let raw = String::from_utf8_lossy(body);
    let ms: u64 = raw.trim().parse().map_err(|_| {
        format!(
            "delay {:?} is not a whole number of milliseconds",
            raw.trim()
        )
    })?;
    if ms > MAX_DELAY_MS {
        return Err(format!(
            "delay {ms} ms is over the limit of {MAX_DELAY_MS} ms"
        ));
    }
    Ok(ms)
}

/// Sets the delay of the stub listening on loopback `port` (from inside its
/// container); returns the delay now in force.
pub async fn set_delay(port: u16, ms: u64, timeout: Duration) -> Result<u64, StubError> {
    let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let (status, body) = http_request(
        addr,
        Method::PUT,
        DELAY_PATH,
        Bytes::from(ms.to_string()),
        timeout,
    )
    .await?;
    if status != StatusCode::OK {
        return Err(status_error(addr, status, &body));
    }
    parse_delay(&body).map_err(|reason| StubError::Protocol { addr, reason })
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]. A larger one is read
/// on and dropped up to [`DRAIN_LIMIT_BYTES`] (then `Ok(None)`), past which the
/// read stops with an error.
async fn read_body(mut body: Incoming) -> Result<Option<Bytes>, hyper::Error> {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT_BYTES {
            return Ok(None);
        }
    }
    Ok((seen <= MAX_BODY_BYTES).then(|| Bytes::from(buf)))
}

/// Longest wait the `sleep` tool takes.
pub const MAX_SLEEP_MS: u64 = 10_000;

/// How long a `tools/call` of `sleep` in `body` asks to wait (bounded by
/// [`MAX_SLEEP_MS`]); the servers wait that long before answering.
pub fn requested_sleep(body: &[u8]) -> Option<Duration> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("method")?.as_str()? != "tools/call" || v["params"]["name"] != "sleep" {
        return None;
    }
    let ms = v["params"]["arguments"]["ms"].as_u64()?.min(MAX_SLEEP_MS);
    Some(Duration::from_millis(ms))
}

/// Waits as long as a `sleep` call in `body` asks.
pub async fn pause_for(body: &[u8]) {
    if let Some(d) = requested_sleep(body) {
        tokio::time::sleep(d).await;
    }
}

/// Answers one JSON-RPC 2.0 message. Returns `None` for a notification (a
/// request without `id`), which gets no answer.
pub fn handle_rpc(config: &StubConfig, body: &[u8]) -> Option<Value> {
    let msg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(error(
                Value::Null,
                codes::PARSE_ERROR,
                &format!("parse error: {e}"),
            ));
        }
    };
    let Some(obj) = msg.as_object() else {
        // Batches were removed from MCP in 2025-06-18.
        return Some(error(
            Value::Null,
            codes::INVALID_REQUEST,
            "expected a single JSON-RPC request object",
        ));
    };
    let id = obj.get("id").cloned();
    let id_ok = matches!(
        &id,
        None | Some(Value::String(_)) | Some(Value::Number(_)) | Some(Value::Null)
    );
    let method = obj.get("method").and_then(Value::as_str);
    let (Some(method), true, Some("2.0")) =
        (method, id_ok, obj.get("jsonrpc").and_then(Value::as_str))
    else {
        let id = if id_ok {
            id.unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        return Some(error(
            id,
            codes::INVALID_REQUEST,
            "invalid request: need \"jsonrpc\":\"2.0\", a string \"method\" and a string or number \"id\"",
        ));
    };
    // Notifications (no id) are accepted and never answered.
    let id = id?;
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    Some(match dispatch(config, method, &params) {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => error(id, code, &message),
    })
}

fn dispatch(config: &StubConfig, method: &str, params: &Value) -> Result<Value, (i64, String)> {
    match method {
        "initialize" => Ok(json!({
            "protocolVersion": PROTOCOL_VERSION,
            "serverInfo": {"name": config.name, "version": config.version},
            "capabilities": {"tools": {}},
        })),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({
            "tools": [{
                "name": "echo",
                "description": "Returns its `text` argument unchanged.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "description": "Text to echo back."}},
                    "required": ["text"],
                    "additionalProperties": false,
                },
            }, {
                "name": "sleep",
                "description": "Answers after `ms` milliseconds (at most 10000): a call that is in flight for a while.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}},
                    "required": ["ms"],
                    "additionalProperties": false,
                },
            }, {
                "name": "whoami",
                "description": "Returns which replica answered: its container's short id as text; the id, the container's name and the process's random id as structured content.",
                "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false},
            }],
        })),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str);
            match name {
                Some("echo") => {}
                Some("sleep") => {
                    // The wait itself is the caller's (`requested_sleep`).
                    let ms = params["arguments"]["ms"]
                        .as_u64()
                        .unwrap_or(0)
                        .min(MAX_SLEEP_MS);
                    let text = format!("slept {ms} ms");
                    return Ok(
                        json!({"content": [{"type": "text", "text": text}], "isError": false}),
                    );
                }
                Some("whoami") => {
                    let text = &config.replica;
                    return Ok(json!({
                        "content": [{"type": "text", "text": text}],
                        "structuredContent": config.identity(),
                        "isError": false,
                    }));
                }
                Some(other) => {
                    return Err((codes::INVALID_PARAMS, format!("unknown tool {other:?}")));
                }
                None => return Err((codes::INVALID_PARAMS, "missing tool name".to_owned())),
            }
            let Some(text) = params
                .get("arguments")
                .and_then(|a| a.get("text"))
                .and_then(Value::as_str)
            else {
                return Err((
                    codes::INVALID_PARAMS,
                    "echo needs arguments.text (a string)".to_owned(),
                ));
            };
            Ok(json!({"content": [{"type": "text", "text": text}], "isError": false}))
        }
        other => Err((
            codes::METHOD_NOT_FOUND,
            format!("method not found: {other}"),
        )),
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn too_large() -> Response<Body> {
    let body = error(
        Value::Null,
        codes::INVALID_REQUEST,
        &format!("request body larger than {MAX_BODY_BYTES} bytes"),
    );
    let mut resp = json_response(StatusCode::PAYLOAD_TOO_LARGE, &body);
    // The rest of the body is not read; do not keep the connection.
    resp.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = status;
    resp
}

/// Completes on SIGTERM or SIGINT. As PID 1 in a container the process gets
/// no default signal action, so the stub must install these handlers itself.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    () = ctrl_c => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

// ---------------------------------------------------------------- client ----

/// The `initialize` parameters the harness and the tests send.
pub fn initialize_params() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mesh-chaos", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// The whole `initialize` request (JSON-RPC id 1), for callers that send it
/// themselves (raw sockets, keep-alive load generators).
pub fn initialize_request() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()})
}

/// Sends `initialize` to the stub at `addr` and returns `serverInfo.name`.
pub async fn initialize(addr: SocketAddr, timeout: Duration) -> Result<String, StubError> {
    let result = rpc(addr, "initialize", initialize_params(), timeout).await?;
    result
        .get("serverInfo")
        .and_then(|s| s.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StubError::Protocol {
            addr,
            reason: format!("initialize result has no serverInfo.name: {result}"),
        })
}

/// Sends `ping` to the stub at `addr`; `Ok` when it answered with a result.
pub async fn ping(addr: SocketAddr, timeout: Duration) -> Result<(), StubError> {
    rpc(addr, "ping", json!({}), timeout).await.map(drop)
}

/// `GET /healthz`; `Ok` on HTTP 200.
pub async fn healthz(addr: SocketAddr, timeout: Duration) -> Result<(), StubError> {
    let (status, body) = http_request(addr, Method::GET, "/healthz", Bytes::new(), timeout).await?;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(status_error(addr, status, &body))
    }
}

/// Sends one JSON-RPC request (id 1) to `POST /mcp` and returns its `result`.
pub async fn rpc(
    addr: SocketAddr,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, StubError> {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, body) = http_request(
        addr,
        Method::POST,
        "/mcp",
        Bytes::from(request.to_string()),
        timeout,
    )
    .await?;
    if status != StatusCode::OK {
        return Err(status_error(addr, status, &body));
    }
    let mut answer: Value = serde_json::from_slice(&body).map_err(|e| StubError::Protocol {
        addr,
        reason: format!("answer is not JSON ({e})"),
    })?;
    if let Some(err) = answer.get("error") {
        return Err(StubError::Rpc {
            addr,
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    if answer.get("id") != Some(&json!(1)) {
        return Err(StubError::Protocol {
            addr,
            reason: format!("answer has the wrong id: {answer}"),
        });
    }
    match answer.get_mut("result") {
        Some(result) => Ok(result.take()),
        None => Err(StubError::Protocol {
            addr,
            reason: format!("answer has neither result nor error: {answer}"),
        }),
    }
}

/// One request through [`crate::http::send`]; the status and the body. A
/// body is sent as JSON with the MCP `Accept` header.
async fn http_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), StubError> {
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ]
    };
    let reply = crate::http::send(addr, method, path, headers, body, timeout).await?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, reply.body))
}

fn status_error(addr: SocketAddr, status: StatusCode, body: &[u8]) -> StubError {
    let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    StubError::Status {
        addr,
        status: status.as_u16(),
        body,
    }
}
