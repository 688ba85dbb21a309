//! The HTTP API on `--listen`: `/metrics`, `/healthz`, `/readyz`, `/v1/pool`,
//! `/v1/services[/{name}]` and the token-guarded `/v1/reservations`.
//!
//! Reads come from the latest [`Snapshot`] the app publishes; mutations are
//! sent to the app as [`Command`]s so that one task owns the pool. Hostile
//! clients are bounded: header read timeout, body size limit, path length
//! limit, connection limit; every error is JSON with a reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::contract::api::{
    ErrorBody, HEALTHZ, METRICS, OPENAPI, OPENAPI_DOCUMENT, POOL, READYZ, REPLICA_PAUSED,
    RESERVATION_PREFIX, RESERVATIONS, Reservation, ReserveRequest, SERVICE_PREFIX, SERVICES,
    ServiceState, ServiceView,
};
use crate::labels;
use crate::metrics::Metrics;
use crate::pool::PoolCounts;
use crate::pool::PoolError;
use crate::reconcile::ReserveError;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;
/// Longest path accepted.
const MAX_PATH: usize = 512;
/// Concurrent connections served; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (line and headers) read.
const MAX_HEADERS: usize = 64 * 1024;

pub use crate::contract::api::PoolView;

impl PoolView {
    /// Builds the view from the pool's counts.
    pub fn new(ranges: Vec<[u16; 2]>, c: PoolCounts, pending: usize) -> Self {
        PoolView {
            ranges,
            capacity: c.capacity,
            in_use: c.in_use,
            quarantined: c.quarantined,
            conflicted: c.conflicted,
            free: c.free,
            pending,
        }
    }
}

/// What the API serves, published by the app after each change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The pool.
    pub pool: PoolView,
    /// Every service.
    pub services: Arc<Vec<ServiceView>>,
    /// Ok when ready, else why not.
    pub ready: Result<(), String>,
}

/// Why the app refused an API mutation; [`CommandError::status`] is the
/// HTTP status it answers with (docs/DESIGN.md section 3.3).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The reconciler refused.
    #[error(transparent)]
    Refused(#[from] ReserveError),
    /// The change was applied in memory but the store could not make it durable.
    #[error(
        "the store is failing: the change is held in memory but not yet durable; see store_errors_total and the log"
    )]
    StoreFailing,
}

impl CommandError {
    /// 404 nothing held, 422 a port outside the ranges, 409 any other
    /// conflict with the pool's state, 503 store failing.
    pub fn status(&self) -> StatusCode {
        match self {
            CommandError::Refused(ReserveError::NotHeld(_)) => StatusCode::NOT_FOUND,
            CommandError::Refused(ReserveError::Pool(PoolError::OutsideRanges { .. })) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            CommandError::Refused(_) => StatusCode::CONFLICT,
            CommandError::StoreFailing => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Reply to a reservation command: (port, already held) or why not.
pub type ReserveReply = Result<(u16, bool), CommandError>;
/// Reply to a release command: the port released or why not.
pub type UnreserveReply = Result<u16, CommandError>;

/// A mutation for the app.
#[derive(Debug)]
pub enum Command {
    /// `POST /v1/reservations`.
    Reserve {
        /// The service.
        service: String,
        /// A specific port, if asked.
        port: Option<u16>,
        /// The answer.
        reply: oneshot::Sender<ReserveReply>,
    },
    /// `DELETE /v1/reservations/{name}`.
    Unreserve {
        /// The service.
        service: String,
        /// The port released, or why not.
        reply: oneshot::Sender<UnreserveReply>,
    },
}

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// For `/metrics`.
    pub metrics: Metrics,
    /// Latest snapshot.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Mutations go here.
    pub commands: mpsc::Sender<Command>,
    /// Bearer token for mutations; None disables them.
    pub token: Option<Arc<str>>,
    /// The forwarder, asked for the live MCP sessions of a service.
    pub forwarder: Option<crate::forward::Forwarder>,
}

type Resp = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// None when the request carries the right token, else the refusal.
fn refuse_unauthorised(state: &ApiState, req: &Request<Incoming>) -> Option<Resp> {
    let Some(token) = &state.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "mutations are disabled: start the bridge with --api-token-file",
        ));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::token::matches(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token from --api-token-file>)",
        ))
    }
}

async fn handle(state: ApiState, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    if path.len() > MAX_PATH {
        return Ok(error(StatusCode::URI_TOO_LONG, "path too long"));
    }
    let snap = state.snapshot.borrow().clone();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let resp = match path.as_str() {
        METRICS if get => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        HEALTHZ if get => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        READYZ if get => match &snap.ready {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not ready", "reason": reason}),
            ),
        },
        OPENAPI if get => {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI_DOCUMENT.as_bytes())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        POOL if get => json(StatusCode::OK, &snap.pool),
        SERVICES if get => json(StatusCode::OK, &*snap.services),
        METRICS | HEALTHZ | READYZ | OPENAPI | POOL | SERVICES => method_not_allowed("GET"),
        RESERVATIONS if req.method() == Method::POST => reserve(&state, req).await,
        RESERVATIONS => method_not_allowed("POST"),
        p => {
            if let Some(name) = p.strip_prefix(SERVICE_PREFIX) {
                if !get {
                    method_not_allowed("GET")
                } else {
                    match snap.services.iter().find(|s| s.name == name) {
                        Some(s) => json(StatusCode::OK, &with_sessions(&state, s)),
                        None => error(StatusCode::NOT_FOUND, format!("no service `{name}`")),
                    }
                }
            } else if let Some(name) = p.strip_prefix(RESERVATION_PREFIX) {
                if req.method() == Method::DELETE {
                    unreserve(&state, &req, name).await
                } else {
                    method_not_allowed("DELETE")
                }
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "no such endpoint; see /v1/pool, /v1/services, /metrics",
                )
            }
        }
    };
    Ok(resp)
}

