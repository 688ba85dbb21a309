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
/// `GET`: [`OPENAPI_DOCUMENT`].
pub const OPENAPI: &str = "/v1/openapi.json";

/// The OpenAPI 3.1 description of every path above, served at [`OPENAPI`];
/// schemathesis checks the live bridge against it (`tests/e2e/contract.rs`).
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

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
/// `ReplicaView::state` of a paused replica (`docker pause`): no new
/// sessions go to it, and its sessions wait for it.
pub const REPLICA_PAUSED: &str = "paused";
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
    /// `running`, `paused`, `stopped`, `rejected`, or `unreachable: <why>`.
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
    /// A specific port, if asked (absent or null: any free port). JSON has
    /// one number type, so `8080.0` is the integer 8080, as JSON Schema says.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integral_port"
    )]
    pub port: Option<u16>,
}

/// A port given as any JSON number with no fraction, within 0-65535.
fn integral_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=65535.0).contains(f))
            .map(|f| f as u64)
    });
    whole
        .and_then(|w| u16::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!(
                "`port` must be a whole number from 1 to 65535, not {n}"
            ))
        })
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

    fn json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).expect("serializes")
    }

    /// The document's schema named `name`.
    fn schema(doc: &serde_json::Value, name: &str) -> serde_json::Value {
        doc["components"]["schemas"][name].clone()
    }

    /// `value` has every key `schema` requires and none it does not list.
    fn keys_agree(value: &serde_json::Value, schema: &serde_json::Value, what: &str) {
        let obj = value.as_object().expect("an object");
        let props = schema["properties"].as_object().expect("properties");
        for k in obj.keys() {
            assert!(
                props.contains_key(k),
                "{what}: `{k}` is served but not documented"
            );
        }
        for k in schema["required"].as_array().expect("required") {
            let k = k.as_str().expect("a key");
            assert!(
                obj.contains_key(k),
                "{what}: `{k}` is required but not served"
            );
        }
    }

    #[test]
    fn the_openapi_document_describes_every_path_and_body() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: std::collections::BTreeSet<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        let service = format!("{SERVICE_PREFIX}{{name}}");
        let reservation = format!("{RESERVATION_PREFIX}{{name}}");
        let routed: std::collections::BTreeSet<&str> = [
            METRICS,
            HEALTHZ,
            READYZ,
            OPENAPI,
            POOL,
            SERVICES,
            &service,
            RESERVATIONS,
            &reservation,
        ]
        .into_iter()
        .collect();
        assert_eq!(documented, routed);

        let states: Vec<&str> = ServiceState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            schema(&doc, "ServiceState")["enum"],
            serde_json::json!(states)
        );

        let replica = ReplicaView {
            container_id: "abc".into(),
            address: None,
            state: REPLICA_RUNNING.into(),
            sessions: Some(1),
        };
        let view = ServiceView {
            name: "docs".into(),
            port: Some(1),
            state: ServiceState::Serving,
            replicas: vec![replica.clone()],
            since: None,
            reason: None,
        };
        keys_agree(&json(&view), &schema(&doc, "Service"), "Service");
        keys_agree(&json(&replica), &schema(&doc, "Replica"), "Replica");
        keys_agree(&json(&PoolView::default()), &schema(&doc, "Pool"), "Pool");
        let released = Reservation {
            service: "docs".into(),
            port: 1,
            state: Some(ServiceState::Quarantined),
        };
        keys_agree(
            &json(&released),
            &schema(&doc, "Reservation"),
            "Reservation",
        );
        assert_eq!(
            schema(&doc, "Reservation")["properties"]["state"]["const"],
            "quarantined"
        );
        let ask = ReserveRequest {
            service: "docs".into(),
            port: Some(1),
        };
        keys_agree(
            &json(&ask),
            &schema(&doc, "ReserveRequest"),
            "ReserveRequest",
        );
        let e = ErrorBody { error: "x".into() };
        keys_agree(&json(&e), &schema(&doc, "Error"), "Error");
    }

    #[test]
    fn a_port_is_any_whole_json_number_and_nothing_else() {
        let port = |body: &str| serde_json::from_str::<ReserveRequest>(body).map(|r| r.port);
        assert_eq!(port(r#"{"service":"a"}"#).unwrap(), None);
        assert_eq!(port(r#"{"service":"a","port":null}"#).unwrap(), None);
        assert_eq!(port(r#"{"service":"a","port":8080}"#).unwrap(), Some(8080));
        assert_eq!(
            port(r#"{"service":"a","port":8080.0}"#).unwrap(),
            Some(8080)
        );
        assert_eq!(port(r#"{"service":"a","port":8e3}"#).unwrap(), Some(8000));
        for bad in ["8080.5", "-1", "65536", "1e300", "\"80\"", "true", "[80]"] {
            let e = port(&format!(r#"{{"service":"a","port":{bad}}}"#)).unwrap_err();
            assert!(
                e.to_string().contains("port") || e.to_string().contains("invalid type"),
                "{bad}: {e}"
            );
        }
    }
}
