//! Probes and the recorded history: a client per service that keeps calling
//! `initialize` (and `ping`) through the service's mesh port, and a poller of
//! the bridge's `/v1/pool`, `/v1/services` and `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_bridge::contract::api::{self, ServiceView};
pub use mesh_bridge::contract::api::{PoolView, ServiceState};
use mesh_bridge::contract::metric;
use serde::{Deserialize, Serialize};

use crate::faults::{FaultKind, StoreCheck};
use crate::http::HttpError;
use crate::metrics::HarnessMetrics;
use crate::stub::StubError;

/// How long one probe (an `initialize`, and on some rounds a `ping` after it)
/// may take before it counts as [`Outcome::Timeout`].
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered, by the right service.
    Ok,
    /// Answered by another service (I7).
    Wrong,
    /// The bridge shows no port for the service.
    NoPort,
    /// Connection refused / reset / closed.
    Refused,
    /// No answer in time.
    Timeout,
    /// Any other failure (HTTP, protocol).
    Error,
}

impl Outcome {
    /// snake_case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Wrong => "wrong",
            Outcome::NoPort => "no_port",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// One probe result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// ms from the start of the run.
    pub t_ms: u64,
    /// The service probed.
    pub service: String,
    /// Its mesh port at the time (bridge's view).
    pub port: Option<u16>,
    /// How it ended.
    pub outcome: Outcome,
    /// `serverInfo.name` of whoever answered.
    pub server: Option<String>,
    /// Round trip.
    pub latency_ms: f64,
}

/// What the history keeps of one service of `/v1/services`
/// ([`ServiceView`], the bridge's own type): its replicas as counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceSample {
    /// Name.
    pub name: String,
    /// Port (null while pending).
    pub port: Option<u16>,
    /// State.
    pub state: ServiceState,
    /// Replica count.
    #[serde(default)]
    pub replicas: usize,
    /// Replicas in state `running`.
    #[serde(default)]
    pub running: usize,
}

impl From<&ServiceView> for ServiceSample {
    fn from(v: &ServiceView) -> Self {
        ServiceSample {
            name: v.name.clone(),
            port: v.port,
            state: v.state,
            replicas: v.replicas.len(),
            running: v.replicas.iter().filter(|r| r.is_running()).count(),
        }
    }
}

/// One poll of the bridge's API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Snapshot {
    /// ms from the start.
    pub t_ms: u64,
    /// `/v1/pool` (None when the bridge did not answer).
    pub pool: Option<PoolView>,
    /// `/v1/services`.
    pub services: Vec<ServiceSample>,
    /// `/metrics`, `name{labels}` -> value.
    pub metrics: BTreeMap<String, f64>,
    /// The pool gauges read the same before and after `/v1/pool` (so the
    /// metrics and the pool view may be compared).
    pub stable: bool,
}

impl Snapshot {
    /// A field of the pool view, when the bridge answered.
    pub fn pool_field(&self, f: impl Fn(&PoolView) -> usize) -> Option<u64> {
        self.pool.as_ref().map(|p| f(p) as u64)
    }
    /// A metric without labels.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
}

/// A fault as it was injected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaultRecord {
    /// ms from the start.
    pub t_ms: u64,
    /// The fault.
    pub kind: FaultKind,
    /// What it hit (container names, ports, "bridge", ...).
    pub target: String,
    /// Services under this fault (all services for global faults).
    pub services: Vec<String>,
    /// When it was healed (== t_ms when instantaneous).
    pub until_ms: u64,
    /// Services whose port may legitimately change because of this fault.
    #[serde(default)]
    pub may_move: Vec<String>,
    /// Failure to inject, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// Services whose clients must see no failed request while this fault
    /// holds (a reset or black hole on only some replicas fails over; added
    /// latency below the probe timeout only slows answers). Checked by I4.
    #[serde(default)]
    pub no_failures: Vec<String>,
    /// Latency added to the hit replicas' answers (`net-latency`), which some
    /// probe of `no_failures` must show, or the fault did not take effect.
    #[serde(default)]
    pub latency_ms: Option<u64>,
}

impl FaultRecord {
    /// Whether this fault lets `service`'s port move (`*`: every service's).
    pub fn lets_move(&self, service: &str) -> bool {
        self.may_move.iter().any(|m| m == service || m == "*")
    }
}

