//! The cut-off of HTTP client connections that have no request in progress:
//! idle between keep-alive requests, or sending a request's headers too
//! slowly (a slowloris).
//!
//! hyper's own `header_read_timeout` does this per request: it allocates a
//! timer and registers it in the runtime's timer wheel (under its lock) each
//! time it starts reading a head, drops it when the head is in, and polls
//! the connection once more for it. When the wheel is otherwise empty, as
//! on a worker thread with one client, each registration also wakes the
//! runtime's driver (an eventfd write: one more syscall per request). Without
//! it the bridge's CPU per request in P7 at 32 sessions fell by 2 to 8% in
//! five runs side by side (`perf stat`). Here a connection instead counts its request
//! heads, the ends of their responses and the requests in progress, and a
//! check every [`TICK`] closes it once nothing moved for [`HEADER_TIMEOUT`]:
//! one timer per connection, re-armed every few seconds, and four atomic
//! additions per request.
//!
//! A request is in progress from its head (hyper calls the service) until
//! its response body is written or dropped (`Tracked`), so a response that
//! streams for hours keeps its connection, whatever the client sends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::http::Body;

/// How long a client connection may go without a request in progress
/// (sending a request's headers, or idle between keep-alive requests)
/// before it is closed; closed at most one [`TICK`] later than that.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a connection checks whether it is quiet.
pub const TICK: Duration = Duration::from_secs(5);
/// Quiet checks in a row that close a connection. A check finds the whole
/// interval before it quiet (no head read, no response ended, none in
/// progress), so the quiet time is then at least `QUIET_TICKS * TICK` and
/// less than one more tick.
const QUIET_TICKS: u32 = HEADER_TIMEOUT.as_secs().div_ceil(TICK.as_secs()) as u32;

/// What a client connection's requests did, counted by its service.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Request heads read plus responses ended.
    moves: AtomicUsize,
    /// Requests whose response is not written (or dropped) yet.
    busy: AtomicUsize,
}

impl Activity {
    /// A request head was read: in progress until the returned guard drops
    /// (give it to [`Tracked`] with the response body).
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.moves.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }
}

/// A request in progress; ends when dropped.
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.moves.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in progress until hyper has
/// written it (or dropped it, when the client went away).
pub(super) struct Tracked {
    body: Body,
    _busy: Busy,
}

impl Tracked {
    pub(super) fn new(body: Body, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The quiet checks of one connection.
#[derive(Debug, Default)]
pub(super) struct Quiet {
    moves: usize,
    ticks: u32,
}

impl Quiet {
    /// At a [`TICK`]: true when the connection has been quiet for
    /// [`HEADER_TIMEOUT`] and is to be closed.
    pub(super) fn tick(&mut self, activity: &Activity) -> bool {
        let moves = activity.moves.load(Ordering::Relaxed);
        let busy = activity.busy.load(Ordering::Relaxed);
        if busy > 0 || moves != self.moves {
            self.moves = moves;
            self.ticks = 0;
            return false;
        }
        self.ticks += 1;
        self.ticks >= QUIET_TICKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_timeout_without_a_request_in_progress_closes() {
        let a = Arc::new(Activity::default());
        let mut q = Quiet::default();
        // Never a request: closed at the tick that ends HEADER_TIMEOUT of quiet.
        for _ in 1..QUIET_TICKS {
            assert!(!q.tick(&a));
        }
        assert!(q.tick(&a));

        // A response in progress (a stream) keeps it, however long.
        let mut q = Quiet::default();
        let busy = a.begin();
        for _ in 0..10 * QUIET_TICKS {
            assert!(!q.tick(&a));
        }
        // Once written, the quiet time starts over: the tick after the end
        // does not count, its interval was not quiet throughout.
        drop(busy);
        assert!(!q.tick(&a));
        for _ in 1..QUIET_TICKS {
            assert!(!q.tick(&a));
        }
        // A request begun and finished between two ticks counts too.
        drop(a.begin());
        assert!(!q.tick(&a));
        for _ in 1..QUIET_TICKS {
            assert!(!q.tick(&a));
        }
        assert!(q.tick(&a));
        assert!(TICK * QUIET_TICKS >= HEADER_TIMEOUT);
    }
}
