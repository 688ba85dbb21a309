//! One listening socket a reserved port; each connection spliced to a running
//! replica (`tcp`), or each HTTP request routed to one (`streamable-http`,
//! `sse`: see `http`, with MCP sessions pinned to their replica, `sessions`).
//!
//! The [`Forwarder`] owns one TCP listener per service, bound on `--bind-ip` at the
//! port the pool reserved for it. Each listener has its own accept loop task; each
//! accepted connection gets its own task (on a per-core thread of `workers`, but a
//! `stdio` service's) that waits, up to `hold`, until a replica runs (the
//! replicas' endpoints are published by [`Forwarder::set_endpoints`] through a
//! `tokio::sync::watch` channel) and then serves the connection by the replicas'
//! transport: `tcp` splices it to one replica (`tcp`); `streamable-http`, `sse`
//! and `stdio` serve it as HTTP/1.1 and route each request (`http`; a `stdio`
//! replica's requests go to its process, `stdio`). All share the endpoints, the
//! passive outlier ejection of replicas that fail a dial (`ejection`), the hold
//! and the metrics.
//!
//! `mesh_bridge_forward_connections_total{service}` counts accepted connections and
//! `mesh_bridge_forward_active_connections{service}` the ones currently held (a drop
//! guard keeps it right on every exit path, panics and aborts included).
//!
//! A bind that fails because another process listens on the port is reported as
//! [`ForwardError::AddrInUse`]; the caller marks the port conflicted and moves the
//! service. Listeners are bound with tokio's defaults (SO_REUSEADDR on unix), which
//! lets us rebind a port with connections in TIME_WAIT but still fails while any
//! other socket listens there.
//!
//! [`Forwarder::shutdown`] stops every listener, lets in-flight connections finish up
//! to a deadline, and then aborts the rest.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod ejection;
pub(crate) mod http;
pub mod idle;
pub(crate) mod message;
mod metrics;
pub mod sessions;
pub(crate) mod sse;
mod stdio;
mod tcp;
mod upstream;
mod workers;

use crate::stdio::hub::{Hub, Kept};
use crate::stdio::process::Config as StdioConfig;
use ejection::{Change, Ejections};
pub use metrics::ForwardMetrics;
use metrics::ServiceMetrics;
use sessions::Sessions;
use workers::Workers;

pub use crate::contract::labels::Transport;

/// One running replica to forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where to dial it (unspecified for a `stdio` replica, which is
    /// reached through the Docker attach, never dialled).
    pub addr: SocketAddr,
    /// The start of its container id: names it in the session ids clients
    /// see ([`sessions::key_of`]).
    pub key: Arc<str>,
}

impl Upstream {
    /// The replica at `addr` of container `container_id`.
    pub fn new(addr: SocketAddr, container_id: &str) -> Self {
        Self {
            addr,
            key: sessions::key_of(container_id),
        }
    }

    /// The `stdio` replica of container `container_id`.
    pub fn stdio(container_id: &str) -> Self {
        Self::new(SocketAddr::from(([0, 0, 0, 0], 0)), container_id)
    }
}

/// What a service's listener forwards to: its transport and replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoints {
    /// What the replicas speak.
    pub transport: Transport,
    /// The running replicas (empty: none runs).
    pub upstreams: Vec<Upstream>,
    /// The replicas that do not run now but whose MCP sessions wait for
    /// them instead of ending: paused ones, and stopped `stdio` ones
    /// ([`crate::registry::Registry::waiting`]). No new session goes to them.
    pub waiting: Vec<Upstream>,
}

impl Endpoints {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.upstreams.iter().map(|u| u.addr).collect()
    }
}

/// How long one attempt to connect to a replica may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// First pause after an accept error that is not about a single connection (EMFILE...).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between accept attempts while accepting keeps failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long `open` waits for a listener of ours that is closing to release its port.
const RETIRE_WAIT: Duration = Duration::from_secs(2);

/// Why [`Forwarder::open`] could not listen on a port.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Another process (or another socket) listens on the port: mark it conflicted.
    #[error("port {port} is already in use by another listener")]
    AddrInUse {
        /// The port that could not be bound.
        port: u16,
    },
    /// Any other bind failure (permissions, address not available, forwarder shut down...).
    #[error("cannot listen on port {port}")]
    Bind {
        /// The port that could not be bound.
        port: u16,
        /// What the operating system said.
        source: io::Error,
    },
}

