//! The `stdio` transport on a mesh port: the bridge itself serves MCP
//! streamable HTTP and hands each message to the replica's process
//! ([`crate::stdio::hub`]).
//!
//! - `POST` without `Mcp-Session-Id` must be one `initialize`: it opens a
//!   session on the running replica with the fewest sessions and is
//!   answered with the session id `K.N-TAG` (`K` the replica, as for the
//!   HTTP transports; `N-TAG` the hub's self-proving token).
//! - `POST` with a session: requests are answered on the POST itself, as
//!   one JSON body (a batch as an array), or as an event stream when a
//!   request asks for progress (`_meta.progressToken`) and the client
//!   accepts `text/event-stream` (its progress, then its answer);
//!   notifications and responses alone get 202.
//! - `GET` with a session: the session's event stream (server
//!   notifications and requests), one GET at a time (a second gets 409);
//!   a comment line every [`KEEPALIVE`] keeps idle proxies from closing it.
//! - `DELETE`: ends the session (its requests are cancelled at the server).
//! - A session whose replica is gone gets 404 (`replica-gone`); a token the
//!   bridge did not issue gets 404 (`unknown`); a replica that exists but
//!   is not attached is waited for up to `--hold`, then 503.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::http::{Body, Pending, error, json_response, session_not_found};
use super::message::SESSION_HEADER;
use super::sessions;
use super::{Inner, ServiceCtx};
use crate::contract::metric::{mcp_method, miss};
use crate::stdio::hub::Replica;
use crate::stdio::mux::SessionId;

/// Comment lines on an idle GET stream, this often.
pub const KEEPALIVE: Duration = Duration::from_secs(25);

/// Messages queued for one POST's answer (its replies and progress).
const ANSWER_QUEUE: usize = 64;

/// JSON-RPC: the body is not JSON.
const PARSE_ERROR: i64 = -32700;

/// Routes one request of a `stdio` service.
pub(super) async fn route(
    inner: &Inner,
    ctx: &ServiceCtx,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let session = parts
        .headers
        .get(&SESSION_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let sse_ok = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    match parts.method {
        Method::POST => {}
        Method::GET | Method::DELETE => {
            let Some(session) = session else {
                return error(StatusCode::BAD_REQUEST, "Mcp-Session-Id is required");
            };
            let (replica, id, client_id) = match find(inner, ctx, &session).await {
                Ok(found) => found,
                Err(resp) => return resp,
            };
            return if parts.method == Method::GET {
                stream(ctx, &replica, id, &client_id)
            } else {
                replica.end(id).await;
                ctx.sessions().end(&client_id);
                ctx.publish_sessions();
                empty(StatusCode::OK)
            };
        }
        _ => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "a stdio service takes POST, GET and DELETE",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
            return r;
        }
    }
    // Each message becomes one line on the server's stdin.
    let limit = inner.stdio.max_message();
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body over {limit} bytes, the bridge's --stdio-max-message for stdio servers"
                ),
            );
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "request body unreadable"),
    };
    let (batch, messages) = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(a)) if !a.is_empty() => (true, a),
        Ok(v @ Value::Object(_)) => (false, vec![v]),
        Ok(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                crate::stdio::mux::code::INVALID_REQUEST,
                "expected a JSON-RPC message or a non-empty batch",
            );
        }
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                &format!("the body is not JSON: {e}"),
            );
        }
    };
    // Counted from the parsed messages (the body is parsed once).
    for m in messages.iter().take(1000) {
        let method = m.get("method").and_then(Value::as_str);
        ctx.metrics.count_request(mcp_method::label(method));
    }
    match session {
        None => initialize(inner, ctx, batch, messages).await,
        Some(session) => match find(inner, ctx, &session).await {
            Ok((replica, id, client_id)) => {
                ctx.sessions()
                    .touch(&client_id, &replica.key, Instant::now());
                post(&replica, id, batch, messages, sse_ok).await
            }
            Err(resp) => resp,
        },
    }
}

