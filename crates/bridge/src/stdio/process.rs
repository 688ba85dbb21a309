//! One stdio server driven by its multiplexer: a task that owns the
//! [`Mux`], writes the server's stdin ([`Stdin`]), reads its stdout through
//! the [`Framer`], and hands each session what is its own.
//!
//! Nothing waits on a client: answers go to the waiting request's bounded
//! channel and pushes to the session's bounded stream with `try_send`, so a
//! slow or stuck client loses its own messages (counted in [`Stats`]) and
//! never stalls the server or another session. Writing to the server goes
//! through a bounded queue written from this task's own loop as the pipe
//! takes it, so a server that stops reading stdin makes new requests fail
//! fast instead of stopping stdout reads, and a request reaches stdin with
//! no hop to another task.
//!
//! The caller attaches the process ([`Handle::attach`]) with a key naming
//! the process (the container's start time): a new key means a new process
//! ([`Mux::restarted`]), the same key a re-attach to the one still running
//! ([`Mux::lost_answers`] when the old attach broke).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::framing::{Framer, Line};
use super::mux::{InitRecord, Limits, Mux, Out, SessionId};
use super::stdin::Stdin;

/// What a server writes: stdout carries the protocol, stderr its log.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Bytes of stdout.
    Stdout(Bytes),
    /// Bytes of stderr.
    Stderr(Bytes),
}

/// The server's output, as the attach delivers it.
pub type Output = Pin<Box<dyn Stream<Item = std::io::Result<Chunk>> + Send>>;
/// The server's stdin.
pub type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// Bounds of one process.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The multiplexer's bounds.
    pub limits: Limits,
    /// Longest line read from stdout.
    pub max_message: usize,
    /// Lines queued for stdin.
    pub stdin_queue: usize,
    /// Messages queued on a session's stream.
    pub stream_queue: usize,
    /// Most stderr lines logged per minute (the rest are only counted).
    pub stderr_per_minute: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_message: super::framing::DEFAULT_MAX_MESSAGE,
            stdin_queue: 256,
            stream_queue: 64,
            stderr_per_minute: 60,
        }
    }
}

/// Counters of one process, shared with the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Attaches (the first and every re-attach).
    pub attaches: AtomicU64,
    /// New processes seen (a changed process key).
    pub restarts: AtomicU64,
    /// stdout lines that were not JSON-RPC, or too long.
    pub dropped_lines: AtomicU64,
    /// stderr lines.
    pub stderr_lines: AtomicU64,
    /// Messages a session's client was too slow to take.
    pub dropped_pushes: AtomicU64,
    /// Lines for stdin that could not be queued (not attached, or full).
    pub unsent_lines: AtomicU64,
    /// Client requests in flight at the server.
    pub in_flight: AtomicU64,
    /// Open sessions.
    pub sessions: AtomicU64,
    /// The service's metrics this process adds to (none in tests).
    pub meters: Option<Meters>,
}

/// One service's stdio metrics ([`crate::contract::metric::STDIO`]), as
/// its processes add to them.
#[derive(Debug, Clone)]
pub struct Meters {
    /// `stdio_attaches_total`.
    pub attaches: prometheus::IntCounter,
    /// `stdio_restarts_total`.
    pub restarts: prometheus::IntCounter,
    /// `stdio_in_flight` (each process adds its own share).
    pub in_flight: prometheus::IntGauge,
    /// `stdio_dropped_lines_total`.
    pub dropped_lines: prometheus::IntCounter,
    /// `stdio_stderr_lines_total`.
    pub stderr_lines: prometheus::IntCounter,
    /// `stdio_dropped_messages_total`.
    pub dropped_messages: prometheus::IntCounter,
}

impl Stats {
    /// Counts one in `field` and in the service's metric `meter`.
    fn count(&self, field: &AtomicU64, meter: impl Fn(&Meters) -> &prometheus::IntCounter) {
        field.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.meters {
            meter(m).inc();
        }
    }

