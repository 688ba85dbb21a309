//! MCP over HTTP on a mesh port: each request routed on its own, a session
//! pinned to the replica that created it (`streamable-http` and `sse`).
//!
//! The client's connection is served by hyper (HTTP/1.1, keep-alive); every
//! request is sent on to the replica chosen for it, on a connection to that
//! replica kept for this client connection (`Kept`), or a fresh dial:
//! - a request that names a session (the `Mcp-Session-Id` header, or the
//!   `session_id` / `sessionId` query parameter of the `sse` transport's
//!   POSTs) goes to the replica the id names ([`super::sessions`]), with the
//!   replica's own id put back; on any connection, new or kept alive;
//! - a request without one (an `initialize`, a GET of the `sse` stream, a
//!   stateless server's calls) goes to the running replica with the fewest
//!   live sessions (round robin among equals, ejected replicas last), and
//!   the next one is tried when a dial fails;
//! - a session whose replica no longer runs gets 404, so the client starts a
//!   new session (the specification's rule); never another replica's answer.
//!   A replica that runs but cannot be reached gets 502 (the session may
//!   live on). A paused replica (`docker pause`) is frozen, not gone: its
//!   sessions' requests wait up to `--hold` for it to be unpaused, then get
//!   503 (the session lives on), and no new session goes to it;
//! - the replica's `Mcp-Session-Id` answer, and the `endpoint` event of an
//!   `sse` stream, carry the id the client must use from then on.
//!
//! Request bodies are read whole (at most [`MAX_BODY`]), to count the
//! JSON-RPC methods and to retry a dial; responses stream frame by frame
//! (event streams, for hours) with hyper's backpressure: a slow client slows
//! only its own response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::idle::{self, Activity, HEADER_TIMEOUT, Quiet, Tracked};
use super::message::{SESSION_HEADER, each_method, session_of, with_session_param};
use super::sessions::{self, Sessions};
use super::sse::EndpointRewrite;
use super::upstream::{Driven, Kept, SendError, send};
use super::{Inner, ServiceCtx, Upstream};
use crate::contract::metric::miss;

/// Largest request body routed; a larger one gets 413.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A response body: the replica's, streamed, or one of ours.
pub(super) type Body = BoxBody<Bytes, hyper::Error>;

/// Serves one client connection until it closes, the forwarder stops
/// (in-flight requests finish, idle keep-alive ends) or aborts.
pub(super) async fn serve(inner: Arc<Inner>, ctx: ServiceCtx, client: TcpStream) {
    let (kept, driven) = Kept::new();
    let activity = Arc::new(Activity::default());
    // One reference per request, not a copy of the context's many.
    let shared = Arc::new((Arc::clone(&inner), ctx.clone(), kept, Arc::clone(&activity)));
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move {
            let (inner, ctx, kept, activity) = &*shared;
            let busy = activity.begin();
            let answer = route(inner, ctx, kept, req).await;
            Ok::<_, Infallible>(answer.map(|body| Tracked::new(body, busy)))
        }
    });
    // No hyper header timeout: `idle` cuts quiet connections off instead.
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service);
    tokio::pin!(conn);
    let mut upstream = FuturesUnordered::new();
    // The forwarder's stop and abort, the quiet check's tick and each new
    // replica connection, polled only once they fire: a token's future
    // polled on every wake-up of the connection locks the token twice per
    // poll (3% of the bridge's CPU in P7 at 32 sessions), a channel's
    // receive takes two atomic pops.
    let mut signals: FuturesUnordered<futures_util::future::BoxFuture<'static, Signal>> =
        FuturesUnordered::new();
    signals.push(tick());
    signals.push(next_driven(driven));
    let mut quiet = Quiet::default();
    let abort = inner.abort.clone().cancelled_owned();
    let stop = inner.stop.clone().cancelled_owned();
    signals.push(Box::pin(async move {
        abort.await;
        Signal::Abort
    }));
    signals.push(Box::pin(async move {
        stop.await;
        Signal::Stop
    }));
    let name = &*ctx.name;
    loop {
        tokio::select! {
            biased;
            Some(signal) = signals.next() => match signal {
                Signal::Abort => {
                    inner.count_aborted();
                    return;
                }
                // In-flight requests finish; an idle keep-alive ends.
                Signal::Stop => conn.as_mut().graceful_shutdown(),
                Signal::Tick => {
                    if quiet.tick(&activity) {
                        debug!(service = name, "forward: http connection closed, no request for {HEADER_TIMEOUT:?}");
                        return;
                    }
                    signals.push(tick());
                }
                Signal::Driven(c, driven) => {
                    upstream.push(c);
                    signals.push(next_driven(driven));
                }
                // Not while `kept` lives, which is as long as this loop.
                Signal::DrivenEnded => {}
            },
            Some(()) = upstream.next(), if !upstream.is_empty() => {}
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(service = name, error = %e, "forward: http connection ended with error");
                }
                return;
            }
        }
    }
}

