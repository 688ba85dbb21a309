//! Connections from one client connection to the replicas its requests go
//! to: kept alive per replica, dialled when none is kept (or the kept one
//! closed), and driven by the client connection's own task.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::CONNECT_TIMEOUT;

/// Connections to replicas kept for one client connection, by replica.
///
/// A client connection's requests reuse its connection to a replica (its
/// session's, in practice), as HAProxy reuses server connections; nothing is
/// shared between client connections, so a client that opens a connection per
/// request dials the replica each time (1 s connect timeout, the next
/// replica on failure). A kept connection that closed is noticed before the
/// request is written and the request goes out on a fresh dial.
/// Never held across an await: a connection is taken out while in use.
///
/// The connections are driven by the client connection's own task
/// ([`super::http::serve`]), not a task each: a request and its answer wake no other task.
pub(super) struct Kept {
    /// By replica address: a few at most (the replicas this client's
    /// sessions live on), so a scan, not a hash per request.
    senders: Mutex<Vec<(SocketAddr, SendRequest<Full<Bytes>>)>>,
    /// A new connection to a replica, for [`super::http::serve`] to drive.
    drive: mpsc::UnboundedSender<Driven>,
}

impl Kept {
    /// None kept yet; the receiver gets each new connection, to drive.
    pub(super) fn new() -> (Kept, mpsc::UnboundedReceiver<Driven>) {
        let (drive, driven) = mpsc::unbounded_channel();
        let kept = Kept {
            senders: Mutex::default(),
            drive,
        };
        (kept, driven)
    }
}

/// A connection to a replica: ends when its sender is dropped (with its
/// client connection) or the replica closes.
pub(super) type Driven = futures_util::future::BoxFuture<'static, ()>;

/// Why a request got no answer from a replica.
pub(super) enum SendError {
    /// The replica could not be dialled (refused, reset, no answer in time):
    /// the request was not sent and comes back; another replica may take it.
    Connect(String, Box<Request<Full<Bytes>>>),
    /// The request went out and the exchange failed.
    Failed(hyper::Error),
}

/// Dials `addr` and hands the connection to hyper's HTTP/1.1 client, driven
/// by `kept`'s client connection.
async fn dial(kept: &Kept, addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driven: Driven = Box::pin(async move {
        let _ = conn.await;
    });
    kept.drive
        .send(driven)
        .map_err(|_| "the client connection ended".to_string())?;
    Ok(sender)
}

/// Sends `req` to `addr` on the kept connection, or a fresh one.
pub(super) async fn send(
    kept: &Kept,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, SendError> {
    let mut req = req;
    let cached = {
        let mut senders = kept.senders.lock().unwrap_or_else(PoisonError::into_inner);
        let at = senders.iter().position(|(a, _)| *a == addr);
        at.map(|i| senders.swap_remove(i).1)
    };
    if let Some(mut s) = cached
        && s.ready().await.is_ok()
    {
        match s.try_send_request(req).await {
            Ok(resp) => {
                keep(kept, addr, s);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                // Closed before the request was written: dial afresh.
                Some(back) => req = back,
                None => return Err(SendError::Failed(e.into_error())),
            },
        }
    }
    let mut s = match dial(kept, addr).await {
        Ok(s) => s,
        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
    };
    let resp = s.send_request(req).await.map_err(SendError::Failed)?;
    keep(kept, addr, s);
    Ok(resp)
}

/// Keeps `s` for the next request to `addr` (it was taken out, or is new).
fn keep(kept: &Kept, addr: SocketAddr, s: SendRequest<Full<Bytes>>) {
    let mut senders = kept.senders.lock().unwrap_or_else(PoisonError::into_inner);
    senders.retain(|(a, _)| *a != addr);
    senders.push((addr, s));
}
