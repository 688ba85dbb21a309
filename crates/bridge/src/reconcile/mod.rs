//! Applies Docker truth to the registry and the pool, and says what the
//! forwarder must do. Pure and synchronous (time passed in), so it is tested
//! without Docker; the app performs the [`Effect`]s.
//!
//! Rules: a service with at least one container (running or not) holds a
//! port; a destroyed last container releases it into quarantine; a reserved
//! service with no container is released only after `--leak-cycles`
//! consecutive resyncs without one (never on one missed observation); a
//! service that finds no port is `pending`, counted once as an exhaustion
//! event when it becomes pending, and retried whenever a port frees up.

use crate::contract::labels::Transport;
use crate::forward::Endpoints;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::metrics::{Metrics, release};
use crate::pool::{Millis, Outcome, Pool, PoolError, Reservation};
use crate::registry::{Change, ContainerInfo, Registry};

mod views;
pub use views::ENGINE_LOST;

/// How long a port another process held stays out of use.
pub const CONFLICT_HOLD_MS: Millis = 60_000;

/// What the forwarder must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Listen for the service on the port (idempotent).
    Open {
        /// The service.
        service: String,
        /// Its port.
        port: u16,
    },
    /// Stop listening for the service.
    Close {
        /// The service.
        service: String,
    },
    /// The running replicas of the service changed.
    Endpoints {
        /// The service.
        service: String,
        /// Its transport and where to dial.
        endpoints: Endpoints,
    },
}

/// Why an API reservation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The pool refused.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The service has containers, so Docker owns its reservation.
    #[error(
        "service `{0}` has containers; its port follows Docker, so remove its containers instead"
    )]
    OwnedByDocker(String),
    /// Nothing held.
    #[error("service `{0}` holds no port")]
    NotHeld(String),
}

/// The reconciler's state.
#[derive(Debug)]
pub struct Core {
    /// The port pool.
    pool: Pool,
    /// Containers and services.
    registry: Registry,
    /// The engine process went away ([`Core::engine_down`]): its containers'
    /// addresses are not trusted until the next resync.
    engine_lost: bool,
    /// Reserved services without containers: resyncs seen so.
    missing: HashMap<String, u32>,
    /// Services with containers but no port: (arrival order, reason). Served FIFO.
    pending: HashMap<String, (u64, String)>,
    /// Next arrival number for `pending`.
    pending_seq: u64,
    /// Reservations made through the API (an orchestrator publishes the port).
    pinned: BTreeMap<String, Millis>,
    /// Services whose pin changed since [`Core::take_pin_changes`].
    pins_changed: Vec<String>,
    leak_cycles: u32,
    metrics: Metrics,
    /// When a stop or pause event of each container was applied (and
    /// whether it was a pause), for [`STALE_LIST_MS`]: a list started soon
    /// after may predate it.
    stopped_at: HashMap<String, (Millis, bool)>,
}

/// A container list that started less than this long after a stop (or
/// pause) event the bridge applied does not bring the container back to
/// running: the
/// engine emits `die` before its list shows the container exited (seen: a
/// list 17 ms after the event still said running, so a dead replica was
/// routed to until the next resync). A real restart sends a start event,
/// which is believed.
pub const STALE_LIST_MS: Millis = 2000;

fn to_rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

impl Core {
    /// A reconciler over `pool`.
    pub fn new(pool: Pool, leak_cycles: u32, metrics: Metrics) -> Self {
        Core {
            pool,
            registry: Registry::new(),
            engine_lost: false,
            missing: HashMap::new(),
            pending: HashMap::new(),
            pending_seq: 0,
            pinned: BTreeMap::new(),
            pins_changed: Vec::new(),
            leak_cycles,
            metrics,
            stopped_at: HashMap::new(),
        }
    }

    /// Marks a service as reserved through the API (also when restored).
    pub fn pin(&mut self, service: &str, since: Millis) {
        if self.pinned.insert(service.to_string(), since) != Some(since) {
            self.pins_changed.push(service.to_string());
        }
    }