/// What the forwarder tells a connection it serves.
enum Signal {
    /// Finish what is in flight, then close.
    Stop,
    /// Close now.
    Abort,
    /// Time to check whether the connection is quiet ([`super::idle`]).
    Tick,
    /// A new connection to a replica to drive, and the receiver of the next.
    Driven(Driven, mpsc::UnboundedReceiver<Driven>),
    /// No more connections to replicas can come.
    DrivenEnded,
}

/// The next connection to a replica that [`Kept`] dials.
fn next_driven(
    mut driven: mpsc::UnboundedReceiver<Driven>,
) -> futures_util::future::BoxFuture<'static, Signal> {
    Box::pin(async move {
        match driven.recv().await {
            Some(c) => Signal::Driven(c, driven),
            None => Signal::DrivenEnded,
        }
    })
}

/// The next quiet check.
fn tick() -> futures_util::future::BoxFuture<'static, Signal> {
    Box::pin(async {
        tokio::time::sleep(idle::TICK).await;
        Signal::Tick
    })
}

/// Where a request goes.
enum Target {
    /// A session: `client_id` is the id the client sent ([`sessions::encode`]d:
    /// the replica `key` created it and knows it as `id`).
    Pinned {
        client_id: String,
        key: std::ops::Range<usize>,
        id: std::ops::Range<usize>,
    },
    /// No session: the least loaded replica.
    Any,
}

impl Target {
    /// The replica's key and its own id of a pinned session.
    fn pinned(&self) -> Option<(&str, &str, &str)> {
        match self {
            Target::Pinned { client_id, key, id } => {
                Some((client_id, &client_id[key.clone()], &client_id[id.clone()]))
            }
            Target::Any => None,
        }
    }
}

/// Where the replica of a session is.
enum Replica {
    /// It runs: send to it.
    Running(Upstream),
    /// It is paused still after the hold (or the bridge stops): 503.
    Waiting,
    /// It is gone, its process with it: 404.
    Gone,
}

/// Replica `key` once it runs, for a request of a session it created:
/// waits up to `hold` while it is [`super::Endpoints::waiting`] (paused).
async fn wait_for_replica(inner: &Inner, ctx: &ServiceCtx, key: &str) -> Replica {
    let found = ctx.wait_for(inner, |now| {
        if let Some(u) = now.upstreams.iter().find(|u| &*u.key == key) {
            Some(Replica::Running(u.clone()))
        } else if now.waiting.iter().any(|u| &*u.key == key) {
            None
        } else {
            Some(Replica::Gone)
        }
    });
    found.await.unwrap_or(Replica::Waiting)
}

async fn route(
    inner: &Inner,
    ctx: &ServiceCtx,
    kept: &Kept,
    req: Request<Incoming>,
) -> Response<Body> {
    let t0 = Instant::now();
    let answer = if ctx.is_stdio() {
        super::stdio::route(inner, ctx, req).await
    } else {
        route_inner(inner, ctx, kept, req).await
    };
    ctx.metrics.mcp_duration.observe(t0.elapsed().as_secs_f64());
    answer
}