/// What the counters must show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Expect {
    /// Exact increase of `duplicate_registration_attempts_total`.
    pub duplicates: Option<u64>,
    /// Whether `port_exhaustion_events_total` must move (true) or stay (false).
    pub exhaustion: Option<bool>,
    /// Exact increase of `port_exhaustion_events_total` (one per service
    /// that found no port), when the harness knows it.
    #[serde(default)]
    pub exhaustion_events: Option<u64>,
}

/// Everything recorded in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Probe results.
    pub samples: Vec<Sample>,
    /// API polls.
    pub snapshots: Vec<Snapshot>,
    /// Faults.
    pub faults: Vec<FaultRecord>,
    /// Store checks after bridge kills.
    pub store_checks: Vec<StoreCheck>,
    /// Counter expectations.
    pub expect: Expect,
    /// Services that must be live (hold a port, serve) at the end.
    pub live: Vec<String>,
    /// Services probed for availability (the scenario's services).
    pub probed: Vec<String>,
    /// When the quiet settle time began (ms).
    pub settle_from_ms: u64,
    /// End of the run (ms).
    pub end_ms: u64,
    /// The bridge's grace (ms).
    pub grace_ms: u64,
    /// Port movement is allowed for every service (e.g. the store was lost).
    #[serde(default)]
    pub bridge_restarts: Vec<u64>,
    /// Docker's truth at the end, read by the harness beside the final
    /// snapshot: service -> running containers (I9).
    #[serde(default)]
    pub truth: Option<BTreeMap<String, usize>>,
    /// The bridge's listening ports, sampled through the run (I10).
    #[serde(default)]
    pub binds: Vec<crate::binds::BindSample>,
    /// The API's port as the bridge binds it (inside its network
    /// namespace), the one port outside the ranges it may listen on.
    #[serde(default)]
    pub api_port: Option<u16>,
    /// The services the session probes keep sessions with, and how they
    /// serve them (I8).
    #[serde(default)]
    pub session_services: BTreeMap<String, crate::session::SessionKind>,
    /// Every request of the session probes' sessions (I8).
    #[serde(default)]
    pub sessions: Vec<crate::session::SessionEvent>,
    /// Runs of the official SDK client (I8).
    #[serde(default)]
    pub sdk_runs: Vec<crate::session::SdkRun>,
}

/// Shared, lock-protected recording used by the probe tasks.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<History>>,
    /// Latest service -> port, from the last snapshot.
    ports: Arc<Mutex<HashMap<String, Option<u16>>>>,
}

impl Recorder {
    /// Runs `f` on the history.
    pub fn with<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
    /// A copy of the history.
    pub fn history(&self) -> History {
        self.with(|h| h.clone())
    }
    /// The latest port the bridge shows for `service`.
    pub fn port_of(&self, service: &str) -> Option<u16> {
        let g = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        g.get(service).copied().flatten()
    }
    fn set_ports(&self, s: &Snapshot) {
        let mut g = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        g.clear();
        for v in &s.services {
            // A quarantined service has no container: its port is kept, not
            // served, and once grace ends it is another service's. Probing
            // it from a snapshot that is late by more than the grace would
            // count that service's answer against this one (I7).
            let port = v.port.filter(|_| v.state != ServiceState::Quarantined);
            g.insert(v.name.clone(), port);
        }
    }
}

/// Where mesh ports are reached from the harness.
#[derive(Debug, Clone)]
pub struct PortMap {
    /// mesh port -> host loopback port.
    pub map: HashMap<u16, u16>,
}

impl PortMap {
    /// Host address of a mesh port.
    pub fn addr(&self, mesh: u16) -> Option<SocketAddr> {
        self.map
            .get(&mesh)
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
    }
}

/// Probes one service once.
pub async fn probe_once(
    service: &str,
    port: Option<u16>,
    ports: &PortMap,
    timeout: Duration,
    ping: bool,
) -> (Outcome, Option<String>, f64) {
    let t = Instant::now();
    let Some(addr) = port.and_then(|p| ports.addr(p)) else {
        return (Outcome::NoPort, None, 0.0);
    };
    let r = crate::stub::initialize(addr, timeout).await;
    let mut out = match r {
        Ok(name) if name == service => (Outcome::Ok, Some(name)),
        Ok(name) => (Outcome::Wrong, Some(name)),
        Err(StubError::Transport(HttpError::Timeout { .. })) => (Outcome::Timeout, None),
        Err(StubError::Transport(HttpError::Io { .. } | HttpError::Http { .. })) => {
            (Outcome::Refused, None)
        }
        Err(_) => (Outcome::Error, None),
    };
    if ping && out.0 == Outcome::Ok && crate::stub::ping(addr, timeout).await.is_err() {
        out.0 = Outcome::Error;
    }
    (out.0, out.1, t.elapsed().as_secs_f64() * 1000.0)
}

