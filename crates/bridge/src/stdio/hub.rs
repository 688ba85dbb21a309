//! The stdio servers a bridge serves: one [`Handle`] per container of a
//! `stdio` service, kept while the container exists (running or not), and
//! one supervisor task per container that attaches the process whenever it
//! runs.
//!
//! The forwarder tells the hub which containers of a service run and which
//! are only stopped ([`Hub::sync`]). A stopped container keeps its handle,
//! so its client sessions outlive a restart (the new process is initialised
//! again by the multiplexer); a container that is gone loses it, and its
//! sessions get 404. The supervisor attaches when the container runs, waits
//! for the attach to end (the process stopped, or the engine connection
//! broke), and attaches again while the container is said to run, backing
//! off from [`RETRY_MIN`] to [`RETRY_MAX`]; an attach error is logged once
//! per kind, not per try.
//!
//! The client sessions of a process are named by tokens ([`Replica::issue`])
//! that carry their own proof: `N-TAG`, where `TAG` is a SHA-256 digest of
//! the hub's secret, the replica and `N`. A bridge restarted with the same
//! secret (kept in the state directory) recognises a session it never saw
//! and takes it up again ([`Replica::session`]), so sessions go on across a
//! bridge kill -9 with no session table to keep.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::attach::{AttachError, Attached};
use super::mux::SessionId;
use super::process::{Chunk, Config, Durable, Handle, Meters, Output, Resume};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

/// First pause before attaching again after a failed attach.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attach attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// A session without a request (and no GET stream open) for this long is
/// ended, as the HTTP transports' table forgets one.
pub use crate::forward::sessions::IDLE;
/// Most open client sessions of one process.
pub const MAX_SESSIONS: usize = 4096;

/// Hex digits of the digest in a session token.
const TAG_HEX: usize = 32;

/// Attaches a container's process: the Engine API in the daemon
/// ([`bollard::Docker`]); the tests' in-process servers elsewhere.
pub trait Attach: Send + Sync + 'static {
    /// Attaches the running process of `container` (an id or its prefix).
    fn attach<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<Attached, AttachError>>;
}

impl Attach for bollard::Docker {
    fn attach<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<Attached, AttachError>> {
        Box::pin(super::attach::attach(self, container))
    }
}

/// Attaches through the engine at `host` (`--docker-host`, else
/// `DOCKER_HOST` or the local socket), connecting on first use and again
/// after the engine failed a call: a bridge may start before its engine.
#[derive(Debug)]
pub struct Engine {
    host: Option<String>,
    docker: tokio::sync::Mutex<Option<bollard::Docker>>,
}

impl Engine {
    /// The engine at `host`; nothing is connected yet.
    pub fn new(host: Option<String>) -> Engine {
        Engine {
            host,
            docker: tokio::sync::Mutex::new(None),
        }
    }
}

impl Attach for Engine {
    fn attach<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<Attached, AttachError>> {
        Box::pin(async move {
            let docker = {
                let mut d = self.docker.lock().await;
                match &*d {
                    Some(d) => d.clone(),
                    None => {
                        let c =
                            crate::docker::connect(self.host.as_deref())
                                .await
                                .map_err(|e| AttachError::Engine {
                                    container: container.to_string(),
                                    reason: e.to_string(),
                                })?;
                        *d = Some(c.clone());
                        c
                    }
                }
            };
            let r = super::attach::attach(&docker, container).await;
            if matches!(r, Err(AttachError::Docker { .. })) {
                *self.docker.lock().await = None;
            }
            r
        })
    }
}

/// The stdio metric families ([`crate::contract::metric::STDIO`]), one
/// `service` label each; a service's series go when it is forgotten.
#[derive(Debug, Clone)]
pub struct StdioMetrics {
    attaches: IntCounterVec,
    restarts: IntCounterVec,
    in_flight: IntGaugeVec,
    dropped_lines: IntCounterVec,
    stderr_lines: IntCounterVec,
    dropped_messages: IntCounterVec,
}

