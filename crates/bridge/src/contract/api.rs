//! The HTTP API's paths and JSON bodies (docs/DESIGN.md section 3.3), with
//! Serialize and Deserialize so the bridge serves them and its clients
//! (`mesh-bridge status`, the harness's probes) read them as the same types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `GET`: every service.
pub const SERVICES: &str = "/v1/services";
/// `GET {SERVICES}/{name}`: one service.
pub const SERVICE_PREFIX: &str = "/v1/services/";
/// `GET`: the pool.
pub const POOL: &str = "/v1/pool";
/// `POST`: reserve a port for a service without containers.
pub const RESERVATIONS: &str = "/v1/reservations";
/// `DELETE {RESERVATION_PREFIX}{name}`: release it.
pub const RESERVATION_PREFIX: &str = "/v1/reservations/";
/// `GET`: Prometheus text format.
pub const METRICS: &str = "/metrics";
/// `GET`: the process is alive.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: 200 once the first resync is applied, else 503 with the reason.
pub const READYZ: &str = "/readyz";

/// What a service is doing, as `/v1/services` and `services{state}` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Holds a port and has a running replica (or an API reservation).
    Serving,
    /// Holds a port; no replica runs.
    Waiting,
    /// No container; its port is kept for it until grace ends.
    Quarantined,
    /// Has containers but no port (the pool is exhausted).
    Pending,
    /// A container whose labels were refused; the reason says why.
    Rejected,
}

impl ServiceState {
    /// Every state, in the order the API documents them.
    pub const ALL: [ServiceState; 5] = [
        ServiceState::Serving,
        ServiceState::Waiting,
        ServiceState::Quarantined,
        ServiceState::Pending,
        ServiceState::Rejected,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Serving => "serving",
            ServiceState::Waiting => "waiting",
            ServiceState::Quarantined => "quarantined",
            ServiceState::Pending => "pending",
            ServiceState::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ReplicaView::state` of a running replica.
pub const REPLICA_RUNNING: &str = "running";
/// `ReplicaView::state` of a stopped replica.
pub const REPLICA_STOPPED: &str = "stopped";
/// `ReplicaView::state` of a refused container.
pub const REPLICA_REJECTED: &str = "rejected";
/// Prefix of `ReplicaView::state` for a replica that cannot be dialled
/// (`unreachable: <why>`).
pub const REPLICA_UNREACHABLE: &str = "unreachable: ";

/// One replica of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Container id.
    pub container_id: String,
    /// `address:port` dialled, or null.
    pub address: Option<String>,
    /// `running`, `stopped`, `rejected`, or `unreachable: <why>`.
    pub state: String,
    /// Live MCP sessions this replica created (`streamable-http` and `sse`
    /// services, in `/v1/services/{name}`; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
}

impl ReplicaView {
    /// The replica runs (and can be dialled).
    pub fn is_running(&self) -> bool {
        self.state == REPLICA_RUNNING
    }
}

/// One service (`/v1/services`, `/v1/services/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Its port (null while pending or rejected).
    pub port: Option<u16>,
    /// What it is doing.
    pub state: ServiceState,
    /// Its containers.
    pub replicas: Vec<ReplicaView>,
    /// RFC 3339 time the service appeared (or the reservation was made).
    pub since: Option<String>,
    /// Why it is waiting, quarantined, pending or rejected.
    pub reason: Option<String>,
}

/// `GET /v1/pool`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolView {
    /// Inclusive ranges.
    pub ranges: Vec<[u16; 2]>,
    /// Ports in the ranges.
    pub capacity: usize,
    /// Reserved.
    pub in_use: usize,
    /// Quarantined.
    pub quarantined: usize,
    /// Conflicted.
    pub conflicted: usize,
    /// Free.
    pub free: usize,
    /// Services waiting for a port.
    pub pending: usize,
}

/// `POST /v1/reservations` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The service.
    pub service: String,
    /// A specific port, if asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Answer of `POST /v1/reservations` (201 new, 200 already held) and of
/// `DELETE /v1/reservations/{name}` (200, `state` quarantined).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The service.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// Set on release: the port is quarantined for the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
}

/// Body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_by_their_wire_names() {
        for s in ServiceState::ALL {
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<ServiceState>(&json).expect("back"),
                s
            );
        }
        assert!(serde_json::from_str::<ServiceState>("\"busy\"").is_err());
    }

    #[test]
    fn a_service_reads_back_as_it_was_served() {
        let v = ServiceView {
            name: "docs".into(),
            port: Some(20001),
            state: ServiceState::Serving,
            replicas: vec![ReplicaView {
                container_id: "abc".into(),
                address: Some("172.17.0.2:8080".into()),
                state: REPLICA_RUNNING.into(),
                sessions: Some(3),
            }],
            since: Some("2026-12-02T00:00:00Z".into()),
            reason: None,
        };
        let back: ServiceView =
            serde_json::from_str(&serde_json::to_string(&v).expect("json")).expect("back");
        assert_eq!(back, v);
        assert!(back.replicas[0].is_running());
    }
}