/// The replica, multiplexer session and client id a session id names, the
/// replica attached; or the answer to give instead.
async fn find(
    inner: &Inner,
    ctx: &ServiceCtx,
    client_id: &str,
) -> Result<(Replica, SessionId, String), Response<Body>> {
    let Some((key, token)) = sessions::decode(client_id) else {
        ctx.metrics.mcp_miss(miss::UNKNOWN).inc();
        return Err(session_not_found(
            "the session id was not issued by this bridge",
        ));
    };
    let Some(replica) = inner.stdio.replica(key) else {
        ctx.metrics.mcp_miss(miss::REPLICA_GONE).inc();
        ctx.sessions().end(client_id);
        ctx.publish_sessions();
        return Err(session_not_found(
            "the container that served this session is gone; start a new session",
        ));
    };
    if !wait_attached(inner, &replica).await {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session's stdio server is not running; retry later",
        ));
    }
    match replica.session(token).await {
        Ok(id) => Ok((replica, id, client_id.to_string())),
        Err(_) => {
            ctx.metrics.mcp_miss(miss::UNKNOWN).inc();
            Err(session_not_found(
                "the session id was not issued by this bridge",
            ))
        }
    }
}

/// Waits up to the hold for the replica's process to be attached.
async fn wait_attached(inner: &Inner, replica: &Replica) -> bool {
    let mut rx = replica.attached.clone();
    let until = Instant::now() + inner.hold;
    loop {
        if *rx.borrow_and_update() {
            return true;
        }
        tokio::select! {
            () = inner.stop.cancelled() => return false,
            () = tokio::time::sleep_until(until) => return false,
            changed = rx.changed() => if changed.is_err() { return false },
        }
    }
}

/// A POST without a session: an `initialize`, on the least loaded replica.
async fn initialize(
    inner: &Inner,
    ctx: &ServiceCtx,
    batch: bool,
    messages: Vec<Value>,
) -> Response<Body> {
    let is_init = !batch
        && messages.len() == 1
        && messages[0].get("method").and_then(Value::as_str)
            == Some(crate::contract::metric::mcp_method::INITIALIZE)
        && messages[0].get("id").is_some();
    if !is_init {
        return error(
            StatusCode::BAD_REQUEST,
            "no Mcp-Session-Id: the first request of a session must be initialize",
        );
    }
    let Some(endpoints) = ctx.wait_for_endpoints(inner).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no replica of the service is running; retry later",
        );
    };
    let load = ctx.sessions().load();
    let start = ctx
        .cursor
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n = endpoints.upstreams.len();
    let mut order: Vec<(usize, usize)> = (0..n)
        .map(|i| {
            let i = (start + i) % n;
            let k = &endpoints.upstreams[i].key;
            (load.get(k).copied().unwrap_or(0), i)
        })
        .collect();
    // Stable: round robin among equals.
    order.sort_by_key(|(load, _)| *load);
    let Some(replica) = order
        .iter()
        .find_map(|(_, i)| inner.stdio.replica(&endpoints.upstreams[*i].key))
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no replica of the service is attached yet; retry later",
        );
    };
    let _pending = Pending::new(ctx, &replica.key);
    if !wait_attached(inner, &replica).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service's stdio server is not running; retry later",
        );
    }
    let (token, id) = match replica.issue().await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let client_id = sessions::encode(&replica.key, &token);
    let mut resp = post(&replica, id, false, messages, false).await;
    if resp.status().is_success() {
        ctx.sessions()
            .touch(&client_id, &replica.key, Instant::now());
        ctx.publish_sessions();
        if let Ok(v) = HeaderValue::from_str(&client_id) {
            resp.headers_mut().insert(SESSION_HEADER.clone(), v);
        }
    } else {
        replica.end(id).await;
    }
    resp
}

/// Whether a message is a request (a method and an id).
fn is_request(m: &Value) -> bool {
    m.get("method").is_some() && m.get("id").is_some_and(|id| !id.is_null())
}

/// Whether a request asks for progress.
fn wants_progress(m: &Value) -> bool {
    m.pointer("/params/_meta/progressToken").is_some()
}