    fn unpin(&mut self, service: &str) {
        if self.pinned.remove(service).is_some() {
            self.pins_changed.push(service.to_string());
        }
    }

    /// API-reserved services, with when they were reserved.
    pub fn pinned(&self) -> impl Iterator<Item = (&str, Millis)> {
        self.pinned.iter().map(|(s, ms)| (s.as_str(), *ms))
    }

    /// When `service` was reserved through the API, if it is pinned.
    pub fn pinned_since(&self, service: &str) -> Option<Millis> {
        self.pinned.get(service).copied()
    }

    /// Services whose pin changed since the last call (a name may repeat;
    /// ask [`Core::pinned_since`] for its state now).
    pub fn take_pin_changes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pins_changed)
    }

    /// Forwarder work for every reserved service (after a restore).
    pub fn open_all(&self) -> Vec<Effect> {
        self.pool
            .reserved()
            .filter(|(s, _)| !self.pinned.contains_key(*s))
            .map(|(s, p)| Effect::Open {
                service: s.to_string(),
                port: p,
            })
            .collect()
    }

    /// The pool (read-only: every change goes through the core).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Containers and services (read-only).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Hands every service whose holding changed since the last call to
    /// `f` (see [`Pool::take_changed`]).
    pub fn take_changed(&mut self, f: impl FnMut(&str, Option<(u16, Option<Millis>)>)) {
        self.pool.take_changed(f);
    }

    /// The engine process is gone (it refuses connections). When it
    /// returns, containers come back with other addresses, and an old
    /// address of one service can be another's; so until the next resync
    /// no service is routed by the old addresses, and the views say so
    /// (`waiting`, [`ENGINE_LOST`]). Connections already spliced carry on.
    pub fn engine_down(&mut self) -> Vec<Effect> {
        self.engine_lost = true;
        self.registry
            .services()
            .keys()
            .map(|s| self.endpoints(s))
            .collect()
    }

    fn endpoints(&self, service: &str) -> Effect {
        let transport = self.registry.transport(service);
        let (upstreams, waiting) = if self.engine_lost {
            // Nothing is known to run; a stdio process's sessions wait for
            // it (no address is trusted, and a stdio one has none).
            let mut all = Vec::new();
            if transport == Transport::Stdio {
                all = self.registry.endpoints(service);
                all.extend(self.registry.waiting(service));
            }
            (Vec::new(), all)
        } else {
            (
                self.registry.endpoints(service),
                self.registry.waiting(service),
            )
        };
        let endpoints = Endpoints {
            transport,
            upstreams,
            waiting,
        };
        Effect::Endpoints {
            service: service.to_string(),
            endpoints,
        }
    }

    /// Makes sure a service with containers holds a port and is forwarded.
    fn ensure(&mut self, service: &str, now: Millis, out: &mut Vec<Effect>) {
        if !self.registry.services().contains_key(service) {
            return;
        }
        self.missing.remove(service);
        self.unpin(service);
        let port = match self.pool.reserve(service, now) {
            Ok(Reservation::AlreadyHeld(p)) => p,
            Ok(Reservation::Assigned { port, outcome }) => {
                self.metrics
                    .allocations
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                if self.pending.remove(service).is_some() {
                    tracing::info!(service, port, "pending service got a port");
                } else {
                    tracing::info!(service, port, outcome = outcome.as_str(), "port reserved");
                }
                port
            }
            Err(e) => {
                match self.pending.get_mut(service) {
                    Some(entry) => entry.1 = e.to_string(),
                    None => {
                        self.metrics.exhaustion_events.inc();
                        tracing::warn!(service, error = %e, "service is pending: no port");
                        self.pending_seq += 1;
                        self.pending
                            .insert(service.to_string(), (self.pending_seq, e.to_string()));
                    }
                }
                return;
            }
        };
        out.push(Effect::Open {
            service: service.to_string(),
            port,
        });
        out.push(self.endpoints(service));
    }

    fn note_change(&mut self, change: &Change, name: &str) {
        match change {
            Change::Duplicate => self.metrics.duplicate_registrations.inc(),
            Change::Rejected(reason) => {
                tracing::warn!(container = name, %reason, "container rejected");
            }
            _ => {}
        }
    }

    /// A container started (event). `replayed` events are observations.
    /// Returns the effects and whether this was a fresh registration whose
    /// latency should be measured.
    pub fn started(
        &mut self,
        info: &ContainerInfo,
        replayed: bool,
        now: Millis,
    ) -> (Vec<Effect>, bool) {
        self.stopped_at.remove(&info.id);
        let change = if replayed {
            self.registry.observe(info, now)
        } else {
            self.registry.register(info, now)
        };
        self.note_change(&change, &info.name);
        let mut out = Vec::new();
        let fresh = matches!(change, Change::Added { .. } | Change::Updated { .. });
        if let Some(c) = self.registry.container(&info.id) {
            let service = c.service.clone();
            self.ensure(&service, now, &mut out);
        }
        (out, fresh && !replayed)
    }

    /// A container stopped running (an event applied at `now`).
    pub fn stopped(&mut self, id: &str, now: Millis) -> Vec<Effect> {
        self.stopped_at.insert(id.to_string(), (now, false));
        match self.registry.set_stopped(id) {
            Some(service) => vec![self.endpoints(&service)],
            None => Vec::new(),
        }
    }

    /// A container was paused (an event applied at `now`): no new work goes
    /// to it, and its MCP sessions wait for it (see [`Registry::waiting`]).
    pub fn paused(&mut self, id: &str, now: Millis) -> Vec<Effect> {
        self.stopped_at.insert(id.to_string(), (now, true));
        match self.registry.set_paused(id) {
            Some(service) => vec![self.endpoints(&service)],
            None => Vec::new(),
        }
    }

    /// A container was removed.
    pub fn destroyed(&mut self, id: &str, now: Millis) -> Vec<Effect> {
        self.stopped_at.remove(id);
        let mut out = Vec::new();
        if let Some((service, empty)) = self.registry.remove(id) {
            if empty {
                self.release(&service, release::REMOVED, now, &mut out);
            } else {
                out.push(self.endpoints(&service));
            }
        }
        out
    }

    fn release(&mut self, service: &str, reason: &str, now: Millis, out: &mut Vec<Effect>) {
        self.pending.remove(service);
        self.missing.remove(service);
        if let Some(port) = self.pool.release(service, now) {
            self.metrics.releases.with_label_values(&[reason]).inc();
            tracing::info!(service, port, reason, "port released into quarantine");
        }
        out.push(Effect::Close {
            service: service.to_string(),
        });
        self.retry_pending(now, out);
    }

    /// A full list from Docker, taken just now.
    pub fn resync(&mut self, containers: &[ContainerInfo], now: Millis) -> Vec<Effect> {
        self.resync_listed(containers, now, now)
    }

    /// A full list from Docker whose listing started at `listed_from`: a
    /// container it shows running that a stop event stopped less than
    /// [`STALE_LIST_MS`] before that stays stopped.
    pub fn resync_listed(
        &mut self,
        containers: &[ContainerInfo],
        now: Millis,
        listed_from: Millis,
    ) -> Vec<Effect> {
        self.stopped_at
            .retain(|_, (t, _)| t.saturating_add(STALE_LIST_MS) >= listed_from);
        // The list is the engine's truth again: its addresses are trusted,
        // and `ensure` below routes every service by them.
        self.engine_lost = false;
        let mut out = Vec::new();
        let seen: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        for id in self.registry.known_ids() {
            if !seen.contains(id.as_str())
                && let Some((service, empty)) = self.registry.remove(&id)
                && !empty
            {
                out.push(self.endpoints(&service));
            }
        }
        for info in containers {
            let change = if let Some(&(_, paused)) =
                self.stopped_at.get(&info.id).filter(|_| info.running)
            {
                let stale = ContainerInfo {
                    running: false,
                    paused,
                    ..info.clone()
                };
                self.registry.observe(&stale, now)
            } else {
                self.registry.observe(info, now)
            };
            self.note_change(&change, &info.name);
        }
        let services: Vec<String> = self.registry.services().keys().cloned().collect();
        for s in &services {
            self.ensure(s, now, &mut out);
        }
        // Reserved services without any container: count, release after N resyncs.
        let orphans: Vec<String> = self
            .pool
            .reserved()
            .map(|(s, _)| s.to_string())
            .filter(|s| !self.registry.services().contains_key(s) && !self.pinned.contains_key(s))
            .collect();
        for s in orphans {
            let n = self.missing.entry(s.clone()).or_insert(0);
            *n += 1;
            if *n >= self.leak_cycles {
                self.metrics.reconcile_leaks.inc();
                tracing::warn!(service = %s, cycles = self.leak_cycles, "no container for the service; releasing its port");
                self.release(&s, release::LEAK, now, &mut out);
            }
        }
        self.pending
            .retain(|s, _| self.registry.services().contains_key(s));
        out
    }

    /// Ends expired quarantines and conflicts; retries pending services.
    pub fn expire(&mut self, now: Millis) -> Vec<Effect> {
        let mut out = Vec::new();
        if !self.pool.expire(now).is_empty() {
            self.retry_pending(now, &mut out);
        }
        out
    }

    /// New port ranges (a configuration reload): see [`Pool::set_ranges`].
    /// Ports a widening adds go to pending services at once, in arrival order.
    pub fn set_ranges(
        &mut self,
        ranges: crate::pool::PortRanges,
        now: Millis,
    ) -> Result<Vec<Effect>, PoolError> {
        self.pool.set_ranges(ranges)?;
        let mut out = Vec::new();
        self.retry_pending(now, &mut out);
        Ok(out)
    }

    fn retry_pending(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let mut waiting: Vec<(u64, String)> = self
            .pending
            .iter()
            .map(|(s, (seq, _))| (*seq, s.clone()))
            .collect();
        waiting.sort();
        for (_, s) in waiting {
            self.ensure(&s, now, out);
        }
    }

    /// The forwarder could not bind `port` for `service`: another process holds it.
    pub fn conflicted(&mut self, service: &str, port: u16, now: Millis) -> Vec<Effect> {
        let mut out = Vec::new();
        self.metrics.conflicts.inc();
        if self.pool.port_of(service) == Some(port) {
            self.metrics
                .releases
                .with_label_values(&[release::CONFLICT])
                .inc();
        }
        self.pool
            .mark_conflicted(port, now.saturating_add(CONFLICT_HOLD_MS));
        tracing::warn!(
            service,
            port,
            "port held by another process; moving the service"
        );
        self.ensure(service, now, &mut out);
        out
    }

    /// `POST /v1/reservations`. Returns the port and whether it was already held.
    pub fn reserve_api(
        &mut self,
        service: &str,
        port: Option<u16>,
        now: Millis,
    ) -> Result<(u16, bool), ReserveError> {
        let r = match port {
            Some(p) => self.pool.reserve_port(service, p, now),
            None => self.pool.reserve(service, now),
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                // One exhaustion event per allocation that found no port.
                if matches!(e, PoolError::Exhausted { .. }) {
                    self.metrics.exhaustion_events.inc();
                }
                return Err(e.into());
            }
        };
        match r {
            Reservation::AlreadyHeld(p) => {
                self.metrics.duplicate_registrations.inc();
                Ok((p, true))
            }
            Reservation::Assigned { port, outcome } => {
                self.metrics
                    .allocations
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                if !self.registry.services().contains_key(service) {
                    self.pin(service, now);
                }
                Ok((port, false))
            }
        }
    }

    /// `DELETE /v1/reservations/{name}`.
    pub fn unreserve_api(&mut self, service: &str, now: Millis) -> Result<u16, ReserveError> {
        if self.registry.services().contains_key(service) {
            return Err(ReserveError::OwnedByDocker(service.to_string()));
        }
        let port = self
            .pool
            .port_of(service)
            .ok_or_else(|| ReserveError::NotHeld(service.to_string()))?;
        self.unpin(service);
        let mut out = Vec::new();
        self.release(service, release::API, now, &mut out);
        Ok(port)
    }

    /// Counts a restored reservation.
    pub fn count_restored(&self) {
        self.metrics
            .allocations
            .with_label_values(&[Outcome::Restored.as_str()])
            .inc();
    }

    /// Pending services (with containers, without a port).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::api::{REPLICA_PAUSED, ServiceState};
    use crate::registry::sample as info;

    fn core(ports: &str, leak: u32) -> Core {
        Core::new(
            Pool::new(ports.parse().unwrap(), 1000),
            leak,
            Metrics::new().unwrap(),
        )
    }

    fn routed(fx: &[Effect], service: &str) -> Option<usize> {
        fx.iter().rev().find_map(|e| match e {
            Effect::Endpoints {
                service: s,
                endpoints,
            } if s == service => Some(endpoints.upstreams.len()),
            _ => None,
        })
    }

    #[test]
    fn engine_loss_stops_routing_views_and_gauges_together_until_the_resync() {
        let mut c = core("100-101", 3);
        let a = info("a", "docs", true);
        let (fx, _) = c.started(&a, false, 0);
        assert_eq!(routed(&fx, "docs"), Some(1));
        let serving = |c: &Core| {
            let v = c.service_views();
            let docs = v.iter().find(|v| v.name == "docs").expect("listed");
            let gauge = c
                .metrics
                .services
                .with_label_values(&[ServiceState::Serving.as_str()])
                .get();
            (docs.state, docs.reason.clone(), gauge)
        };
        assert_eq!(serving(&c), (ServiceState::Serving, None, 1));

        let fx = c.engine_down();
        assert_eq!(routed(&fx, "docs"), Some(0), "no routing by old addresses");
        assert_eq!(
            serving(&c),
            (ServiceState::Waiting, Some(ENGINE_LOST.to_string()), 0),
            "the catalog and the gauge say what routing does"
        );
        // An event before the resync does not route by addresses yet either.
        assert_eq!(routed(&c.stopped("a", 5), "docs"), Some(0));
        let (fx, _) = c.started(&a, false, 10);
        assert_eq!(routed(&fx, "docs"), Some(0));
        assert_eq!(c.pool().port_of("docs"), Some(100), "the port stays");

        let fx = c.resync(&[a], 20);
        assert_eq!(routed(&fx, "docs"), Some(1), "the resync routes again");
        assert_eq!(serving(&c), (ServiceState::Serving, None, 1));
    }

    #[test]
    fn the_registry_view_shows_what_was_started() {
        let mut c = core("100-101", 3);
        assert!(c.registry().known_ids().is_empty());
        let _ = c.started(&info("a", "docs", true), false, 0);
        assert_eq!(
            c.registry().known_ids().into_iter().collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(c.registry().replicas("docs").len(), 1);
    }

    #[test]
    fn a_list_that_started_just_after_a_stop_does_not_revive_the_container() {
        let mut c = core("100-101", 3);
        let a = info("a", "docs", true);
        let _ = c.started(&a, false, 0);
        let _ = c.stopped("a", 1_000);
        // The engine's list still says running: stale, the stop stands.
        let fx = c.resync_listed(std::slice::from_ref(&a), 1_100, 1_020);
        assert_eq!(routed(&fx, "docs"), Some(0), "{fx:?}");
        // A list started after the margin is the truth again.
        let fx = c.resync_listed(std::slice::from_ref(&a), 3_200, 3_001);
        assert_eq!(routed(&fx, "docs"), Some(1), "{fx:?}");
        // A start event is believed at once, and clears the stop.
        let _ = c.stopped("a", 4_000);
        let (fx, _) = c.started(&a, false, 4_010);
        assert_eq!(routed(&fx, "docs"), Some(1));
        let fx = c.resync_listed(std::slice::from_ref(&a), 4_050, 4_020);
        assert_eq!(routed(&fx, "docs"), Some(1), "{fx:?}");
    }

    #[test]
    fn a_paused_replica_is_not_routed_but_waited_for_even_by_a_list_just_after() {
        let mut c = core("100-101", 3);
        let a = info("a", "docs", true);
        let _ = c.started(&a, false, 0);
        let waiting = |fx: &[Effect]| {
            fx.iter().rev().find_map(|e| match e {
                Effect::Endpoints { endpoints, .. } => Some(endpoints.waiting.len()),
                _ => None,
            })
        };
        let fx = c.paused("a", 1_000);
        assert_eq!((routed(&fx, "docs"), waiting(&fx)), (Some(0), Some(1)));
        // The engine's list still says running: stale, the pause stands.
        let fx = c.resync_listed(std::slice::from_ref(&a), 1_100, 1_020);
        assert_eq!((routed(&fx, "docs"), waiting(&fx)), (Some(0), Some(1)));
        let views = c.service_views();
        assert_eq!(views[0].replicas[0].state, REPLICA_PAUSED);
        // The unpause event routes it again.
        let (fx, _) = c.started(&a, false, 1_200);
        assert_eq!((routed(&fx, "docs"), waiting(&fx)), (Some(1), Some(0)));
        assert_eq!(c.metrics.duplicate_registrations.get(), 0);
    }

    #[test]
    fn a_stopped_replica_is_waiting_for_a_replica_and_the_pool_view_counts_it() {
        let mut c = core("100-101", 3);
        let _ = c.started(&info("a", "docs", true), false, 0);
        let _ = c.stopped("a", 1);
        let v = c.service_views();
        let docs = v.iter().find(|v| v.name == "docs").expect("listed");
        assert_eq!(docs.state, ServiceState::Waiting);
        assert_eq!(docs.reason.as_deref(), Some("no running replica"));
        let p = c.pool_view();
        assert_eq!(p.ranges, vec![[100, 101]]);
        assert_eq!((p.capacity, p.in_use, p.free, p.pending), (2, 1, 1, 0));
    }

    #[test]
    fn start_reserves_and_replay_counts_no_duplicate() {
        let mut c = core("100-101", 3);
        let (fx, fresh) = c.started(&info("a", "docs", true), false, 0);
        assert!(fresh);
        assert!(fx.contains(&Effect::Open {
            service: "docs".into(),
            port: 100
        }));
        let _ = c.started(&info("a", "docs", true), true, 1);
        assert_eq!(c.metrics.duplicate_registrations.get(), 0);
        let (_, fresh) = c.started(&info("a", "docs", true), false, 2);
        assert!(!fresh);
        assert_eq!(c.metrics.duplicate_registrations.get(), 1);
        let _ = c.resync(&[info("a", "docs", true)], 3);
        assert_eq!(c.metrics.duplicate_registrations.get(), 1);
    }

    #[test]
    fn exhaustion_counts_once_per_pending_service_and_retries() {
        let mut c = core("100-100", 3);
        let _ = c.started(&info("a", "one", true), false, 0);
        let _ = c.started(&info("b", "two", true), false, 0);
        for t in 1..10 {
            let _ = c.resync(&[info("a", "one", true), info("b", "two", true)], t);
        }
        assert_eq!(c.metrics.exhaustion_events.get(), 1);
        assert_eq!(c.pending(), 1);
        let fx = c.destroyed("a", 20);
        assert_eq!(c.pool.port_of("two"), None, "quarantine keeps it for `one`");
        assert!(fx.contains(&Effect::Close {
            service: "one".into()
        }));
        let fx = c.expire(20 + 1000);
        assert!(fx.contains(&Effect::Open {
            service: "two".into(),
            port: 100
        }));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn pending_services_get_freed_ports_in_arrival_order() {
        let mut c = core("100-100", 3);
        let _ = c.started(&info("a", "first", true), false, 0);
        let _ = c.started(&info("z", "zeta", true), false, 1);
        let _ = c.started(&info("b", "alpha", true), false, 2);
        assert_eq!(c.pending(), 2);
        let _ = c.destroyed("a", 3);
        let _ = c.expire(3 + 1000);
        assert_eq!(c.pool.port_of("zeta"), Some(100), "oldest pending first");
        assert_eq!(c.pool.port_of("alpha"), None);
        assert_eq!(c.metrics.exhaustion_events.get(), 2);
    }

    #[test]
    fn leak_needs_consecutive_resyncs() {
        let mut c = core("100-109", 3);
        c.pool
            .restore("ghost", 105, &crate::pool::RestoreState::Reserved)
            .unwrap();
        let _ = c.resync(&[], 1);
        let _ = c.resync(&[], 2);
        assert_eq!(c.pool.port_of("ghost"), Some(105));
        // it comes back: the count starts again
        let _ = c.resync(&[info("g", "ghost", true)], 3);
        let _ = c.resync(&[], 4);
        let _ = c.resync(&[], 5);
        assert_eq!(c.pool.port_of("ghost"), Some(105));
        let fx = c.resync(&[], 6);
        assert_eq!(c.pool.port_of("ghost"), None);
        assert_eq!(c.pool.quarantined_port_of("ghost"), Some(105));
        assert!(fx.contains(&Effect::Close {
            service: "ghost".into()
        }));
        assert_eq!(c.metrics.reconcile_leaks.get(), 1);
    }

    #[test]
    fn conflict_moves_the_service() {
        let mut c = core("100-101", 3);
        let _ = c.started(&info("a", "docs", true), false, 0);
        let fx = c.conflicted("docs", 100, 1);
        assert!(fx.contains(&Effect::Open {
            service: "docs".into(),
            port: 101
        }));
        assert_eq!(c.metrics.conflicts.get(), 1);
    }

    #[test]
    fn api_reservation_on_a_full_pool_counts_exhaustion() {
        let mut c = core("100-100", 3);
        c.reserve_api("one", None, 0).unwrap();
        assert!(c.reserve_api("two", None, 1).is_err());
        assert_eq!(c.metrics.exhaustion_events.get(), 1);
    }

    #[test]
    fn api_reservations_pin_until_a_container_or_a_delete() {
        let mut c = core("100-101", 3);
        assert_eq!(c.reserve_api("ext", None, 7).unwrap(), (100, false));
        assert_eq!(c.pinned_since("ext"), Some(7));
        assert_eq!(c.pinned().collect::<Vec<_>>(), vec![("ext", 7)]);
        assert_eq!(c.take_pin_changes(), vec!["ext".to_string()]);
        assert!(c.take_pin_changes().is_empty(), "taken once");
        // The same pin again is no change.
        c.pin("ext", 7);
        assert!(c.take_pin_changes().is_empty());
        // A pinned service is opened by the API, not by a restore.
        assert!(c.open_all().is_empty());
        // A container of it arrives: Docker owns it now, the pin goes.
        let _ = c.started(&info("a", "ext", true), false, 8);
        assert_eq!(c.pinned_since("ext"), None);
        assert_eq!(c.take_pin_changes(), vec!["ext".to_string()]);
        assert_eq!(
            c.open_all(),
            vec![Effect::Open {
                service: "ext".into(),
                port: 100
            }]
        );
        assert!(matches!(
            c.unreserve_api("ext", 9),
            Err(ReserveError::OwnedByDocker(_))
        ));
        // Another API reservation, deleted: unpinned and released.
        c.reserve_api("other", Some(101), 10).unwrap();
        let _ = c.take_pin_changes();
        assert_eq!(c.unreserve_api("other", 11).unwrap(), 101);
        assert_eq!(c.take_pin_changes(), vec!["other".to_string()]);
        assert_eq!(c.pool().quarantined_port_of("other"), Some(101));
    }

    #[test]
    fn views_give_times_in_rfc3339() {
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(86_400_000 + 1_500), "1970-01-02T00:00:01Z");
        let mut c = core("100-101", 3);
        c.reserve_api("ext", None, 86_400_000).unwrap();
        let v = c.service_views();
        assert_eq!(v[0].since.as_deref(), Some("1970-01-02T00:00:00Z"));
    }

    #[test]
    fn widening_gives_pending_services_ports_at_once() {
        let mut c = core("100-100", 3);
        let _ = c.started(&info("a", "one", true), false, 0);
        let _ = c.started(&info("b", "two", true), false, 1);
        assert_eq!(c.pending(), 1);
        let fx = c.set_ranges("100-101".parse().unwrap(), 2).unwrap();
        assert!(fx.contains(&Effect::Open {
            service: "two".into(),
            port: 101
        }));
        assert_eq!(routed(&fx, "two"), Some(1));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_conflict_on_the_services_own_port_counts_a_release() {
        let mut c = core("100-102", 3);
        let _ = c.started(&info("a", "docs", true), false, 0);
        let released = |c: &Core| {
            c.metrics
                .releases
                .with_label_values(&[release::CONFLICT])
                .get()
        };
        // A port it does not hold: no release.
        let _ = c.conflicted("docs", 102, 1);
        assert_eq!(released(&c), 0);
        let _ = c.conflicted("docs", 100, 2);
        assert_eq!(released(&c), 1);
        assert_eq!(c.pool().port_of("docs"), Some(101));
    }

    #[test]
    fn restored_reservations_are_counted() {
        let c = core("100-101", 3);
        c.count_restored();
        let n = |o: Outcome| c.metrics.allocations.with_label_values(&[o.as_str()]).get();
        assert_eq!((n(Outcome::Restored), n(Outcome::New)), (1, 0));
    }

    #[test]
    fn a_resync_reroutes_a_service_that_lost_one_of_two_replicas() {
        let mut c = core("100-101", 3);
        let mut b = info("b", "docs", true);
        b.networks = vec![("bridge".into(), "172.17.0.3".parse().ok())];
        let fx = c.resync(&[info("a", "docs", true), b.clone()], 0);
        assert_eq!(routed(&fx, "docs"), Some(2));
        let fx = c.resync(&[b], 1);
        assert_eq!(routed(&fx, "docs"), Some(1), "{fx:?}");
        // The last replica gone: no endpoints effect for a service that is no more.
        let fx = c.resync(&[], 2);
        assert_eq!(routed(&fx, "docs"), None, "{fx:?}");
    }

    #[test]
    fn handed_changes_name_what_the_core_reserved() {
        let mut c = core("100-101", 3);
        c.pool.track_changes();
        let _ = c.started(&info("a", "docs", true), false, 0);
        let mut seen = Vec::new();
        c.take_changed(|s, h| seen.push((s.to_string(), h)));
        assert_eq!(seen, vec![("docs".to_string(), Some((100, None)))]);
    }

    #[test]
    fn api_reservations_are_idempotent_and_not_leaked() {
        let mut c = core("100-101", 1);
        assert_eq!(c.reserve_api("ext", None, 0).unwrap(), (100, false));
        assert_eq!(c.reserve_api("ext", None, 1).unwrap(), (100, true));
        assert_eq!(c.metrics.duplicate_registrations.get(), 1);
        let _ = c.resync(&[], 2);
        assert_eq!(c.pool.port_of("ext"), Some(100));
        assert_eq!(c.unreserve_api("ext", 3).unwrap(), 100);
        assert!(c.unreserve_api("ext", 4).is_err());
    }
}