/// Handle to the forwarder: cheap to clone, all clones share the same listeners.
///
/// The accept loops run on the tokio runtime and keep the forwarder alive: dropping
/// every handle does not close the listeners. End them with [`Forwarder::shutdown`],
/// by cancelling the token given to [`Forwarder::new`], or with [`Forwarder::close`].
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    bind_ip: IpAddr,
    hold: Duration,
    metrics: ForwardMetrics,
    /// The processes of `stdio` services.
    stdio: Arc<Hub>,
    /// Cancelled by [`Forwarder::shutdown`] or by the caller's shutdown token: stops
    /// every accept loop and every connection still waiting for a replica.
    stop: CancellationToken,
    /// Cancelled when the shutdown deadline passes: ends every connection task.
    abort: CancellationToken,
    /// Connections ended by `abort`.
    aborted: AtomicUsize,
    accept_tasks: TaskTracker,
    conn_tasks: TaskTracker,
    /// The threads accepted connections are served on.
    workers: Workers,
    /// Serialises `open` calls, which await between looking at and changing `state`.
    open_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    services: HashMap<String, Service>,
    /// Listeners of ours that were told to stop, by port; the token is cancelled once
    /// the socket is closed. `open` waits on it before binding that port again.
    retiring: HashMap<u16, CancellationToken>,
}

struct Service {
    endpoints: watch::Sender<Arc<Endpoints>>,
    cursor: Arc<AtomicUsize>,
    ejections: Arc<Mutex<Ejections>>,
    sessions: Arc<Mutex<Sessions>>,
    listener: Option<ListenerHandle>,
}

impl Service {
    fn new() -> Self {
        Self {
            endpoints: watch::Sender::new(Arc::default()),
            cursor: Arc::new(AtomicUsize::new(0)),
            ejections: Arc::default(),
            sessions: Arc::default(),
            listener: None,
        }
    }
}

struct ListenerHandle {
    port: u16,
    cancel: CancellationToken,
    closed: CancellationToken,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection ended by `abort`: counted in what shutdown reports.
    fn count_aborted(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("bind_ip", &self.inner.bind_ip)
            .field("hold", &self.inner.hold)
            .field("listening", &self.listening())
            .field("connections", &self.inner.conn_tasks.len())
            .finish()
    }
}

impl Forwarder {
    /// Creates a forwarder that binds its listeners on `bind_ip`.
    ///
    /// `hold` is how long a connection waits for a reachable replica before it is
    /// closed. Cancelling `shutdown` stops every listener and every waiting
    /// connection, like the first step of [`Forwarder::shutdown`].
    pub fn new(
        bind_ip: IpAddr,
        hold: Duration,
        metrics: ForwardMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let hub = Hub::new(
            None,
            None,
            StdioConfig::default(),
            rand::random(),
            Kept::new(),
        );
        Self::with_stdio(bind_ip, hold, metrics, shutdown, Arc::new(hub))
    }