async fn route_inner(
    inner: &Inner,
    ctx: &ServiceCtx,
    kept: &Kept,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {MAX_BODY} bytes"),
            );
        }
        Err(e) => {
            debug!(service = &*ctx.name, error = %e, "forward: request body unreadable");
            return error(StatusCode::BAD_REQUEST, "request body unreadable");
        }
    };
    if parts.method == Method::POST {
        each_method(&body, |m| ctx.metrics.count_request(m));
    }
    let (target, via_query) = match session_of(&parts) {
        None => (Target::Any, false),
        Some((client_id, via_query)) => match sessions::decode(&client_id) {
            Some((key, id)) => {
                // `decode` splits the id into a prefix and a suffix.
                let (key, id) = (0..key.len(), client_id.len() - id.len()..client_id.len());
                (Target::Pinned { client_id, key, id }, via_query)
            }
            None => {
                ctx.metrics.mcp_miss(miss::UNKNOWN).inc();
                return session_not_found("the session id was not issued by this bridge");
            }
        },
    };
    let Some(endpoints) = ctx.wait_for_endpoints(inner).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no replica of the service is running; retry later",
        );
    };
    let candidates: Vec<Upstream> = match target.pinned() {
        Some((client_id, key, id)) => match wait_for_replica(inner, ctx, key).await {
            Replica::Running(u) => {
                if via_query {
                    match with_session_param(&parts.uri, id) {
                        Some(uri) => parts.uri = uri,
                        // Never sent on with the client's id in it.
                        None => {
                            return error(
                                StatusCode::URI_TOO_LONG,
                                "the request target is too long once its session parameters \
                                 carry the replica's id; send the session id once",
                            );
                        }
                    }
                } else if let Ok(v) = HeaderValue::from_str(id) {
                    parts.headers.insert(SESSION_HEADER.clone(), v);
                }
                vec![u]
            }
            Replica::Waiting => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the replica that created this session is paused; retry later",
                );
            }
            Replica::Gone => {
                ctx.metrics.mcp_miss(miss::REPLICA_GONE).inc();
                ctx.sessions().end(client_id);
                ctx.publish_sessions();
                return session_not_found(
                    "the replica that created this session is gone; start a new session",
                );
            }
        },
        None => ctx.order_by_sessions(&endpoints.upstreams),
    };
    strip_hop_by_hop(&mut parts.headers);
    // Origin form (what clients send) goes on as it is; an absolute URI
    // loses its scheme and authority.
    if parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        match Uri::try_from(path) {
            Ok(u) => parts.uri = u,
            Err(_) => return error(StatusCode::BAD_REQUEST, "request target is not a valid URI"),
        }
    }
    let method = parts.method.clone();
    let mut out = Request::from_parts(parts, Full::new(body));
    let mut counted = Vec::new();
    let client_id = target.pinned().map(|(client_id, _, _)| client_id);
    for up in candidates {
        let pending = client_id.is_none().then(|| Pending::new(ctx, &up.key));
        let sent = send(kept, up.addr, out).await;
        drop(pending);
        match sent {
            Ok(resp) => {
                ctx.dial_succeeded(up.addr);
                return answer(ctx, &method, &up, client_id, resp);
            }
            Err(SendError::Connect(e, back)) => {
                out = *back;
                ctx.dial_failed(up.addr, &endpoints.addrs(), &mut counted);
                debug!(service = &*ctx.name, addr = %up.addr, error = %e, "forward: replica unreachable");
            }
            Err(SendError::Failed(e)) => {
                debug!(service = &*ctx.name, addr = %up.addr, error = %e, "forward: replica failed the request");
                return error(StatusCode::BAD_GATEWAY, "the replica failed the request");
            }
        }
    }
    error(
        StatusCode::BAD_GATEWAY,
        "no replica of the service could be reached; retry later",
    )
}

