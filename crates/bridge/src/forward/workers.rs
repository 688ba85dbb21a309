//! The threads that serve accepted connections: one single-threaded tokio
//! runtime per core, each connection on the one with the fewest.
//!
//! A connection's whole request path (the client's HTTP connection, the
//! connections to replicas, their tasks) then stays on one thread: a request
//! wakes no other thread and no task is stolen half-way. On the bridge's own
//! multi-threaded runtime every request woke the other worker (a task woken
//! while it ran is requeued and a parked worker is told), about one context
//! switch per request; P7 measured 38 us of CPU per `tools/call` there
//! against 32 us on one thread.
//!
//! The accept loops stay on the bridge's runtime and hand each accepted
//! socket over. The runtimes live as long as their [`Workers`] (the
//! forwarder): what a connection spawns (a `stdio` process's tasks, a Docker
//! attach) runs on through the forwarder's shutdown, as on the bridge's own
//! runtime, and ends when the forwarder is dropped. Should no thread start
//! (out of threads or memory), connections are served on the caller's runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// The connection-serving threads of one forwarder, started on first use.
pub(super) struct Workers {
    count: usize,
    started: OnceLock<Vec<Worker>>,
    /// Ends every thread (its runtime, and whatever still runs on it).
    stop: CancellationToken,
}

struct Worker {
    handle: Handle,
    /// Connections it serves now.
    load: Arc<AtomicUsize>,
}

impl Workers {
    /// `count` threads (at least one), one per core by default.
    pub(super) fn new(count: Option<usize>) -> Self {
        let count = count
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .max(1);
        Self {
            count,
            started: OnceLock::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Serves `stream` with `serve` on the least loaded thread, tracked by `tracker`.
    pub(super) fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .threads()
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            tracker.spawn(serve(stream));
            return;
        };
        // The socket leaves this runtime's reactor for the worker's.
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "forward: cannot hand a connection to a worker thread");
                return;
            }
        };
        let load = Arc::clone(&worker.load);
        load.fetch_add(1, Ordering::Relaxed);
        worker.handle.spawn(tracker.track_future(async move {
            let _serving = Serving(load);
            match TcpStream::from_std(std) {
                Ok(stream) => serve(stream).await,
                Err(e) => warn!(error = %e, "forward: a worker thread cannot take a connection"),
            }
        }));
    }

    fn threads(&self) -> &[Worker] {
        self.started.get_or_init(|| {
            (0..self.count)
                .map_while(|i| match self.start(i) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        warn!(error = %e, "forward: cannot start a worker thread; serving on fewer");
                        None
                    }
                })
                .collect()
        })
    }

    fn start(&self, i: usize) -> std::io::Result<Worker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let stop = self.stop.clone();
        std::thread::Builder::new()
            .name(format!("mesh-forward-{i}"))
            .spawn(move || rt.block_on(stop.cancelled()))?;
        Ok(Worker {
            handle,
            load: Arc::default(),
        })
    }
}

impl Drop for Workers {
    /// Ends the threads; what still runs on them is dropped.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts a connection in its thread's load while it is served.
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