    /// [`Forwarder::new`] serving `stdio` services through `hub`.
    pub fn with_stdio(
        bind_ip: IpAddr,
        hold: Duration,
        metrics: ForwardMetrics,
        shutdown: CancellationToken,
        hub: Arc<Hub>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                bind_ip,
                hold,
                metrics,
                stdio: hub,
                stop: shutdown.child_token(),
                abort: CancellationToken::new(),
                aborted: AtomicUsize::new(0),
                accept_tasks: TaskTracker::new(),
                conn_tasks: TaskTracker::new(),
                workers: Workers::new(None),
                open_lock: tokio::sync::Mutex::new(()),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Binds the listener for `service` on `port` and starts accepting on it.
    ///
    /// A no-op when the service already listens on that port. When it listened on
    /// another port, that listener is closed first (its socket is released before
    /// the new one is bound; connections already accepted carry on).
    ///
    /// # Errors
    /// [`ForwardError::AddrInUse`] when another process listens on the port (the
    /// caller marks it conflicted and moves the service); [`ForwardError::Bind`] for
    /// any other failure, including a forwarder that was shut down.
    pub async fn open(&self, service: &str, port: u16) -> Result<(), ForwardError> {
        let inner = &self.inner;
        let _serial = inner.open_lock.lock().await;
        if inner.stop.is_cancelled() {
            return Err(ForwardError::Bind {
                port,
                source: io::Error::other("the forwarder is shut down"),
            });
        }

        let mut waits = Vec::new();
        {
            let mut state = inner.state();
            let state = &mut *state;
            if let Some(old) = state
                .services
                .get_mut(service)
                .and_then(|svc| svc.listener.take_if(|l| l.port != port))
            {
                info!(
                    service,
                    old_port = old.port,
                    port,
                    "forward: moving service"
                );
                old.cancel.cancel();
                waits.push(old.closed.clone());
                state.retiring.insert(old.port, old.closed);
            }
            if let Some(l) = state
                .services
                .get(service)
                .and_then(|s| s.listener.as_ref())
            {
                debug_assert_eq!(l.port, port);
                return Ok(());
            }
            state.retiring.retain(|_, closed| !closed.is_cancelled());
            if let Some(closed) = state.retiring.get(&port) {
                waits.push(closed.clone());
            }
        }
        for closed in waits {
            if tokio::time::timeout(RETIRE_WAIT, closed.cancelled())
                .await
                .is_err()
            {
                warn!(
                    service,
                    port, "forward: a closing listener is slow to release its port"
                );
            }
        }

        let addr = SocketAddr::new(inner.bind_ip, port);
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(ForwardError::AddrInUse { port });
            }
            Err(source) => return Err(ForwardError::Bind { port, source }),
        };

        let mut state = inner.state();
        if inner.stop.is_cancelled() {
            return Err(ForwardError::Bind {
                port,
                source: io::Error::other("the forwarder is shut down"),
            });
        }
        let svc = state
            .services
            .entry(service.to_owned())
            .or_insert_with(Service::new);
        let cancel = inner.stop.child_token();
        let closed = CancellationToken::new();
        let ctx = ServiceCtx {
            name: Arc::from(service),
            endpoints: svc.endpoints.subscribe(),
            cursor: Arc::clone(&svc.cursor),
            ejections: Arc::clone(&svc.ejections),
            sessions: Arc::clone(&svc.sessions),
            metrics: inner.metrics.for_service(service),
        };
        svc.listener = Some(ListenerHandle {
            port,
            cancel: cancel.clone(),
            closed: closed.clone(),
        });
        drop(state);