/// The service's view with each replica's live MCP sessions (HTTP
/// transports: the forwarder counts them; the views do not go stale).
fn with_sessions(state: &ApiState, s: &ServiceView) -> ServiceView {
    let mut s = s.clone();
    let Some(f) = &state.forwarder else {
        return s;
    };
    let counts = f.sessions(&s.name);
    if counts.is_empty() && f.transport(&s.name).is_none_or(|t| !t.is_http()) {
        return s;
    }
    // A paused replica's sessions wait for it: they are still its own.
    for r in s
        .replicas
        .iter_mut()
        .filter(|r| r.is_running() || r.state == REPLICA_PAUSED)
    {
        let key = crate::forward::sessions::key_of(&r.container_id);
        r.sessions = Some(counts.get(&key).copied().unwrap_or(0) as u64);
    }
    s
}

async fn reserve(state: &ApiState, req: Request<Incoming>) -> Resp {
    if let Some(r) = refuse_unauthorised(state, &req) {
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_BODY} bytes or unreadable"),
            );
        }
    };
    let body: ReserveRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"service\": NAME, \"port\": N (optional)}}: {e}"),
            );
        }
    };
    if let Err(e) = labels::validate_service_name(&body.service) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let answer = ask(state, |reply| Command::Reserve {
        service: body.service.clone(),
        port: body.port,
        reply,
    })
    .await;
    match answer {
        Ok(Ok((port, existed))) => json(
            if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            &Reservation {
                service: body.service,
                port,
                state: None,
            },
        ),
        Ok(Err(e)) => error(e.status(), e.to_string()),
        Err(()) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bridge is shutting down",
        ),
    }
}

/// Sends a command to the app and waits for its answer; Err when the app is gone.
async fn ask<T>(
    state: &ApiState,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ()> {
    let (tx, rx) = oneshot::channel();
    state.commands.send(command(tx)).await.map_err(|_| ())?;
    rx.await.map_err(|_| ())
}

async fn unreserve(state: &ApiState, req: &Request<Incoming>, name: &str) -> Resp {
    if let Some(r) = refuse_unauthorised(state, req) {
        return r;
    }
    if let Err(e) = labels::validate_service_name(name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let answer = ask(state, |reply| Command::Unreserve {
        service: name.to_string(),
        reply,
    })
    .await;
    match answer {
        Ok(Ok(port)) => json(
            StatusCode::OK,
            &Reservation {
                service: name.to_string(),
                port,
                state: Some(ServiceState::Quarantined),
            },
        ),
        Ok(Err(e)) => error(e.status(), e.to_string()),
        Err(()) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bridge is shutting down",
        ),
    }
}

/// Serves the API on `listener` until `shutdown`; then finishes in-flight
/// requests (bounded by the caller's overall deadline).
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_failing = false;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => { accept_failing = false; s }
                Err(e) => {
                    if !accept_failing {
                        tracing::warn!(error = %e, "api accept failing");
                        accept_failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let token = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, state, token).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Serves one client connection with the API's bounds until it ends or
/// `shutdown` (then in-flight requests get 2 s).
pub(crate) async fn serve_connection<I>(io: I, state: ApiState, shutdown: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// Errors of the small API client used by `mesh-bridge status`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error("bad API URL `{0}`: use http://HOST:PORT")]
    Url(String),
    /// Could not connect or talk.
    #[error("cannot reach the bridge API at {url}: {reason}")]
    Io {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Non-2xx or invalid JSON.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The body, shortened.
        body: String,
    },
}

/// `GET {base}{path}` and parse its JSON as `T`, with a 5 s deadline.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    base: &str,
    path: &str,
) -> Result<T, ClientError> {
    let hostport = base
        .strip_prefix("http://")
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .ok_or_else(|| ClientError::Url(base.to_string()))?;
    let url = format!("http://{hostport}{path}");
    let io = |e: &dyn std::fmt::Display| ClientError::Io {
        url: url.clone(),
        reason: e.to_string(),
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(hostport)
            .await
            .map_err(|e| io(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", hostport)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| io(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| io(&e))?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Status {
                url: url.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| io(&e))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| io(&"no answer within 5 s"))?
}

/// The address a `TcpListener` for the API binds, for error messages.
pub fn describe_bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("cannot listen on {addr}: another process uses it; pick another --listen")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot listen on {addr}: permission denied; use a port above 1023 or grant CAP_NET_BIND_SERVICE"
        ),
        _ => format!("cannot listen on {addr}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolCounts;

    #[test]
    fn every_refusal_has_the_status_of_its_cause() {
        let refused = |e: ReserveError| CommandError::from(e).status();
        assert_eq!(
            refused(ReserveError::NotHeld("a".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            refused(ReserveError::OwnedByDocker("a".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            refused(ReserveError::Pool(PoolError::Exhausted {
                ranges: "1-2".into(),
                counts: PoolCounts::default(),
            })),
            StatusCode::CONFLICT
        );
        assert_eq!(
            refused(ReserveError::Pool(PoolError::PortTaken {
                port: 1,
                state: "reserved".into(),
            })),
            StatusCode::CONFLICT
        );
        assert_eq!(
            refused(ReserveError::Pool(PoolError::OutsideRanges {
                port: 1,
                ranges: "2-3".into(),
            })),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            CommandError::StoreFailing.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