    /// Sets this process's requests in flight, moving the service's gauge
    /// by the difference.
    fn set_in_flight(&self, n: u64) {
        let old = self.in_flight.swap(n, Ordering::Relaxed);
        if let Some(m) = &self.meters {
            m.in_flight.add(n as i64 - old as i64);
        }
    }
}

/// A session as its HTTP side holds it.
#[derive(Debug)]
pub struct Session {
    /// The multiplexer's id of it.
    pub id: SessionId,
    /// Messages for it that answer nothing it sent (the GET stream).
    pub stream: mpsc::Receiver<Value>,
}

enum Command {
    Attach {
        key: String,
        input: Input,
        output: Output,
    },
    Open(oneshot::Sender<Session>),
    Send {
        session: SessionId,
        msg: Value,
        answers: Option<mpsc::Sender<Value>>,
    },
    Close(SessionId),
}

/// The way to one process's task; cheap to clone. The task ends when every
/// handle is dropped.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    /// What to keep durable, to [`Resume`] after a bridge restart.
    pub record: watch::Receiver<Option<Durable>>,
    /// Its counters.
    pub stats: Arc<Stats>,
}

/// What a bridge keeps about a process it serves: the initialisation and
/// the key of the process it belongs to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Durable {
    /// The multiplexer's record.
    pub record: InitRecord,
    /// The process the result belongs to (None: not attached yet).
    pub key: Option<String>,
}

/// Going on after a bridge restart: what the previous bridge kept, and the
/// first bridge id to use. The id must exceed every id the previous bridge
/// used while the process may still answer it; the caller derives it from
/// the clock (milliseconds since the epoch times 1000 outgrows any id a
/// bridge that lived less than the gap handed out at up to 1000 a
/// millisecond).
#[derive(Debug, Clone)]
pub struct Resume {
    /// What was kept.
    pub durable: Durable,
    /// The first bridge id.
    pub first_id: u64,
}

/// The process's task is gone (every handle but this one dropped, or it
/// panicked).
#[derive(Debug, thiserror::Error)]
#[error("the stdio server's task has ended")]
pub struct Gone;

impl Handle {
    /// Starts the task of one server (`service` names it in logs), going on
    /// from what a previous bridge kept when `resume` is given: the first
    /// attach of the same process is then not initialised again, one of
    /// another process is.
    pub fn spawn(service: &str, config: Config, resume: Option<Resume>) -> Handle {
        Self::spawn_metered(service, config, resume, None)
    }

    /// [`Handle::spawn`], adding to the service's metrics.
    pub fn spawn_metered(
        service: &str,
        config: Config,
        resume: Option<Resume>,
        meters: Option<Meters>,
    ) -> Handle {
        let (tx, rx) = mpsc::channel(1024);
        let (mux, key) = match resume {
            Some(r) => (
                Mux::resume(config.limits, r.durable.record, r.first_id),
                r.durable.key,
            ),
            None => (Mux::new(config.limits), None),
        };
        let durable = mux.record().map(|record| Durable {
            record,
            key: key.clone(),
        });
        let (record_tx, record) = watch::channel(durable);
        let stats = Arc::new(Stats {
            meters,
            ..Stats::default()
        });
        let task = Task {
            service: service.to_string(),
            config,
            mux,
            waiters: HashMap::new(),
            streams: HashMap::new(),
            stdin: None,
            key,
            framer: Framer::new(config.max_message),
            buf: BytesMut::new(),
            record: record_tx,
            stats: stats.clone(),
            stderr_window: (tokio::time::Instant::now(), 0),
            published: None,
        };
        tokio::spawn(task.run(rx));
        Handle { tx, record, stats }
    }

    /// Attaches the process named `key` (its container's start time).
    pub async fn attach(&self, key: String, input: Input, output: Output) -> Result<(), Gone> {
        self.tx
            .send(Command::Attach { key, input, output })
            .await
            .map_err(|_| Gone)
    }