        let bound = Bound {
            listener,
            _closed: closed.drop_guard(),
        };
        inner
            .accept_tasks
            .spawn(accept_loop(Arc::clone(inner), ctx, bound, cancel));
        info!(service, %addr, "forward: listening");
        Ok(())
    }

    /// Sets the transport and the upstream endpoints (running replicas) of a service.
    ///
    /// No replica means none is running: new connections (or requests) then wait up
    /// to `hold` for one. Those already waiting are woken as soon as the set changes;
    /// setting the same set again wakes nobody. The MCP sessions of replicas that
    /// left are no longer counted. May be called before [`Forwarder::open`].
    pub fn set_endpoints(&self, service: &str, endpoints: Endpoints) {
        let mut state = self.inner.state();
        let svc = state
            .services
            .entry(service.to_owned())
            .or_insert_with(Service::new);
        let changed = svc.endpoints.send_if_modified(|current| {
            if **current == endpoints {
                false
            } else {
                *current = Arc::new(endpoints.clone());
                true
            }
        });
        if changed {
            if endpoints.transport == Transport::Stdio {
                let keys =
                    |u: &[Upstream]| u.iter().map(|u| Arc::clone(&u.key)).collect::<Vec<_>>();
                self.inner.stdio.sync(
                    service,
                    &keys(&endpoints.upstreams),
                    &keys(&endpoints.waiting),
                );
            }
            if !endpoints.upstreams.is_empty() {
                let keys: Vec<&str> = endpoints
                    .upstreams
                    .iter()
                    .chain(&endpoints.waiting)
                    .map(|u| &*u.key)
                    .collect();
                let mut s = svc.sessions.lock().unwrap_or_else(PoisonError::into_inner);
                s.keep_replicas(&keys);
                let n = s.len();
                drop(s);
                if svc.listener.is_some() {
                    self.inner
                        .metrics
                        .mcp_sessions
                        .with_label_values(&[service])
                        .set(n as i64);
                }
            }
            debug!(service, ?endpoints, "forward: endpoints changed");
        }
    }

    /// What a service's replicas speak, once one runs.
    pub fn transport(&self, service: &str) -> Option<Transport> {
        let state = self.inner.state();
        let svc = state.services.get(service)?;
        let e = svc.endpoints.borrow();
        (!e.upstreams.is_empty()).then_some(e.transport)
    }

    /// The live MCP sessions of a service per replica key (empty for `tcp`).
    pub fn sessions(&self, service: &str) -> HashMap<Arc<str>, usize> {
        let state = self.inner.state();
        state.services.get(service).map_or_else(HashMap::new, |s| {
            s.sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .per_replica()
        })
    }

    /// Stops listening for a service and forgets it (its endpoints included).
    ///
    /// Connections already spliced finish normally; connections still waiting for a
    /// replica are closed. The service's metric label values are removed. The port is
    /// released as soon as the accept loop notices, which is immediate in practice;
    /// a later [`Forwarder::open`] of that port waits for it.
    pub fn close(&self, service: &str) {
        let mut state = self.inner.state();
        let Some(svc) = state.services.remove(service) else {
            return;
        };
        if let Some(l) = svc.listener {
            l.cancel.cancel();
            state.retiring.insert(l.port, l.closed);
            info!(service, port = l.port, "forward: closed");
        }
        drop(state);
        self.inner.stdio.forget(service);
        self.inner.metrics.remove_service(service);
    }

    /// The services that have a bound listener, with their ports, sorted by name.
    pub fn listening(&self) -> Vec<(String, u16)> {
        let state = self.inner.state();
        let mut out: Vec<(String, u16)> = state
            .services
            .iter()
            .filter_map(|(name, svc)| svc.listener.as_ref().map(|l| (name.clone(), l.port)))
            .collect();
        out.sort();
        out
    }

    /// Stops accepting on every listener, waits for in-flight connections up to
    /// `deadline`, then aborts the rest. Returns how many connections were aborted.
    ///
    /// Connections still waiting for a replica are closed straight away (they are not
    /// counted as aborted). Afterwards [`Forwarder::open`] fails.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        let inner = &self.inner;
        let until = Instant::now() + deadline;
        inner.stop.cancel();
        {
            let mut state = inner.state();
            for svc in state.services.values_mut() {
                svc.listener = None;
            }
        }
        inner.accept_tasks.close();
        inner.conn_tasks.close();
        // Accept loops stop at once; once they are gone no connection can be added.
        let _ = tokio::time::timeout_at(until, inner.accept_tasks.wait()).await;
        let in_flight = inner.conn_tasks.len();
        if tokio::time::timeout_at(until, inner.conn_tasks.wait())
            .await
            .is_err()
        {
            inner.abort.cancel();
            inner.conn_tasks.wait().await;
        }
        inner.stdio.shutdown();
        let aborted = inner.aborted.load(Ordering::Relaxed);
        info!(in_flight, aborted, "forward: shut down");
        aborted
    }
}

/// What a connection task needs to know about its service.
#[derive(Clone)]
struct ServiceCtx {
    name: Arc<str>,
    endpoints: watch::Receiver<Arc<Endpoints>>,
    cursor: Arc<AtomicUsize>,
    ejections: Arc<Mutex<Ejections>>,
    sessions: Arc<Mutex<Sessions>>,
    metrics: ServiceMetrics,
}

impl ServiceCtx {
    fn ejections(&self) -> MutexGuard<'_, Ejections> {
        self.ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A failed dial of `addr`: counted once per client connection (`counted`),
    /// ejected, and logged when that is news.
    fn dial_failed(&self, addr: SocketAddr, current: &[SocketAddr], counted: &mut Vec<SocketAddr>) {
        if !counted.contains(&addr) {
            counted.push(addr);
            self.metrics.upstream_errors.inc();
        }
        let change = self.ejections().failed(addr, Instant::now(), current);
        if let Change::Ejected(d) = change {
            info!(service = &*self.name, %addr, for_ms = d.as_millis() as u64, "forward: replica ejected after a failed dial");
        }
    }