impl StdioMetrics {
    /// Creates the families and registers them in `registry`.
    ///
    /// # Errors
    /// Fails when a metric of the same name is already registered there.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        use crate::contract::metric::{
            Def, STDIO_ATTACHES, STDIO_DROPPED_LINES, STDIO_DROPPED_MESSAGES, STDIO_IN_FLIGHT,
            STDIO_RESTARTS, STDIO_STDERR_LINES,
        };
        let counter = |d: Def| -> prometheus::Result<IntCounterVec> {
            let v = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let d = STDIO_IN_FLIGHT;
        let in_flight = IntGaugeVec::new(Opts::new(d.name, d.help), d.labels)?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(StdioMetrics {
            attaches: counter(STDIO_ATTACHES)?,
            restarts: counter(STDIO_RESTARTS)?,
            in_flight,
            dropped_lines: counter(STDIO_DROPPED_LINES)?,
            stderr_lines: counter(STDIO_STDERR_LINES)?,
            dropped_messages: counter(STDIO_DROPPED_MESSAGES)?,
        })
    }

    /// The series of `service`.
    pub(crate) fn meters(&self, service: &str) -> Meters {
        Meters {
            attaches: self.attaches.with_label_values(&[service]),
            restarts: self.restarts.with_label_values(&[service]),
            in_flight: self.in_flight.with_label_values(&[service]),
            dropped_lines: self.dropped_lines.with_label_values(&[service]),
            stderr_lines: self.stderr_lines.with_label_values(&[service]),
            dropped_messages: self.dropped_messages.with_label_values(&[service]),
        }
    }

    fn remove(&self, service: &str) {
        // Absent label values are fine: the service may have had no process.
        for v in [
            &self.attaches,
            &self.restarts,
            &self.dropped_lines,
            &self.stderr_lines,
            &self.dropped_messages,
        ] {
            let _ = v.remove_label_values(&[service]);
        }
        let _ = self.in_flight.remove_label_values(&[service]);
    }
}

/// What a bridge keeps about the processes it serves, to go on after its
/// own restart: by replica key, the multiplexer's record.
pub type Kept = HashMap<String, Durable>;

/// A client session of a replica.
#[derive(Debug)]
struct Entry {
    id: SessionId,
    /// The session's stream of pushes, while no GET holds it.
    stream: Option<mpsc::Receiver<Value>>,
    /// Its last request.
    last: Instant,
}

/// The client sessions of one process, by token number.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// When idle sessions were last looked for.
    swept: Option<Instant>,
}

impl Table {
    /// Takes out the sessions idle for [`IDLE`] whose GET stream is not
    /// held (at most once a minute), for the caller to close.
    fn sweep(&mut self, now: Instant) -> Vec<SessionId> {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60))
        {
            return Vec::new();
        }
        self.swept = Some(now);
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let idle = e.stream.is_some() && now.saturating_duration_since(e.last) >= IDLE;
            if idle {
                gone.push(e.id);
            }
            !idle
        });
        gone
    }
}

/// One container of a stdio service.
struct Proc {
    service: Arc<str>,
    handle: Handle,
    running: watch::Sender<bool>,
    attached: watch::Receiver<bool>,
    sessions: Arc<Mutex<Table>>,
    cancel: CancellationToken,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The stdio servers of every service; see the module doc.
pub struct Hub {
    attach: Option<Arc<dyn Attach>>,
    metrics: Option<StdioMetrics>,
    config: Config,
    secret: [u8; 32],
    /// The first bridge id of every process's multiplexer (see [`Resume`]).
    first_id: u64,
    kept: Mutex<Kept>,
    procs: Mutex<HashMap<Arc<str>, Proc>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("attaches", &self.attach.is_some())
            .field("processes", &self.lock().len())
            .finish()
    }
}

/// A replica's process as a request handler holds it.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The replica key (the start of its container id).
    pub key: Arc<str>,
    /// Its process task.
    pub handle: Handle,
    /// Whether an attach is up now.
    pub attached: watch::Receiver<bool>,
    sessions: Arc<Mutex<Table>>,
    secret: [u8; 32],
}