/// Sends a session's messages and answers the POST.
async fn post(
    replica: &Replica,
    id: SessionId,
    batch: bool,
    messages: Vec<Value>,
    sse_ok: bool,
) -> Response<Body> {
    let requests = messages.iter().filter(|m| is_request(m)).count();
    let stream = sse_ok && messages.iter().any(|m| is_request(m) && wants_progress(m));
    let (tx, rx) = mpsc::channel(ANSWER_QUEUE.max(requests));
    for m in messages {
        let answers = is_request(&m).then(|| tx.clone());
        if replica.handle.send(id, m, answers).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the stdio server is gone");
        }
    }
    drop(tx);
    if requests == 0 {
        return empty(StatusCode::ACCEPTED);
    }
    if stream {
        return events(answers_until(rx, requests));
    }
    let mut replies = Vec::with_capacity(requests);
    let mut rx = rx;
    while replies.len() < requests {
        match rx.recv().await {
            // Progress has nowhere to go in a JSON answer.
            Some(m) if m.get("method").is_some() => {}
            Some(m) => replies.push(m),
            None => break,
        }
    }
    if replies.len() < requests {
        return error(
            StatusCode::BAD_GATEWAY,
            "the stdio server's container went away before it answered",
        );
    }
    let body = if batch {
        Value::Array(replies)
    } else {
        replies.pop().unwrap_or(Value::Null)
    };
    json_response(StatusCode::OK, &body)
}

/// The answers to a POST: messages until `requests` replies came.
fn answers_until(
    rx: mpsc::Receiver<Value>,
    requests: usize,
) -> impl futures_util::Stream<Item = Value> + Send + 'static {
    futures_util::stream::unfold((rx, requests), |(mut rx, left)| async move {
        if left == 0 {
            return None;
        }
        let m = rx.recv().await?;
        let left = if m.get("method").is_some() {
            left
        } else {
            left - 1
        };
        Some((m, (rx, left)))
    })
}

/// The session's GET stream; the receiver goes back when the GET ends.
fn stream(ctx: &ServiceCtx, replica: &Replica, id: SessionId, client_id: &str) -> Response<Body> {
    let Some(rx) = replica.take_stream(id) else {
        return error(
            StatusCode::CONFLICT,
            "another GET holds this session's stream",
        );
    };
    ctx.sessions()
        .touch(client_id, &replica.key, Instant::now());
    let guard = StreamGuard {
        replica: replica.clone(),
        id,
        rx: Some(rx),
    };
    let messages = futures_util::stream::unfold(guard, |mut g| async move {
        let rx = g.rx.as_mut()?;
        match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(m)) => Some((Some(m), g)),
            Ok(None) => None,
            Err(_) => Some((None, g)),
        }
    });
    let frames = messages.map(|m| {
        let bytes = match m {
            Some(m) => event(&m),
            None => Bytes::from_static(b": keep-alive\n\n"),
        };
        Ok::<_, Infallible>(Frame::data(bytes))
    });
    sse_response(body_of(frames))
}

/// A stream that is `Sync` because only `&mut` reaches it (what a boxed
/// response body must be; a stream of async blocks is not `Sync`).
struct SyncStream<S>(std::sync::Mutex<S>);

impl<S: futures_util::Stream + Unpin> futures_util::Stream for SyncStream<S> {
    type Item = S::Item;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::pin::Pin::new(inner).poll_next(cx)
    }
}

/// A response body of `frames`.
fn body_of(
    frames: impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static,
) -> Body {
    let frames = SyncStream(std::sync::Mutex::new(Box::pin(frames)));
    StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed()
}

/// Gives a GET's receiver back to its session when the GET ends.
struct StreamGuard {
    replica: Replica,
    id: SessionId,
    rx: Option<mpsc::Receiver<Value>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.replica.return_stream(self.id, rx);
        }
    }
}

/// One SSE event carrying a JSON-RPC message.
fn event(m: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {m}\n\n"))
}

fn events(messages: impl futures_util::Stream<Item = Value> + Send + 'static) -> Response<Body> {
    let frames = messages.map(|m| Ok::<_, Infallible>(Frame::data(event(&m))));
    sse_response(body_of(frames))
}

fn sse_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}),
    )
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

impl ServiceCtx {
    /// Whether this listener's service speaks stdio.
    pub(super) fn is_stdio(&self) -> bool {
        self.endpoints.borrow().transport == crate::contract::labels::Transport::Stdio
    }
}
