//! The stub's stateful mode (`MCP_STUB_STATEFUL=1`), which behaves like the
//! MCP SDKs' default streamable-HTTP servers, so the fast stub can stand in
//! for them behind several replicas:
//! - `initialize` without a session creates one and answers with its
//!   `Mcp-Session-Id`; every other request must name a live session: none
//!   is 400, an unknown one 404 (the client must initialize again);
//! - `tools/call` is answered as an SSE stream of one `message` event when
//!   the client accepts `text/event-stream`, as JSON otherwise;
//! - `GET /mcp` opens the session's stream: a `notifications/message` every
//!   `stream_every` (naming the replica and a counter) until the client
//!   goes, the session is deleted or the stub stops;
//! - `DELETE /mcp` ends the session.
//!
//! At most [`MAX_SESSIONS`] live at once; an `initialize` past that gets 503.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use mesh_bridge::contract::mcp::SESSION_HEADER;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Body, StubConfig, codes, empty, error, handle_rpc, json_response, read_body, too_large,
};

/// Most sessions alive at once.
pub const MAX_SESSIONS: usize = 10_000;

/// The live sessions of one stub.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashSet<String>>,
}

impl Sessions {
    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn create(&self) -> Option<String> {
        let mut live = self.live();
        if live.len() >= MAX_SESSIONS {
            return None;
        }
        let id = format!("{:032x}", rand::random::<u128>());
        live.insert(id.clone());
        Some(id)
    }

    fn knows(&self, id: &str) -> bool {
        self.live().contains(id)
    }

    fn end(&self, id: &str) -> bool {
        self.live().remove(id)
    }
}

/// Serves `/mcp` in stateful mode. Like the SDKs' servers, every answer in
/// a known session repeats its `Mcp-Session-Id` (a DELETE's too).
pub(super) async fn handle(config: &StubConfig, req: Request<Incoming>) -> Response<Body> {
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut resp = answer(config, req).await;
    if let Some(id) = session
        && resp.status() != StatusCode::NOT_FOUND
        && !resp.headers().contains_key(SESSION_HEADER)
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

async fn answer(config: &StubConfig, req: Request<Incoming>) -> Response<Body> {
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let accepts_sse = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let sessions = &config.sessions;
    match *req.method() {
        Method::POST => {
            let body = match read_body(req.into_body()).await {
                Ok(Some(body)) => body,
                Ok(None) => return too_large(),
                Err(_) => return rpc_error(StatusCode::BAD_REQUEST, "unreadable body"),
            };
            let delay = config.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let method = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_string));
            let created = match (&session, method.as_deref()) {
                (None, Some("initialize")) => match sessions.create() {
                    Some(id) => Some(id),
                    None => {
                        return rpc_error(StatusCode::SERVICE_UNAVAILABLE, "too many sessions");
                    }
                },
                (None, _) => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        "Bad Request: no Mcp-Session-Id header (initialize first)",
                    );
                }
                (Some(id), _) if !sessions.knows(id) => {
                    return rpc_error(StatusCode::NOT_FOUND, "Session not found");
                }
                (Some(_), _) => None,
            };
            super::pause_for(&body).await;
            let Some(answer) = handle_rpc(config, &body) else {
                return empty(StatusCode::ACCEPTED);
            };
            let mut resp = if accepts_sse && method.as_deref() == Some("tools/call") {
                let event = Bytes::from(format!("event: message\ndata: {answer}\n\n"));
                let mut r = Response::new(http_body_util::Full::new(event).boxed());
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                r
            } else {
                json_response(StatusCode::OK, &answer)
            };
            if let Some(id) = created
                && let Ok(v) = HeaderValue::from_str(&id)
            {
                resp.headers_mut().insert(SESSION_HEADER, v);
            }
            resp
        }
        Method::GET => {
            let Some(id) = session.filter(|id| sessions.knows(id)) else {
                return rpc_error(StatusCode::NOT_FOUND, "Session not found");
            };
            if !accepts_sse {
                return rpc_error(
                    StatusCode::NOT_ACCEPTABLE,
                    "the GET stream needs Accept: text/event-stream",
                );
            }
            stream(config, id)
        }
        Method::DELETE => match session {
            Some(id) if sessions.end(&id) => empty(StatusCode::OK),
            _ => rpc_error(StatusCode::NOT_FOUND, "Session not found"),
        },
        _ => {
            let mut resp = rpc_error(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE");
            resp.headers_mut().insert(
                hyper::header::ALLOW,
                HeaderValue::from_static("POST, GET, DELETE"),
            );
            resp
        }
    }
}

fn rpc_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &error(Value::Null, codes::INVALID_REQUEST, message))
}

/// The session's GET stream: a notification every `stream_every`.
fn stream(config: &StubConfig, id: String) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let every = config.stream_every;
    let identity = config.identity();
    let sessions = std::sync::Arc::clone(&config.sessions);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for n in 0u64.. {
            tick.tick().await;
            if !sessions.knows(&id) {
                break;
            }
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"level": "info", "data": {"replica": identity["replica"], "container": identity["container"], "process": identity["process"], "n": n}},
            });
            // A client that went away (or reads too slowly) ends the stream.
            if tx
                .send(Bytes::from(format!("event: message\ndata: {note}\n\n")))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}

/// A body fed by a channel; ends when the sender does.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