    /// The current endpoints once a replica runs, waiting up to `hold` for
    /// one; `None` when none came (or the forwarder stops).
    async fn wait_for_endpoints(&self, inner: &Inner) -> Option<Arc<Endpoints>> {
        self.wait_for(inner, |now| {
            (!now.upstreams.is_empty()).then(|| Arc::clone(now))
        })
        .await
    }

    /// Watches the endpoints until `settled` gives an answer, for up to `hold`;
    /// `None` when the hold runs out (or the forwarder stops) first.
    async fn wait_for<T>(
        &self,
        inner: &Inner,
        mut settled: impl FnMut(&Arc<Endpoints>) -> Option<T>,
    ) -> Option<T> {
        // Nearly always settled at once: nothing to set up.
        if let Some(answer) = settled(&self.endpoints.borrow()) {
            return Some(answer);
        }
        let mut rx = self.endpoints.clone();
        let until = Instant::now() + inner.hold;
        loop {
            let now = Arc::clone(&rx.borrow_and_update());
            if let Some(answer) = settled(&now) {
                return Some(answer);
            }
            tokio::select! {
                () = inner.stop.cancelled() => return None,
                () = tokio::time::sleep_until(until) => return None,
                changed = rx.changed() => changed.ok()?,
            }
        }
    }

    fn dial_succeeded(&self, addr: SocketAddr) {
        let back = {
            let mut e = self.ejections();
            !e.is_empty() && e.succeeded(addr) == Change::Back
        };
        if back {
            info!(service = &*self.name, %addr, "forward: replica answers again");
        }
    }
}

/// The listener and the token that says it is closed; fields drop in this order, so
/// the socket is closed before anyone waiting on the token is told.
struct Bound {
    listener: TcpListener,
    _closed: DropGuard,
}

/// Keeps `mesh_bridge_forward_active_connections` right: increments when created,
/// decrements when dropped, however the connection task ends.
struct ActiveGuard(IntGauge);

impl ActiveGuard {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accept errors that concern one connection only: keep accepting straight away.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn accept_loop(inner: Arc<Inner>, ctx: ServiceCtx, bound: Bound, cancel: CancellationToken) {
    let service = &*ctx.name;
    let mut failing = false;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = bound.listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failing {
                    info!(service, "forward: accepting again");
                    failing = false;
                    backoff = ACCEPT_BACKOFF_MIN;
                }
                ctx.metrics.connections.inc();
                let active = ActiveGuard::new(ctx.metrics.active.clone());
                let (conn_inner, conn_ctx) = (Arc::clone(&inner), ctx.clone());
                let conn = move |stream| serve(conn_inner, conn_ctx, stream, peer, active);
                if ctx.is_stdio() {
                    // Its requests go to process tasks and Docker attach streams
                    // that every connection shares: served beside them on the
                    // bridge's runtime (on a worker thread P8 lost 10% at one session).
                    inner.conn_tasks.spawn(conn(stream));
                } else {
                    inner.workers.spawn(&inner.conn_tasks, stream, conn);
                }
            }
            Err(e) if is_per_connection(&e) => {
                debug!(service, error = %e, "forward: accept failed for one connection");
            }
            Err(e) => {
                if !failing {
                    warn!(service, error = %e, "forward: accept failing, backing off");
                    failing = true;
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(bound);
    debug!(service, "forward: accept loop ended");
}

async fn serve(
    inner: Arc<Inner>,
    ctx: ServiceCtx,
    client: TcpStream,
    peer: SocketAddr,
    _active: ActiveGuard,
) {
    let service = Arc::clone(&ctx.name);
    let service = &*service;
    if let Err(e) = client.set_nodelay(true) {
        debug!(service, %peer, error = %e, "forward: cannot set TCP_NODELAY on client");
    }
    // What the replicas speak is known once one runs (after a restart the
    // port listens before Docker has been asked): wait for that first.
    let known = tokio::select! {
        biased;
        () = inner.abort.cancelled() => {
            inner.count_aborted();
            return;
        }
        e = ctx.wait_for_endpoints(&inner) => e,
    };
    let Some(known) = known else {
        debug!(service, %peer, "forward: no replica running within hold, closing");
        return;
    };
    if known.transport.is_http() {
        return http::serve(inner, ctx, client).await;
    }
    tcp::serve(inner, ctx, client, peer).await
}