/// Turns the replica's response into the client's: session ids rewritten,
/// the session table kept, the body streamed.
fn answer(
    ctx: &ServiceCtx,
    method: &Method,
    up: &Upstream,
    client_id: Option<&str>,
    resp: Response<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let now = Instant::now();
    // What the replica calls the session, as the client must see it.
    let issued = parts
        .headers
        .get(&SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|id| sessions::encode(&up.key, id));
    let mut table = ctx.sessions();
    if let Some(client_id) = client_id {
        let status = parts.status;
        if status == StatusCode::NOT_FOUND {
            ctx.metrics.mcp_miss(miss::EXPIRED).inc();
            table.end(client_id);
        } else if method == Method::DELETE && status.is_success() {
            table.end(client_id);
        } else {
            table.touch(client_id, &up.key, now);
        }
    }
    if let Some(mine) = issued
        && let Ok(v) = HeaderValue::from_str(&mine)
    {
        parts.headers.insert(SESSION_HEADER.clone(), v);
        // A new session; servers also repeat the id of an existing one
        // (on a DELETE's answer too), which must not bring it back.
        if client_id.is_none() && parts.status.is_success() {
            table.touch(&mine, &up.key, now);
        }
    }
    ctx.metrics.mcp_sessions.set(table.len() as i64);
    drop(table);
    let is_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body: Body = if is_stream && method == Method::GET && client_id.is_none() {
        // Perhaps the `sse` transport's stream: its `endpoint` event names
        // the session, which must name the replica too.
        let rewrite = EndpointRewrite::new(Arc::clone(&up.key), ctx.clone());
        rewrite.wrap(body)
    } else {
        body.boxed()
    };
    Response::from_parts(parts, body)
}

/// A session-less request in flight to one replica, counted in the balance
/// until its answer (or failure), however the routing ends (the `stdio`
/// transport's `initialize` too).
pub(super) struct Pending<'a> {
    ctx: &'a ServiceCtx,
    key: Arc<str>,
}

impl<'a> Pending<'a> {
    pub(super) fn new(ctx: &'a ServiceCtx, key: &Arc<str>) -> Self {
        ctx.sessions().begin(key);
        Pending {
            ctx,
            key: Arc::clone(key),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.ctx.sessions().finish(&self.key);
    }
}

/// Headers that belong to one hop (RFC 9110 section 7.6.1), not the message.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the headers finds them: most messages carry none, and
    // removing each name blindly hashed it (16 removals per request were 3%
    // of the bridge's instructions in P7).
    let mut hop: Vec<HeaderName> = Vec::new();
    for (name, value) in h.iter() {
        if is_hop_by_hop(name) {
            hop.push(name.clone());
        }
        if name == header::CONNECTION {
            let listed = value.to_str().unwrap_or("").split(',');
            hop.extend(listed.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()));
        }
    }
    for name in hop {
        h.remove(name);
    }
}

/// Whether `name` is hop-by-hop wherever it appears (a header the
/// `Connection` header lists is one too). Matching the text measured
/// fewer instructions than comparing with `http`'s constant names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// A JSON-RPC error answer of ours (id null: we did not read the request).
pub(super) fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32000, "message": message},
    });
    json_response(status, &body)
}

/// `body` as a JSON answer with `status`.
pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 404 for a session the bridge cannot route: the client starts anew.
pub(super) fn session_not_found(message: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, message)
}

impl ServiceCtx {
    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the session gauge.
    pub(super) fn publish_sessions(&self) {
        let n = self.sessions().len();
        self.metrics.mcp_sessions.set(n as i64);
    }

    /// The replicas in the order to try for a new session: healthy first,
    /// fewest live sessions first, round robin among equals.
    fn order_by_sessions(&self, upstreams: &[Upstream]) -> Vec<Upstream> {
        let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
        let start = self
            .cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let order = self.ejections().order(&addrs, start, now);
        let counts = self.sessions().load();
        let ejections = self.ejections();
        let mut out: Vec<(bool, usize, Upstream)> = order
            .into_iter()
            .filter_map(|a| upstreams.iter().find(|u| u.addr == a).cloned())
            .map(|u| {
                let n = counts.get(&u.key).copied().unwrap_or(0);
                (ejections.is_ejected(u.addr, now), n, u)
            })
            .collect();
        drop(ejections);
        out.sort_by_key(|(ejected, n, _)| (*ejected, *n));
        out.into_iter().map(|(_, _, u)| u).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(SESSION_HEADER.clone(), HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(&SESSION_HEADER));
    }

    #[test]
    fn a_hop_by_hop_header_goes_without_a_connection_header_naming_it() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} stayed");
            assert_eq!(h.len(), 1, "{name}: the message's header went too");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "no hop-by-hop header: all stay");
    }
}
