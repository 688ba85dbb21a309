//! The running daemon: wires store, pool, reconciler, watcher, forwarder and
//! API together. One task (the loop in [`run`]) owns the pool and the
//! registry; the watcher and the API send it messages, and it publishes a
//! [`Snapshot`] for readers. Each batch of messages becomes one store
//! transaction, written before the forwarder is told to listen.
//!
//! Start: open the store (a damaged one is moved aside and reported), restore
//! reservations, bind the API, open listeners for restored services at once
//! (clients wait up to `--hold` for a replica), then follow Docker. Ready
//! once the first resync is applied. SIGTERM/SIGINT: stop accepting, flush,
//! exit within 5 s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, Command, PoolView, Snapshot};
use crate::config::{Config, RunArgs};
use crate::docker::{Event, Watcher};
use crate::forward::{ForwardError, ForwardMetrics, Forwarder};
use crate::metrics::Metrics;
use crate::pool::{Millis, Pool, RestoreState};
use crate::reconcile::{Core, Effect};
use crate::store::{self, RecordState, Store, StoreError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened (and was not damaged: e.g. permissions).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API address could not be bound.
    #[error("{0}")]
    Listen(String),
    /// The token file was refused.
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    /// The stdio state files could not be read or written.
    #[error("{0}")]
    StdioState(String),
    /// Metrics registration failed (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// What the store holds, as last written: service -> (port, quarantine deadline).
type Persisted = HashMap<String, (u16, Option<Millis>)>;

struct Daemon {
    core: Core,
    store: Option<Store>,
    persisted: Persisted,
    /// API reservations as last written.
    persisted_pins: BTreeMap<String, Millis>,
    store_failing: bool,
    /// Compare every holding with the store on the next write (after a failure).
    compare_all: bool,
    forwarder: Forwarder,
    metrics: Metrics,
    snapshot: watch::Sender<Arc<Snapshot>>,
    ready: Result<(), String>,
    docker_up: bool,
    /// Service views last published, when, and whether changes came since.
    views: Arc<Vec<crate::contract::api::ServiceView>>,
    views_at: Option<Instant>,
    views_stale: bool,
}

/// Appends the store changes that bring `service`'s row in line with what
/// the pool holds for it now (`held`).
fn diff_holding(
    persisted: &Persisted,
    service: &str,
    held: Option<(u16, Option<Millis>)>,
    now: Millis,
    removes: &mut Vec<store::Change>,
    writes: &mut Vec<store::Change>,
) {
    let stored = persisted.get(service).copied();
    let Some((port, until)) = held else {
        if stored.is_some() {
            removes.push(store::Change::Remove {
                service: service.to_string(),
            });
        }
        return;
    };
    match stored {
        Some(s) if s == (port, until) => return,
        // The UNIQUE port column: the old row goes before the new one.
        Some((p, _)) if p != port => removes.push(store::Change::Remove {
            service: service.to_string(),
        }),
        _ => {}
    }
    writes.push(match until {
        None => store::Change::Reserve {
            service: service.to_string(),
            port,
            since_ms: now,
        },
        Some(until_ms) => store::Change::Quarantine {
            service: service.to_string(),
            port,
            until_ms,
        },
    });
    writes.push(store::Change::LastPort {
        service: service.to_string(),
        port,
        seen_ms: now,
    });
}

/// Longest a published service view may lag behind the state.
const VIEWS_EVERY: Duration = Duration::from_millis(100);

impl Daemon {
    /// Writes what changed since the last write, in one transaction.
    ///
    /// Only the services the pool and the core report as changed are compared
    /// with what the store holds (a burst of 10k API reservations spent most
    /// of its time walking every holding each batch); after a failed write the
    /// next one compares everything, so nothing the failure dropped is lost.
    fn persist(&mut self) {
        let now = now_ms();
        let mut removes = Vec::new();
        let mut writes = Vec::new();
        // Taken even without a store, so the change lists stay bounded.
        let incremental = self.store.is_some() && !self.compare_all;
        let persisted = &self.persisted;
        self.core.take_changed(|name, held| {
            if incremental {
                diff_holding(persisted, name, held, now, &mut removes, &mut writes);
            }
        });
        let pins_changed = self.core.take_pin_changes();
        if self.store.is_none() {
            return;
        }
        let mut seen = HashSet::new();
        if self.compare_all {
            let names: Vec<String> = self
                .core
                .pool()
                .holdings()
                .map(|(s, _, _)| s.to_string())
                .chain(self.persisted.keys().cloned())
                .collect();
            for name in &names {
                if seen.insert(name.as_str()) {
                    let held = self.core.pool().holding_of(name);
                    diff_holding(&self.persisted, name, held, now, &mut removes, &mut writes);
                }
            }
            seen.clear();
            let pins: Vec<String> = self
                .core
                .pinned()
                .map(|(s, _)| s.to_string())
                .chain(self.persisted_pins.keys().cloned())
                .collect();
            for name in &pins {
                if seen.insert(name.as_str()) {
                    self.diff_pin(name, &mut writes);
                }
            }
        } else {
            for name in &pins_changed {
                if seen.insert(name.as_str()) {
                    self.diff_pin(name, &mut writes);
                }
            }
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if removes.is_empty() && writes.is_empty() {
            self.compare_all = false;
            return;
        }
        removes.extend(writes);
        let t = Instant::now();
        match store.apply(&removes) {
            Ok(()) => {
                self.metrics
                    .store_write_duration
                    .observe(t.elapsed().as_secs_f64());
                for c in &removes {
                    match c {
                        store::Change::Remove { service } => {
                            self.persisted.remove(service);
                        }
                        store::Change::Reserve { service, port, .. } => {
                            self.persisted.insert(service.clone(), (*port, None));
                        }
                        store::Change::Quarantine {
                            service,
                            port,
                            until_ms,
                        } => {
                            self.persisted
                                .insert(service.clone(), (*port, Some(*until_ms)));
                        }
                        store::Change::Pin { service, since_ms } => {
                            self.persisted_pins.insert(service.clone(), *since_ms);
                        }
                        store::Change::Unpin { service } => {
                            self.persisted_pins.remove(service);
                        }
                        store::Change::LastPort { .. } => {}
                    }
                }
                self.compare_all = false;
                if self.store_failing {
                    tracing::info!("store writes work again");
                    self.store_failing = false;
                }
            }
            Err(e) => {
                self.compare_all = true;
                self.metrics.store_errors.inc();
                if !self.store_failing {
                    tracing::error!(error = %e, "store write failed; keeping state in memory and retrying on the next change");
                    self.store_failing = true;
                }
            }
        }
    }

    /// Appends the pin change that brings `service` in line with the core.
    fn diff_pin(&self, service: &str, writes: &mut Vec<store::Change>) {
        match (
            self.core.pinned_since(service),
            self.persisted_pins.contains_key(service),
        ) {
            (Some(since_ms), false) => writes.push(store::Change::Pin {
                service: service.to_string(),
                since_ms,
            }),
            (None, true) => writes.push(store::Change::Unpin {
                service: service.to_string(),
            }),
            _ => {}
        }
    }

    /// Persists, then performs forwarder effects; a port another process
    /// holds moves its service (bounded number of moves per batch).
    async fn perform(&mut self, mut effects: Vec<Effect>) {
        let mut moves = 0;
        while !effects.is_empty() {
            self.persist();
            let mut next = Vec::new();
            for e in effects {
                match e {
                    Effect::Open { service, port } => {
                        match self.forwarder.open(&service, port).await {
                            Ok(()) => {}
                            Err(ForwardError::AddrInUse { .. }) if moves < 64 => {
                                moves += 1;
                                next.extend(self.core.conflicted(&service, port, now_ms()));
                            }
                            Err(e) => {
                                tracing::error!(service, port, error = %e, "cannot listen for the service");
                            }
                        }
                    }
                    Effect::Close { service } => self.forwarder.close(&service),
                    Effect::Endpoints { service, endpoints } => {
                        self.forwarder.set_endpoints(&service, endpoints);
                    }
                }
            }
            effects = next;
        }
        self.persist();
        self.publish();
    }

    /// Publishes the pool and readiness at once; rebuilds the service views
    /// (and the services gauge) at most every [`VIEWS_EVERY`], so a burst of
    /// thousands of changes does not rebuild thousands of views each batch.
    fn publish(&mut self) {
        // Pool gauges always move with /v1/pool (the harness checks they agree).
        let pool = self.core.pool_view();
        if self.views_at.is_none_or(|at| at.elapsed() >= VIEWS_EVERY) {
            self.views = Arc::new(self.core.service_views());
            self.views_at = Some(Instant::now());
            self.views_stale = false;
        } else {
            self.views_stale = true;
        }
        let services = Arc::clone(&self.views);
        let ready = self.ready.clone();
        self.snapshot.send_replace(Arc::new(Snapshot {
            pool,
            services,
            ready,
        }));
    }

    /// Applies one watcher event to the core, collecting its effects.
    fn on_event(&mut self, ev: Event, batch: &mut Batch) {
        let now = now_ms();
        match ev {
            Event::Connected => self.docker_up = true,
            Event::Disconnected { reason } => {
                self.docker_up = false;
                if self.ready.is_err() {
                    self.ready = Err(format!("docker engine unreachable: {reason}"));
                }
            }
            Event::EngineDown => {
                // Routing, views and gauges change together in the core (the
                // reliability run once caught docs' port answered by search
                // after an engine restart). A mere cut (engine alive) keeps
                // serving what is known.
                batch.effects.extend(self.core.engine_down());
                self.views_at = None;
                tracing::warn!(
                    "engine refuses connections: new connections wait for the resync after it returns (up to --hold)"
                );
            }
            Event::Started { info, at, replayed } => {
                let (fx, fresh) = self.core.started(&info, replayed, now);
                batch.effects.extend(fx);
                if fresh
                    && info.running
                    && let Some(c) = self.core.registry().container(&info.id)
                {
                    batch.latencies.push((c.service.clone(), at));
                }
            }
            Event::Stopped { id } => batch.effects.extend(self.core.stopped(&id, now)),
            Event::Paused { id } => batch.effects.extend(self.core.paused(&id, now)),
            Event::Destroyed { id } => batch.effects.extend(self.core.destroyed(&id, now)),
            Event::Resync {
                containers,
                started,
            } => {
                let took = started.elapsed().as_millis() as Millis;
                let listed_from = now.saturating_sub(took);
                batch
                    .effects
                    .extend(self.core.resync_listed(&containers, now, listed_from));
                batch.resyncs.push(started);
            }
        }
    }

    /// Applies one API command; its answer waits until the batch is durable.
    fn on_command(&mut self, cmd: Command, batch: &mut Batch) {
        let now = now_ms();
        match cmd {
            Command::Reserve {
                service,
                port,
                reply,
            } => {
                let r = self
                    .core
                    .reserve_api(&service, port, now)
                    .map_err(api::CommandError::from);
                batch.replies.push(Reply::Reserve(reply, r));
            }
            Command::Unreserve { service, reply } => {
                let r = self
                    .core
                    .unreserve_api(&service, now)
                    .map_err(api::CommandError::from);
                batch.replies.push(Reply::Unreserve(reply, r));
            }
        }
    }

    /// Makes a batch durable (one transaction), performs its effects, then
    /// answers its commands and records its measurements.
    async fn finish(&mut self, batch: Batch) {
        self.perform(batch.effects).await;
        let failing = self.store_failing;
        for reply in batch.replies {
            match reply {
                Reply::Reserve(tx, r) => {
                    let r = if failing && r.is_ok() {
                        Err(api::CommandError::StoreFailing)
                    } else {
                        r
                    };
                    let _ = tx.send(r);
                }
                Reply::Unreserve(tx, r) => {
                    let r = if failing && r.is_ok() {
                        Err(api::CommandError::StoreFailing)
                    } else {
                        r
                    };
                    let _ = tx.send(r);
                }
            }
        }
        if !batch.latencies.is_empty() {
            let listening = self.forwarder.listening();
            let now = SystemTime::now();
            for (service, at) in batch.latencies {
                if listening.iter().any(|(l, _)| *l == service)
                    && let Ok(d) = now.duration_since(at)
                {
                    self.metrics.registration_latency.observe(d.as_secs_f64());
                }
            }
        }
        for started in &batch.resyncs {
            self.metrics
                .reconcile_duration
                .observe(started.elapsed().as_secs_f64());
        }
        if !batch.resyncs.is_empty() && self.ready.is_err() {
            self.ready = Ok(());
            tracing::info!(
                services = self.core.registry().services().len(),
                "first resync applied; ready"
            );
            self.publish();
        }
    }
}

/// The settings a reload compares, by name (Debug forms), beyond `ports`.
fn restart_only(c: &Config) -> [(&'static str, String); 10] {
    [
        ("docker-host", format!("{:?}", c.docker_host)),
        ("bind-ip", c.bind_ip.to_string()),
        ("listen", c.listen.to_string()),
        ("state-dir", c.state_dir.display().to_string()),
        ("grace", format!("{:?}", c.grace)),
        ("resync", format!("{:?}", c.resync)),
        ("leak-cycles", c.leak_cycles.to_string()),
        ("hold", format!("{:?}", c.hold)),
        ("api-token-file", format!("{:?}", c.api_token_file)),
        ("log-format", format!("{:?}", c.log_format)),
    ]
}

impl Daemon {
    /// SIGHUP: resolves the configuration again (the flags and environment
    /// given at start, the file as it is now) and applies what can change
    /// while running, the port ranges; the listeners of held ports are not
    /// touched, so no connection drops. A refused change (invalid file, or
    /// a narrowing that drops a port in use) keeps the running
    /// configuration. One log line per reload, one counter per result.
    fn reload(&mut self, args: &RunArgs, running: &mut Config, batch: &mut Batch) {
        use crate::contract::metric::reload;
        let refuse = |d: &Self, why: String| {
            d.metrics
                .config_reloads
                .with_label_values(&[reload::REFUSED])
                .inc();
            tracing::warn!(error = %why, ports = %running.ports, "SIGHUP: configuration reload refused; running as before");
        };
        let next = match Config::resolve(args) {
            Ok(c) => c,
            Err(e) => return refuse(self, e.to_string()),
        };
        let ports_changed = next.ports != running.ports;
        if ports_changed {
            match self.core.set_ranges(next.ports.clone(), now_ms()) {
                Ok(fx) => batch.effects.extend(fx),
                Err(e) => return refuse(self, e.to_string()),
            }
        }
        let old = restart_only(running);
        let ignored: Vec<&str> = restart_only(&next)
            .iter()
            .zip(&old)
            .filter(|(n, o)| n.1 != o.1)
            .map(|(n, _)| n.0)
            .collect();
        self.metrics
            .config_reloads
            .with_label_values(&[reload::APPLIED])
            .inc();
        tracing::info!(
            ports = %next.ports,
            ports_changed,
            needs_restart = %ignored.join(","),
            "SIGHUP: configuration reloaded{}",
            if ignored.is_empty() {
                ""
            } else {
                "; the keys in needs_restart keep their running values until a restart"
            }
        );
        running.ports = next.ports;
    }
}

/// An answer owed to an API client once its batch is durable.
enum Reply {
    Reserve(oneshot::Sender<api::ReserveReply>, api::ReserveReply),
    Unreserve(oneshot::Sender<api::UnreserveReply>, api::UnreserveReply),
}

/// Messages taken together: one store transaction, one forwarder pass.
#[derive(Default)]
struct Batch {
    effects: Vec<Effect>,
    replies: Vec<Reply>,
    /// Fresh starts whose latency is measured once the port serves.
    latencies: Vec<(String, SystemTime)>,
    /// Start times of the resyncs in this batch.
    resyncs: Vec<Instant>,
}

/// Most messages folded into one batch.
const MAX_BATCH: usize = 4096;

/// Opens the store, moving a damaged one aside. Returns the store (None when
/// even a fresh one cannot be opened: the bridge then runs from Docker truth
/// alone and reports it) and a note for the log.
fn open_store(config: &Config, metrics: &Metrics) -> Result<Option<Store>, StartError> {
    match Store::open(&config.state_dir) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_damaged() => {
            metrics.store_errors.inc();
            match Store::move_aside(&config.state_dir, SystemTime::now()) {
                Ok(aside) => tracing::error!(
                    error = %e,
                    moved_to = %aside.display(),
                    "store damaged: moved aside; starting from Docker truth"
                ),
                Err(m) => {
                    tracing::error!(error = %e, move_error = %m, "store damaged and cannot be moved aside");
                    return Err(StartError::Store(m));
                }
            }
            Ok(Some(Store::open(&config.state_dir)?))
        }
        Err(e) => Err(StartError::Store(e)),
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    args: &RunArgs,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let mut running = config.clone();
    // Installed first: SIGHUP's default action would end the process.
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload by restarting");
            None
        }
    };
    let metrics = Metrics::new()?;
    let forward_metrics = ForwardMetrics::register(&metrics.registry)?;
    let token = match &config.api_token_file {
        Some(p) => Some(crate::token::read(p)?),
        None => None,
    };

    let _lock = store::DirLock::acquire(&config.state_dir)?;
    let store = open_store(&config, &metrics)?;
    let mut pool = Pool::new(config.ports.clone(), config.grace.as_millis() as Millis);
    // Persistence writes only what the pool reports as changed.
    pool.track_changes();
    let mut persisted = Persisted::new();
    let mut restored = 0usize;
    if let Some(s) = &store {
        let snap = s.load()?;
        for (service, port) in snap.last_ports.iter().rev() {
            pool.restore_last_port(service, *port);
        }
        for r in &snap.reservations {
            let state = match r.state {
                RecordState::Reserved => RestoreState::Reserved,
                RecordState::Quarantined { until_ms } => RestoreState::Quarantined(until_ms),
            };
            match pool.restore(&r.service, r.port, &state) {
                Ok(()) => {
                    restored += 1;
                    let until = match r.state {
                        RecordState::Reserved => None,
                        RecordState::Quarantined { until_ms } => Some(until_ms),
                    };
                    persisted.insert(r.service.clone(), (r.port, until));
                }
                Err(e) => tracing::warn!(
                    service = %r.service,
                    port = r.port,
                    error = %e,
                    "stored reservation not restored (ranges changed?)"
                ),
            }
        }
    }
    let mut core = Core::new(pool, config.leak_cycles, metrics.clone());
    let mut persisted_pins = BTreeMap::new();
    if let Some(s) = &store {
        for (service, since) in s.load()?.pinned {
            if core.pool().port_of(&service).is_some() {
                core.pin(&service, since);
                persisted_pins.insert(service, since);
            }
        }
    }
    for _ in 0..restored {
        core.count_restored();
    }
    tracing::info!(restored, state_dir = %config.state_dir.display(), ports = %config.ports, "store loaded");

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(api::describe_bind_error(config.listen, &e)))?;
    tracing::info!(listen = %config.listen, "api listening");

    let (hub, kept) = stdio_hub(&config, &metrics.registry)?;
    let forwarder = Forwarder::with_stdio(
        config.bind_ip,
        config.hold,
        forward_metrics,
        shutdown.clone(),
        Arc::clone(&hub),
    );
    let keeper_task = tokio::spawn(crate::stdio::kept::keep(
        Arc::clone(&hub),
        config.state_dir.clone(),
        kept,
        shutdown.clone(),
    ));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot {
        pool: PoolView::default(),
        services: Arc::new(Vec::new()),
        ready: Err("starting: waiting for the first resync with Docker".into()),
    }));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(1024);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(1024);

    let api_stop = CancellationToken::new();
    let api_task = tokio::spawn(api::serve(
        listener,
        ApiState {
            metrics: metrics.clone(),
            snapshot: snap_rx,
            commands: cmd_tx,
            token,
            forwarder: Some(forwarder.clone()),
        },
        api_stop.clone(),
    ));

    let watcher_stop = shutdown.child_token();
    let watcher_task = tokio::spawn(
        Watcher {
            host: config.docker_host.clone(),
            resync: config.resync,
            tx: ev_tx,
            metrics: metrics.clone(),
        }
        .run(watcher_stop.clone()),
    );

    let mut d = Daemon {
        core,
        store,
        persisted,
        persisted_pins,
        store_failing: false,
        compare_all: true,
        forwarder: forwarder.clone(),
        metrics: metrics.clone(),
        snapshot: snap_tx,
        ready: Err("starting: waiting for the first resync with Docker".into()),
        docker_up: false,
        views: Arc::new(Vec::new()),
        views_at: None,
        views_stale: false,
    };
    let fx = d.core.open_all();
    d.perform(fx).await;

    loop {
        let deadline = d.core.pool().next_deadline();
        let sleep = async {
            match deadline {
                Some(ms) => {
                    let wait = ms.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait.min(3_600_000))).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let mut batch = Batch::default();
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(ev) = ev_rx.recv() => d.on_event(ev, &mut batch),
            Some(cmd) = cmd_rx.recv() => d.on_command(cmd, &mut batch),
            () = sleep => batch.effects.extend(d.core.expire(now_ms())),
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => d.reload(args, &mut running, &mut batch),
            () = tokio::time::sleep(VIEWS_EVERY), if d.views_stale => {
                d.publish();
                continue;
            }
        }
        // Fold whatever else is already queued into the same transaction.
        let mut taken = 1;
        while taken < MAX_BATCH {
            if let Ok(cmd) = cmd_rx.try_recv() {
                d.on_command(cmd, &mut batch);
            } else if let Ok(ev) = ev_rx.try_recv() {
                d.on_event(ev, &mut batch);
            } else {
                break;
            }
            taken += 1;
        }
        d.finish(batch).await;
    }

    tracing::info!("shutting down");
    watcher_stop.cancel();
    api_stop.cancel();
    d.persist();
    let aborted = forwarder.shutdown(Duration::from_secs(3)).await;
    if aborted > 0 {
        tracing::warn!(aborted, "connections cut at shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), api_task).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), watcher_task).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), keeper_task).await;
    drop(d);
    tracing::info!("stopped");
    Ok(())
}

/// The stdio servers' hub: attached through the engine the watcher follows,
/// going on from what the state directory kept (also returned: what the
/// file holds, for the task that keeps it).
fn stdio_hub(
    config: &Config,
    registry: &prometheus::Registry,
) -> Result<(Arc<crate::stdio::hub::Hub>, crate::stdio::hub::Kept), StartError> {
    use crate::stdio::{hub, kept};
    let secret = kept::secret(&config.state_dir).map_err(|e| {
        StartError::StdioState(format!(
            "cannot read or write {} in {}: {e}",
            crate::contract::files::STDIO_SECRET,
            config.state_dir.display()
        ))
    })?;
    let attach: Arc<dyn hub::Attach> = Arc::new(hub::Engine::new(config.docker_host.clone()));
    let kept = kept::load(&config.state_dir);
    let metrics = hub::StdioMetrics::register(registry)?;
    let process = crate::stdio::process::Config {
        max_message: config.stdio_max_message,
        ..Default::default()
    };
    let hub = hub::Hub::new(Some(attach), Some(metrics), process, secret, kept.clone());
    Ok((Arc::new(hub), kept))
}