/// Keeps probing `services()` every `every` until `stop` fires.
pub async fn run_probes(
    rec: Recorder,
    services: Arc<Mutex<Vec<String>>>,
    ports: PortMap,
    start: Instant,
    every: Duration,
    metrics: HarnessMetrics,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut round = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: at most one round a tick for at most a day.
    while round < 86_400_000 / every.as_millis().max(1) as u64 {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        round += 1;
        let list = services.lock().map(|g| g.clone()).unwrap_or_default();
        let mut set = tokio::task::JoinSet::new();
        for s in list {
            let port = rec.port_of(&s);
            let ports = ports.clone();
            let ping = round.is_multiple_of(4);
            set.spawn(async move {
                let t_ms = start.elapsed().as_millis() as u64;
                let (o, server, ms) = probe_once(&s, port, &ports, PROBE_TIMEOUT, ping).await;
                Sample {
                    t_ms,
                    service: s,
                    port,
                    outcome: o,
                    server,
                    latency_ms: ms,
                }
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(sample) = r {
                metrics.probe(sample.outcome, sample.latency_ms / 1000.0);
                rec.with(|h| h.samples.push(sample));
            }
        }
    }
}

/// One poll of the API.
pub async fn snapshot(api: SocketAddr, t_ms: u64) -> Snapshot {
    let gauges = |m: &BTreeMap<String, f64>| {
        [
            metric::PORTS_IN_USE,
            metric::PORTS_QUARANTINED,
            metric::PORTS_CONFLICTED,
        ]
        .map(|d| m.get(d.name).copied())
    };
    let m1 = crate::http::get_text(api, api::METRICS)
        .await
        .map(|t| crate::http::parse_metrics(&t));
    let pool: Option<PoolView> = crate::http::get_json(api, api::POOL).await.ok();
    let services: Vec<ServiceSample> =
        match crate::http::get_json::<Vec<ServiceView>>(api, api::SERVICES).await {
            Ok(v) => v.iter().map(ServiceSample::from).collect(),
            Err(_) => Vec::new(),
        };
    let m2 = crate::http::get_text(api, api::METRICS)
        .await
        .map(|t| crate::http::parse_metrics(&t));
    let (metrics, stable) = match (m1, m2) {
        (Ok(a), Ok(b)) => {
            let stable = gauges(&a) == gauges(&b) && pool.is_some();
            (b, stable)
        }
        (_, Ok(b)) => (b, false),
        (Ok(a), _) => (a, false),
        _ => (BTreeMap::new(), false),
    };
    Snapshot {
        t_ms,
        pool,
        services,
        metrics,
        stable,
    }
}

/// Polls the API every `every` until `stop` fires.
pub async fn run_poller(
    rec: Recorder,
    api: SocketAddr,
    start: Instant,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    for _ in 0..(86_400_000 / every.as_millis().max(1) as u64) {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        let s = snapshot(api, start.elapsed().as_millis() as u64).await;
        if s.pool.is_some() {
            rec.set_ports(&s);
        }
        rec.with(|h| h.snapshots.push(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_service_is_not_probed_at_the_port_it_no_longer_serves() {
        let rec = Recorder::default();
        let sample = |name: &str, port, state| ServiceSample {
            name: name.into(),
            port: Some(port),
            state,
            replicas: 0,
            running: 0,
        };
        let snap = Snapshot {
            services: vec![
                sample("gone", 11109, ServiceState::Quarantined),
                sample("here", 11110, ServiceState::Serving),
                sample("idle", 11111, ServiceState::Waiting),
            ],
            ..Snapshot::default()
        };
        rec.set_ports(&snap);
        assert_eq!(rec.port_of("gone"), None);
        assert_eq!(rec.port_of("here"), Some(11110));
        assert_eq!(rec.port_of("idle"), Some(11111), "a held port is still its");
    }
}
