//! The `tcp` transport: each client connection spliced, opaque bytes, to
//! one running replica.
//!
//! For each accepted connection:
//! 1. picks a replica round robin from the service's current endpoints,
//!    replicas that recently failed a dial last (`ejection`: passive outlier
//!    ejection);
//! 2. dials it with a [`CONNECT_TIMEOUT`]; a replica that fails is counted in
//!    `mesh_bridge_forward_upstream_errors_total{service}`, ejected for a
//!    while, and the next one is tried, each replica at most once per round;
//! 3. when no replica is reachable (or none is running) tries again after a
//!    growing pause or when the endpoint set changes, up to `hold` in total,
//!    then closes the client connection;
//! 4. splices client and replica with [`crate::splice::copy_bidirectional`]
//!    (splice(2) through a pipe per direction, TCP_NODELAY on both sides)
//!    until both directions have ended or one fails; an EOF on one side
//!    half-closes the other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::{CONNECT_TIMEOUT, Inner, ServiceCtx};

/// First pause before a refused replica list is tried again within the hold.
const RETRY_MIN: Duration = Duration::from_millis(1);
/// Longest such pause.
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Splices `client` to a replica until either side ends, the hold runs out
/// with no replica reachable, or the forwarder aborts.
pub(super) async fn serve(
    inner: Arc<Inner>,
    mut ctx: ServiceCtx,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let service = Arc::clone(&ctx.name);
    let service = &*service;
    let upstream = tokio::select! {
        biased;
        () = inner.abort.cancelled() => {
            inner.count_aborted();
            return;
        }
        up = pick_upstream(&inner, &mut ctx) => up,
    };
    let Some((mut upstream, replica)) = upstream else {
        debug!(service, %peer, "forward: no replica reachable within hold, closing");
        return;
    };
    debug!(service, %peer, %replica, "forward: spliced");
    tokio::select! {
        biased;
        () = inner.abort.cancelled() => {
            inner.count_aborted();
            debug!(service, %peer, %replica, "forward: aborted at shutdown");
        }
        r = crate::splice::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => debug!(service, %peer, %replica, up, down, "forward: done"),
            Err(e) => debug!(service, %peer, %replica, error = %e, "forward: ended with error"),
        },
    }
}

/// Dials a replica of the service, round robin, waiting up to `hold` for one.
async fn pick_upstream(inner: &Inner, ctx: &mut ServiceCtx) -> Option<(TcpStream, SocketAddr)> {
    let until = Instant::now() + inner.hold;
    // A replica that refuses may be a container still starting: within the
    // hold, try the list again after a growing pause, not only when it changes.
    // The first pauses are short (a refused dial costs microseconds): a client
    // that arrives a moment before the server listens should not wait long
    // (a first pause of 10 ms added ~8 ms to the p50 start-to-answer, P2).
    let mut retry = RETRY_MIN;
    // Each replica's failure is counted once per client connection, retries aside.
    let mut counted: Vec<SocketAddr> = Vec::new();
    loop {
        let endpoints = ctx.endpoints.borrow_and_update().addrs();
        if !endpoints.is_empty() {
            let start = ctx.cursor.fetch_add(1, Ordering::Relaxed);
            let order = ctx.ejections().order(&endpoints, start, Instant::now());
            for addr in order {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            debug!(service = &*ctx.name, %addr, error = %e, "forward: cannot set TCP_NODELAY on replica");
                        }
                        ctx.dial_succeeded(addr);
                        return Some((stream, addr));
                    }
                    Ok(Err(e)) => {
                        ctx.dial_failed(addr, &endpoints, &mut counted);
                        debug!(service = &*ctx.name, %addr, error = %e, "forward: replica unreachable");
                    }
                    Err(_) => {
                        ctx.dial_failed(addr, &endpoints, &mut counted);
                        debug!(service = &*ctx.name, %addr, "forward: replica connect timed out");
                    }
                }
            }
        }
        let again = if endpoints.is_empty() {
            until
        } else {
            let at = (Instant::now() + retry).min(until);
            retry = (retry * 2).min(RETRY_MAX);
            at
        };
        tokio::select! {
            () = inner.stop.cancelled() => return None,
            () = tokio::time::sleep_until(until) => return None,
            () = tokio::time::sleep_until(again), if again < until => {}
            changed = ctx.endpoints.changed() => {
                if changed.is_err() {
                    // The service was closed.
                    return None;
                }
            }
        }
    }
}
