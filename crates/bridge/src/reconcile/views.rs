//! What the API and the `services{state}` gauge show of the core: one
//! [`ServiceView`] per service, built from the registry, the pool, the
//! pending queue and the API pins together, so they never disagree.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::{Core, to_rfc3339};
use crate::contract::api::{
    PoolView, REPLICA_PAUSED, REPLICA_REJECTED, REPLICA_RUNNING, REPLICA_STOPPED,
    REPLICA_UNREACHABLE, ReplicaView, ServiceState, ServiceView,
};

/// Why a service with running replicas is `waiting` after the engine went away.
pub const ENGINE_LOST: &str =
    "the Docker engine went away: new connections wait for the resync after it returns";

impl Core {
    /// Every service as the API shows it.
    fn views(&self) -> Vec<ServiceView> {
        let mut out = Vec::new();
        let mut named: BTreeSet<&str> = BTreeSet::new();
        for (name, svc) in self.registry.services() {
            named.insert(name);
            let replicas: Vec<ReplicaView> = self
                .registry
                .replicas(name)
                .into_iter()
                .map(|c| ReplicaView {
                    container_id: c.id.clone(),
                    address: c.address.map(|a| SocketAddr::new(a, c.port).to_string()),
                    state: match (&c.problem, c.running, c.paused) {
                        (Some(p), _, _) => format!("{REPLICA_UNREACHABLE}{p}"),
                        (None, true, _) => REPLICA_RUNNING.into(),
                        (None, false, true) => REPLICA_PAUSED.into(),
                        (None, false, false) => REPLICA_STOPPED.into(),
                    },
                    sessions: None,
                })
                .collect();
            let port = self.pool.port_of(name);
            let serving = !self.engine_lost && !self.registry.endpoints(name).is_empty();
            let (state, reason) = match (port, serving) {
                (None, _) => (
                    ServiceState::Pending,
                    self.pending.get(name.as_str()).map(|(_, r)| r.clone()),
                ),
                (Some(_), true) => (ServiceState::Serving, None),
                (Some(_), false) if self.engine_lost => {
                    (ServiceState::Waiting, Some(ENGINE_LOST.to_string()))
                }
                (Some(_), false) => (
                    ServiceState::Waiting,
                    Some("no running replica".to_string()),
                ),
            };
            out.push(ServiceView {
                name: name.clone(),
                port,
                state,
                replicas,
                since: Some(to_rfc3339(svc.since)),
                reason,
            });
        }
        for (service, port, until) in self.pool.holdings() {
            if named.contains(service) {
                continue;
            }
            let (state, reason) = match (until, self.pinned.contains_key(service)) {
                (Some(u), _) => (
                    ServiceState::Quarantined,
                    Some(format!("kept for the service until {}", to_rfc3339(u))),
                ),
                (None, true) => (
                    ServiceState::Serving,
                    Some("reserved through the API".to_string()),
                ),
                (None, false) => (
                    ServiceState::Waiting,
                    Some("no container seen since the reservation was restored".to_string()),
                ),
            };
            out.push(ServiceView {
                name: service.to_string(),
                port: Some(port),
                state,
                replicas: Vec::new(),
                since: self.pinned.get(service).map(|ms| to_rfc3339(*ms)),
                reason,
            });
        }
        for r in self.registry.rejected() {
            out.push(ServiceView {
                name: r.service.clone().unwrap_or_default(),
                port: None,
                state: ServiceState::Rejected,
                replicas: vec![ReplicaView {
                    container_id: r.id.clone(),
                    address: None,
                    state: REPLICA_REJECTED.into(),
                    sessions: None,
                }],
                since: None,
                reason: Some(r.reason.clone()),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The pool as `/v1/pool` shows it. Sets the pool gauges from the same
    /// counts (the one place they are written), so the two always agree.
    pub fn pool_view(&self) -> PoolView {
        let c = self.pool.counts();
        self.metrics.set_pool(&c);
        PoolView::new(self.pool.ranges().as_pairs(), c, self.pending())
    }

    /// Every service as the API shows it; sets the `services{state}` gauge
    /// from the same list (the one place it is written).
    pub fn service_views(&self) -> Vec<ServiceView> {
        let views = self.views();
        for state in ServiceState::ALL {
            let n = views.iter().filter(|v| v.state == state).count();
            self.metrics
                .services
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
        views
    }
}