/// Why a session token was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a token this bridge (or one with its secret) issued.
    Unknown,
}

/// Why no session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The process's task has ended (its container is gone).
    #[error("the stdio server is gone")]
    Gone,
    /// The process has [`MAX_SESSIONS`] open.
    #[error(
        "this stdio server has {MAX_SESSIONS} open sessions: end unused ones with DELETE \
         (sessions idle for an hour are ended by the bridge)"
    )]
    Full,
}

impl Hub {
    /// A hub that attaches through `attach` (None: stdio services are
    /// listed but never attached, for a forwarder without an engine),
    /// adding to `metrics` when given. `secret` signs session tokens;
    /// `kept` is what the previous bridge kept (see [`Hub::kept`]).
    pub fn new(
        attach: Option<Arc<dyn Attach>>,
        metrics: Option<StdioMetrics>,
        config: Config,
        secret: [u8; 32],
        kept: Kept,
    ) -> Hub {
        let first_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64 * 1000);
        Hub {
            attach,
            metrics,
            config,
            secret,
            first_id,
            kept: Mutex::new(kept),
            procs: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Proc>> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings `service`'s processes in line with its containers: `running`
    /// and `stopped` replica keys. New ones get a task (going on from what
    /// was kept for them), known ones are told whether they run, and the
    /// service's others are dropped with their sessions.
    pub fn sync(&self, service: &str, running: &[Arc<str>], stopped: &[Arc<str>]) {
        let mut procs = self.lock();
        procs.retain(|key, p| {
            &*p.service != service || running.contains(key) || stopped.contains(key)
        });
        for (key, run) in running
            .iter()
            .map(|k| (k, true))
            .chain(stopped.iter().map(|k| (k, false)))
        {
            match procs.get(key) {
                Some(p) => {
                    p.running
                        .send_if_modified(|r| std::mem::replace(r, run) != run);
                }
                None => {
                    let p = self.spawn(service, key, run);
                    procs.insert(Arc::clone(key), p);
                }
            }
        }
    }

    /// Drops every process of `service`.
    pub fn forget(&self, service: &str) {
        self.lock().retain(|_, p| &*p.service != service);
        if let Some(m) = &self.metrics {
            m.remove(service);
        }
    }

    fn spawn(&self, service: &str, key: &Arc<str>, run: bool) -> Proc {
        let resume = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&**key)
            .map(|durable| Resume {
                durable,
                first_id: self.first_id,
            });
        let meters = self.metrics.as_ref().map(|m| m.meters(service));
        let handle = Handle::spawn_metered(service, self.config, resume, meters);
        let (running, running_rx) = watch::channel(run);
        let (attached_tx, attached) = watch::channel(false);
        let cancel = self.stop.child_token();
        if let Some(attach) = &self.attach {
            tokio::spawn(supervise(Supervisor {
                attach: Arc::clone(attach),
                service: Arc::from(service),
                key: Arc::clone(key),
                handle: handle.clone(),
                running: running_rx,
                attached: attached_tx,
                cancel: cancel.clone(),
            }));
        }
        Proc {
            service: Arc::from(service),
            handle,
            running,
            attached,
            sessions: Arc::default(),
            cancel,
        }
    }

    /// Longest message to or from a process.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    /// The process of replica `key`, while its container exists.
    pub fn replica(&self, key: &str) -> Option<Replica> {
        let procs = self.lock();
        let (k, p) = procs.get_key_value(key)?;
        Some(Replica {
            key: Arc::clone(k),
            handle: p.handle.clone(),
            attached: p.attached.clone(),
            sessions: Arc::clone(&p.sessions),
            secret: self.secret,
        })
    }

    /// What to keep durable now: every process's record, by replica key.
    pub fn kept(&self) -> Kept {
        self.lock()
            .iter()
            .filter_map(|(k, p)| Some((k.to_string(), p.handle.record.borrow().clone()?)))
            .collect()
    }