    /// Opens a client session.
    pub async fn open(&self) -> Result<Session, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Open(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// Sends a client's message; the answers to its requests (and progress
    /// about them) arrive on `answers` when given, else nowhere.
    pub async fn send(
        &self,
        session: SessionId,
        msg: Value,
        answers: Option<mpsc::Sender<Value>>,
    ) -> Result<(), Gone> {
        self.tx
            .send(Command::Send {
                session,
                msg,
                answers,
            })
            .await
            .map_err(|_| Gone)
    }

    /// Ends a client session.
    pub async fn close(&self, session: SessionId) -> Result<(), Gone> {
        self.tx
            .send(Command::Close(session))
            .await
            .map_err(|_| Gone)
    }
}

struct Task {
    service: String,
    config: Config,
    mux: Mux,
    /// Where the answer to (session, client id as JSON text) goes.
    waiters: HashMap<(SessionId, String), mpsc::Sender<Value>>,
    streams: HashMap<SessionId, mpsc::Sender<Value>>,
    stdin: Option<Stdin>,
    key: Option<String>,
    framer: Framer,
    buf: BytesMut,
    record: watch::Sender<Option<Durable>>,
    stats: Arc<Stats>,
    /// Start of the stderr log window and lines logged in it.
    stderr_window: (tokio::time::Instant, u32),
    /// The record version and key last published.
    published: Option<(u64, Option<String>)>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut output: Option<Output> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Command::Attach { key, input, output: out }) => {
                        self.attached(key, input);
                        output = Some(out);
                    }
                    Some(cmd) => self.command(cmd),
                },
                chunk = async {
                    match output.as_mut() {
                        Some(o) => o.next().await,
                        None => std::future::pending().await,
                    }
                } => match chunk {
                    Some(Ok(Chunk::Stdout(b))) => self.stdout(&b),
                    Some(Ok(Chunk::Stderr(b))) => self.stderr(&b),
                    Some(Err(_)) | None => {
                        output = None;
                        self.detached();
                    }
                },
                written = async {
                    match self.stdin.as_mut() {
                        Some(s) => s.write_some().await,
                        None => std::future::pending().await,
                    }
                }, if self.stdin.as_ref().is_some_and(Stdin::busy) => {
                    if written.is_err() {
                        // Gone (the attach ended, or the process closed
                        // stdin): new lines are refused until an attach.
                        self.stdin = None;
                    }
                }
            }
            self.publish();
        }
        // Gone: its requests no longer count.
        self.stats.set_in_flight(0);
    }

    fn attached(&mut self, key: String, input: Input) {
        self.stdin = Some(Stdin::new(input, self.config.stdin_queue));
        self.buf.clear();
        self.framer = Framer::new(self.config.max_message);
        self.stats.count(&self.stats.attaches, |m| &m.attaches);
        let same = self.key.as_deref() == Some(key.as_str());
        let first = self.key.is_none();
        self.key = Some(key);
        if same {
            info!(service = %self.service, "stdio server re-attached (same process)");
        } else if first {
            // Nothing was kept: a fresh multiplexer has nothing to send yet.
            info!(service = %self.service, "stdio server attached");
        } else {
            info!(service = %self.service, "stdio server restarted: a new process");
            self.stats.count(&self.stats.restarts, |m| &m.restarts);
            let out = self.mux.restarted();
            self.deliver(out);
        }
    }

    fn detached(&mut self) {
        self.stdin = None;
        warn!(service = %self.service, "stdio server's attach ended (process stopped or connection lost)");
        let out = self.mux.lost_answers();
        self.deliver(out);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Attach { .. } => {}
            Command::Open(reply) => {
                let id = self.mux.open();
                let (tx, rx) = mpsc::channel(self.config.stream_queue);
                self.streams.insert(id, tx);
                if reply.send(Session { id, stream: rx }).is_err() {
                    let out = self.mux.close(id);
                    self.streams.remove(&id);
                    self.deliver(out);
                }
            }
            Command::Send {
                session,
                msg,
                answers,
            } => {
                if let (Some(tx), Some(id)) = (answers, msg.get("id"))
                    && msg.get("method").is_some()
                {
                    self.waiters.insert((session, id.to_string()), tx);
                }
                let out = self.mux.from_client(session, msg);
                self.deliver(out);
            }
            Command::Close(session) => {
                let out = self.mux.close(session);
                self.streams.remove(&session);
                self.waiters.retain(|(s, _), _| *s != session);
                self.deliver(out);
            }
        }
    }

    fn stdout(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(line) = self.framer.next(&mut self.buf) {
            match line {
                Line::Message(v) => {
                    let out = self.mux.from_server(v);
                    self.deliver(out);
                }
                Line::NotJson { excerpt } => {
                    self.stats
                        .count(&self.stats.dropped_lines, |m| &m.dropped_lines);
                    self.log_stderr_like(&format!(
                        "stdout line is not JSON-RPC, skipped: {excerpt}"
                    ));
                }
                Line::TooLong { limit } => {
                    self.stats
                        .count(&self.stats.dropped_lines, |m| &m.dropped_lines);
                    self.log_stderr_like(&format!(
                        "stdout line longer than {limit} bytes, skipped (raise --stdio-max-message)"
                    ));
                }
            }
        }
    }

    fn stderr(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.stats
                .count(&self.stats.stderr_lines, |m| &m.stderr_lines);
            self.log_stderr_like(line);
        }
    }

    /// Logs a line of the server's, at most `stderr_per_minute` a minute.
    fn log_stderr_like(&mut self, line: &str) {
        let now = tokio::time::Instant::now();
        let (start, n) = &mut self.stderr_window;
        if now.duration_since(*start) >= std::time::Duration::from_secs(60) {
            if *n > self.config.stderr_per_minute {
                let skipped = *n - self.config.stderr_per_minute;
                info!(service = %self.service, skipped, "stdio server: lines not logged in the last minute");
            }
            *start = now;
            *n = 0;
        }
        *n += 1;
        if *n <= self.config.stderr_per_minute {
            let line: String = line.chars().take(400).collect();
            info!(service = %self.service, "stdio server: {line}");
        }
    }

    fn deliver(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Server(msg) => {
                    let queued = self.stdin.as_mut().is_some_and(|s| s.push(&msg));
                    if !queued {
                        // Not attached, or stdin's queue is full: a request
                        // in the line is answered with an error at once.
                        self.stats
                            .count(&self.stats.unsent_lines, |m| &m.dropped_messages);
                        let more = self.mux.unsent(&msg);
                        self.deliver(more);
                    }
                }
                Out::Reply { session, msg } => {
                    let key = (
                        session,
                        msg.get("id").map(Value::to_string).unwrap_or_default(),
                    );
                    if let Some(tx) = self.waiters.remove(&key)
                        && tx.try_send(msg).is_err()
                    {
                        self.stats
                            .count(&self.stats.dropped_pushes, |m| &m.dropped_messages);
                    }
                }
                Out::Push {
                    session,
                    msg,
                    about,
                } => {
                    let waiter = about
                        .map(|id| (session, id.to_string()))
                        .and_then(|k| self.waiters.get(&k));
                    let to = waiter.or_else(|| self.streams.get(&session));
                    if to.is_none_or(|tx| tx.try_send(msg).is_err()) {
                        self.stats
                            .count(&self.stats.dropped_pushes, |m| &m.dropped_messages);
                    }
                }
            }
        }
    }

    /// Publishes the gauges and, when it changed, the durable record.
    fn publish(&mut self) {
        self.stats.set_in_flight(self.mux.in_flight() as u64);
        self.stats
            .sessions
            .store(self.mux.sessions() as u64, Ordering::Relaxed);
        // Cloning the record (JSON) on every message cost the hot path:
        // only when the multiplexer's record or the process key changed.
        let version = self.mux.record_version();
        if self
            .published
            .as_ref()
            .is_some_and(|(v, k)| *v == version && *k == self.key)
        {
            return;
        }
        self.published = Some((version, self.key.clone()));
        let record = self.mux.record().map(|record| Durable {
            record,
            key: self.key.clone(),
        });
        self.record.send_if_modified(|r| {
            if *r != record {
                *r = record;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests;