    /// Open client sessions of each replica of `service`.
    pub fn sessions(&self, service: &str) -> HashMap<Arc<str>, usize> {
        self.lock()
            .iter()
            .filter(|(_, p)| &*p.service == service)
            .map(|(k, p)| {
                let n = p.sessions.lock().unwrap_or_else(PoisonError::into_inner);
                let n = n.entries.len();
                (Arc::clone(k), n)
            })
            .collect()
    }

    /// Ends every supervisor (the processes' tasks end with their handles).
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.lock().clear();
    }
}

/// The digest that proves a session token.
fn tag(secret: &[u8; 32], key: &str, n: u64) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(key.as_bytes());
    h.update(n.to_be_bytes());
    let d = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(TAG_HEX);
    for b in d.iter().take(TAG_HEX / 2) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

impl Replica {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a client session and returns its token. Sessions idle for
    /// [`IDLE`] are ended first; past [`MAX_SESSIONS`] none is opened.
    pub async fn issue(&self) -> Result<(String, SessionId), IssueError> {
        let now = Instant::now();
        let (idle, full) = {
            let mut t = self.table();
            let idle = t.sweep(now);
            (idle, t.entries.len() >= MAX_SESSIONS)
        };
        for id in idle {
            let _ = self.handle.close(id).await;
        }
        if full {
            return Err(IssueError::Full);
        }
        let s = self.handle.open().await.map_err(|_| IssueError::Gone)?;
        // A random number, not the multiplexer's: a restarted bridge's
        // multiplexer counts from 1 again while earlier tokens live on.
        let mut t = self.table();
        let n = loop {
            let n = rand::random::<u64>();
            if !t.entries.contains_key(&n) {
                break n;
            }
        };
        t.entries.insert(
            n,
            Entry {
                id: s.id,
                stream: Some(s.stream),
                last: now,
            },
        );
        Ok((format!("{n}-{}", tag(&self.secret, &self.key, n)), s.id))
    }

    /// The session a token names: known, or issued with this secret before
    /// a bridge restart (then it is opened again under the same number).
    pub async fn session(&self, token: &str) -> Result<SessionId, Refused> {
        let (n, t) = token.split_once('-').ok_or(Refused::Unknown)?;
        let n: u64 = n.parse().map_err(|_| Refused::Unknown)?;
        let good = tag(&self.secret, &self.key, n);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(good.as_bytes(), t.as_bytes())) {
            return Err(Refused::Unknown);
        }
        let now = Instant::now();
        if let Some(e) = self.table().entries.get_mut(&n) {
            e.last = now;
            return Ok(e.id);
        }
        // Issued by an earlier bridge (or ended as idle): a new multiplexer
        // session stands for it under the same token.
        let s = self.handle.open().await.map_err(|_| Refused::Unknown)?;
        let (id, extra) = {
            let mut t = self.table();
            match t.entries.get(&n) {
                // Another request took it up meanwhile.
                Some(e) => (e.id, Some(s.id)),
                None => {
                    t.entries.insert(
                        n,
                        Entry {
                            id: s.id,
                            stream: Some(s.stream),
                            last: now,
                        },
                    );
                    (s.id, None)
                }
            }
        };
        if let Some(extra) = extra {
            let _ = self.handle.close(extra).await;
        }
        Ok(id)
    }

    /// Takes the session's stream of pushes (for a GET); None when another
    /// GET holds it or the session is gone.
    pub fn take_stream(&self, session: SessionId) -> Option<mpsc::Receiver<Value>> {
        let mut t = self.table();
        let (_, e) = t.entries.iter_mut().find(|(_, e)| e.id == session)?;
        e.stream.take()
    }

    /// Gives a stream back when its GET ends.
    pub fn return_stream(&self, session: SessionId, stream: mpsc::Receiver<Value>) {
        let mut t = self.table();
        if let Some((_, e)) = t.entries.iter_mut().find(|(_, e)| e.id == session) {
            e.stream = Some(stream);
            e.last = Instant::now();
        }
    }

    /// Ends a session (a DELETE).
    pub async fn end(&self, session: SessionId) {
        self.table().entries.retain(|_, e| e.id != session);
        let _ = self.handle.close(session).await;
    }
}

/// What one container's supervisor needs.
struct Supervisor {
    attach: Arc<dyn Attach>,
    service: Arc<str>,
    key: Arc<str>,
    handle: Handle,
    running: watch::Receiver<bool>,
    attached: watch::Sender<bool>,
    cancel: CancellationToken,
}

/// The output of one attach, telling `ended` when it is dropped (the
/// process task drops it when it ends or a new attach replaces it).
struct Watched {
    inner: Output,
    _ended: oneshot::Sender<()>,
}

impl Stream for Watched {
    type Item = std::io::Result<Chunk>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Attaches the container whenever it runs, until cancelled.
async fn supervise(mut s: Supervisor) {
    let mut retry = RETRY_MIN;
    let mut reported: Option<String> = None;
    loop {
        // Wait until the container is said to run.
        loop {
            if *s.running.borrow_and_update() {
                break;
            }
            tokio::select! {
                () = s.cancel.cancelled() => return,
                changed = s.running.changed() => if changed.is_err() { return },
            }
        }
        let attached = tokio::select! {
            () = s.cancel.cancelled() => return,
            a = s.attach.attach(&s.key) => a,
        };
        match attached {
            Ok(a) => {
                let (ended_tx, ended) = oneshot::channel();
                let output: Output = Box::pin(Watched {
                    inner: a.output,
                    _ended: ended_tx,
                });
                if s.handle.attach(a.key, a.input, output).await.is_err() {
                    return;
                }
                if reported.take().is_some() {
                    info!(
                        service = &*s.service,
                        replica = &*s.key,
                        "stdio: attached again"
                    );
                }
                s.attached.send_replace(true);
                retry = RETRY_MIN;
                tokio::select! {
                    () = s.cancel.cancelled() => return,
                    _ = ended => {}
                }
                s.attached.send_replace(false);
            }
            Err(e) => {
                let kind = match &e {
                    AttachError::NotRunning { .. } => "not-running",
                    AttachError::NotServable { .. } => "not-servable",
                    AttachError::Docker { .. } | AttachError::Engine { .. } => "docker",
                };
                if reported.as_deref() != Some(kind) {
                    if kind == "not-running" {
                        info!(
                            service = &*s.service,
                            replica = &*s.key,
                            "stdio: waiting for the container to run"
                        );
                    } else {
                        warn!(service = &*s.service, replica = &*s.key, error = %e, "stdio: cannot attach; retrying");
                    }
                    reported = Some(kind.to_string());
                }
                tokio::select! {
                    () = s.cancel.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                    changed = s.running.changed() => if changed.is_err() { return },
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_without_a_get_stream_are_ended_at_most_once_a_minute() {
        let t0 = Instant::now();
        let entry = |id, last, streaming: bool| {
            let (_tx, rx) = mpsc::channel(1);
            Entry {
                id,
                stream: (!streaming).then_some(rx),
                last,
            }
        };
        let mut t = Table::default();
        t.entries.insert(1, entry(11, t0, false));
        t.entries.insert(2, entry(12, t0, true));
        t.entries
            .insert(3, entry(13, t0 + Duration::from_secs(90), false));
        assert!(t.sweep(t0 + IDLE - Duration::from_secs(1)).is_empty());
        assert!(
            t.sweep(t0 + IDLE + Duration::from_secs(10)).is_empty(),
            "not again within a minute"
        );
        assert_eq!(t.sweep(t0 + IDLE + Duration::from_secs(60)), [11]);
        let mut left: Vec<u64> = t.entries.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3], "a held GET stream keeps its session");
    }

    #[test]
    fn a_token_proves_itself_only_for_its_replica_and_secret() {
        let a = tag(&[1; 32], "0123456789ab", 7);
        assert_eq!(a.len(), TAG_HEX);
        assert_eq!(a, tag(&[1; 32], "0123456789ab", 7));
        assert_ne!(a, tag(&[2; 32], "0123456789ab", 7));
        assert_ne!(a, tag(&[1; 32], "0123456789ac", 7));
        assert_ne!(a, tag(&[1; 32], "0123456789ab", 8));
    }
}
