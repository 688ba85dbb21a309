//! Every `mesh_bridge_*` metric: name, type, label names and help, and the
//! values of the bounded labels. `crate::metrics` and the forwarder register
//! exactly this table (a test checks it); the harness, the bench and the
//! dashboards check read names from here.

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, `_sum` and `_count`.
    Histogram,
}

/// One metric of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Def {
    /// Full name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names (empty for none).
    pub labels: &'static [&'static str],
    /// HELP text.
    pub help: &'static str,
}

impl Def {
    /// `name_count` of a histogram.
    pub fn count(&self) -> String {
        format!("{}_count", self.name)
    }

    /// `name_sum` of a histogram.
    pub fn sum(&self) -> String {
        format!("{}_sum", self.name)
    }

    /// `name_bucket` of a histogram.
    pub fn bucket(&self) -> String {
        format!("{}_bucket", self.name)
    }

    /// The series `name{label="value"}` as the text format writes it.
    pub fn with(&self, label: &str, value: &str) -> String {
        format!("{}{{{label}=\"{value}\"}}", self.name)
    }
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// `ports_capacity`.
pub const PORTS_CAPACITY: Def = def(
    "mesh_bridge_ports_capacity",
    Gauge,
    &[],
    "Ports in the configured ranges",
);
/// `ports_in_use`.
pub const PORTS_IN_USE: Def = def(
    "mesh_bridge_ports_in_use",
    Gauge,
    &[],
    "Ports reserved by a service",
);
/// `ports_quarantined`.
pub const PORTS_QUARANTINED: Def = def(
    "mesh_bridge_ports_quarantined",
    Gauge,
    &[],
    "Released ports kept for their service until grace ends",
);
/// `ports_conflicted`.
pub const PORTS_CONFLICTED: Def = def(
    "mesh_bridge_ports_conflicted",
    Gauge,
    &[],
    "Ports of the range held by another process",
);
/// `port_exhaustion_events_total`.
pub const EXHAUSTION_EVENTS: Def = def(
    "mesh_bridge_port_exhaustion_events_total",
    Counter,
    &[],
    "Allocations that found no free port (one per service that became pending)",
);
/// `duplicate_registration_attempts_total`.
pub const DUPLICATE_REGISTRATIONS: Def = def(
    "mesh_bridge_duplicate_registration_attempts_total",
    Counter,
    &[],
    "Registrations of a container or reservation that was already registered",
);
/// `port_allocations_total{outcome}` ([`outcome`]).
pub const ALLOCATIONS: Def = def(
    "mesh_bridge_port_allocations_total",
    Counter,
    &["outcome"],
    "Ports assigned, by outcome (new, sticky, restored)",
);
/// `port_releases_total{reason}` ([`release`]).
pub const RELEASES: Def = def(
    "mesh_bridge_port_releases_total",
    Counter,
    &["reason"],
    "Ports released, by reason",
);
/// `port_conflicts_total`.
pub const CONFLICTS: Def = def(
    "mesh_bridge_port_conflicts_total",
    Counter,
    &[],
    "Binds that failed because another process held the port",
);
/// `services{state}` (`super::api::ServiceState`).
pub const SERVICES: Def = def(
    "mesh_bridge_services",
    Gauge,
    &["state"],
    "Services by state",
);
/// `registration_latency_seconds`.
pub const REGISTRATION_LATENCY: Def = def(
    "mesh_bridge_registration_latency_seconds",
    Histogram,
    &[],
    "Docker start event to the service's port serving",
);
/// `reconcile_duration_seconds`.
pub const RECONCILE_DURATION: Def = def(
    "mesh_bridge_reconcile_duration_seconds",
    Histogram,
    &[],
    "Duration of a full resync with Docker",
);
/// `reconcile_leaks_total`.
pub const RECONCILE_LEAKS: Def = def(
    "mesh_bridge_reconcile_leaks_total",
    Counter,
    &[],
    "Reservations released because their service had no container for --leak-cycles resyncs",
);
/// `docker_connected`.
pub const DOCKER_CONNECTED: Def = def(
    "mesh_bridge_docker_connected",
    Gauge,
    &[],
    "1 while the Docker event stream is connected",
);
/// `docker_reconnects_total`.
pub const DOCKER_RECONNECTS: Def = def(
    "mesh_bridge_docker_reconnects_total",
    Counter,
    &[],
    "Reconnections to the Docker engine",
);
/// `docker_events_total{action}` ([`DOCKER_ACTIONS`], `exec`, `other`).
pub const DOCKER_EVENTS: Def = def(
    "mesh_bridge_docker_events_total",
    Counter,
    &["action"],
    "Docker container events received, by action",
);
/// `store_write_duration_seconds`.
pub const STORE_WRITE_DURATION: Def = def(
    "mesh_bridge_store_write_duration_seconds",
    Histogram,
    &[],
    "Duration of one store transaction",
);
/// `store_errors_total`.
pub const STORE_ERRORS: Def = def(
    "mesh_bridge_store_errors_total",
    Counter,
    &[],
    "Failed store operations",
);
/// `build_info{version}`.
pub const BUILD_INFO: Def = def(
    "mesh_bridge_build_info",
    Gauge,
    &["version"],
    "Build information; value is always 1",
);
/// `config_reloads_total{result}` ([`reload`]).
pub const CONFIG_RELOADS: Def = def(
    "mesh_bridge_config_reloads_total",
    Counter,
    &["result"],
    "Configuration reloads on SIGHUP, by result (applied, refused)",
);
/// `forward_connections_total{service}`.
pub const FORWARD_CONNECTIONS: Def = def(
    "mesh_bridge_forward_connections_total",
    Counter,
    &["service"],
    "Client connections accepted by the forwarder, by service.",
);
/// `forward_active_connections{service}`.
pub const FORWARD_ACTIVE: Def = def(
    "mesh_bridge_forward_active_connections",
    Gauge,
    &["service"],
    "Client connections currently open through the forwarder, by service.",
);
/// `forward_upstream_errors_total{service}`.
pub const FORWARD_UPSTREAM_ERRORS: Def = def(
    "mesh_bridge_forward_upstream_errors_total",
    Counter,
    &["service"],
    "Failed attempts to reach a replica (refused, reset, timed out), by service.",
);

/// `mcp_sessions{service}`.
pub const MCP_SESSIONS: Def = def(
    "mesh_bridge_mcp_sessions",
    Gauge,
    &["service"],
    "MCP sessions the bridge routes (created through it and not ended, idle at most an hour), by service.",
);
/// `mcp_requests_total{service,method}` ([`mcp_method`]).
pub const MCP_REQUESTS: Def = def(
    "mesh_bridge_mcp_requests_total",
    Counter,
    &["service", "method"],
    "MCP JSON-RPC messages routed, by service and method (the spec's methods; anything else is other).",
);
/// `mcp_session_misses_total{service,reason}` ([`miss`]).
pub const MCP_SESSION_MISSES: Def = def(
    "mesh_bridge_mcp_session_misses_total",
    Counter,
    &["service", "reason"],
    "Requests naming a session the bridge could not route to the replica that created it, by reason.",
);
/// `mcp_request_duration_seconds{service}`.
pub const MCP_REQUEST_DURATION: Def = def(
    "mesh_bridge_mcp_request_duration_seconds",
    Histogram,
    &["service"],
    "Time from an MCP HTTP request to its response headers, through the bridge, by service.",
);

/// `stdio_attaches_total{service}`.
pub const STDIO_ATTACHES: Def = def(
    "mesh_bridge_stdio_attaches_total",
    Counter,
    &["service"],
    "Attaches to stdio servers' processes (the first and every re-attach), by service.",
);
/// `stdio_restarts_total{service}`.
pub const STDIO_RESTARTS: Def = def(
    "mesh_bridge_stdio_restarts_total",
    Counter,
    &["service"],
    "New processes of stdio servers seen (a container restarted or crashed), each initialised again, by service.",
);
/// `stdio_in_flight{service}`.
pub const STDIO_IN_FLIGHT: Def = def(
    "mesh_bridge_stdio_in_flight",
    Gauge,
    &["service"],
    "Client requests at stdio servers not answered yet, by service.",
);
/// `stdio_dropped_lines_total{service}`.
pub const STDIO_DROPPED_LINES: Def = def(
    "mesh_bridge_stdio_dropped_lines_total",
    Counter,
    &["service"],
    "Lines stdio servers wrote to stdout that were not JSON-RPC or were too long, skipped, by service.",
);
/// `stdio_stderr_lines_total{service}`.
pub const STDIO_STDERR_LINES: Def = def(
    "mesh_bridge_stdio_stderr_lines_total",
    Counter,
    &["service"],
    "Lines stdio servers wrote to stderr (logged at most 60 a minute each), by service.",
);
/// `stdio_dropped_messages_total{service}`.
pub const STDIO_DROPPED_MESSAGES: Def = def(
    "mesh_bridge_stdio_dropped_messages_total",
    Counter,
    &["service"],
    "Messages for stdio clients that were too slow to take them, or for stdin while it was full or detached, by service.",
);

/// The metrics only a `stdio` service has series of.
pub const STDIO: [Def; 6] = [
    STDIO_ATTACHES,
    STDIO_RESTARTS,
    STDIO_IN_FLIGHT,
    STDIO_DROPPED_LINES,
    STDIO_STDERR_LINES,
    STDIO_DROPPED_MESSAGES,
];

/// The whole table, in DESIGN's order.
pub const ALL: [Def; 33] = [
    PORTS_CAPACITY,
    PORTS_IN_USE,
    PORTS_QUARANTINED,
    PORTS_CONFLICTED,
    EXHAUSTION_EVENTS,
    DUPLICATE_REGISTRATIONS,
    ALLOCATIONS,
    RELEASES,
    CONFLICTS,
    SERVICES,
    REGISTRATION_LATENCY,
    RECONCILE_DURATION,
    RECONCILE_LEAKS,
    DOCKER_CONNECTED,
    DOCKER_RECONNECTS,
    DOCKER_EVENTS,
    STORE_WRITE_DURATION,
    STORE_ERRORS,
    BUILD_INFO,
    CONFIG_RELOADS,
    FORWARD_CONNECTIONS,
    FORWARD_ACTIVE,
    FORWARD_UPSTREAM_ERRORS,
    MCP_SESSIONS,
    MCP_REQUESTS,
    MCP_SESSION_MISSES,
    MCP_REQUEST_DURATION,
    STDIO_ATTACHES,
    STDIO_RESTARTS,
    STDIO_IN_FLIGHT,
    STDIO_DROPPED_LINES,
    STDIO_STDERR_LINES,
    STDIO_DROPPED_MESSAGES,
];

/// Values of `mcp_requests_total{method}`: the MCP specification's
/// (2025-06-18) requests and notifications; [`mcp_method::OTHER`] for any
/// other method and for JSON-RPC responses a client sends back.
pub mod mcp_method {
    /// A method not in the specification, or a response.
    pub const OTHER: &str = "other";
    /// The request that opens a session.
    pub const INITIALIZE: &str = "initialize";
    /// Liveness, either way.
    pub const PING: &str = "ping";
    /// The client's notice that initialisation is done.
    pub const INITIALIZED: &str = "notifications/initialized";
    /// Either side giving up on a request it sent.
    pub const CANCELLED: &str = "notifications/cancelled";
    /// Progress of a request that carried `_meta.progressToken`.
    pub const PROGRESS: &str = "notifications/progress";
    /// Every method of the specification.
    pub const SPEC: &[&str] = &[
        INITIALIZE,
        PING,
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        INITIALIZED,
        CANCELLED,
        PROGRESS,
        "notifications/roots/list_changed",
    ];

    /// The label value for a message's method.
    pub fn label(method: Option<&str>) -> &'static str {
        method
            .and_then(|m| SPEC.iter().find(|s| **s == m))
            .copied()
            .unwrap_or(OTHER)
    }
}

/// Values of `mcp_session_misses_total{reason}`.
pub mod miss {
    /// The replica that created the session is no longer running.
    pub const REPLICA_GONE: &str = "replica-gone";
    /// The session id was not made by this bridge (no replica in it).
    pub const UNKNOWN: &str = "unknown";
    /// The replica answered 404: it no longer knows the session.
    pub const EXPIRED: &str = "expired";
    /// Every value.
    pub const ALL: [&str; 3] = [REPLICA_GONE, UNKNOWN, EXPIRED];
}

/// Values of `port_allocations_total{outcome}`.
pub mod outcome {
    /// A port never held by the service before.
    pub const NEW: &str = "new";
    /// The service's last port, handed back.
    pub const STICKY: &str = "sticky";
    /// Read back from the store at start-up.
    pub const RESTORED: &str = "restored";
    /// Every value.
    pub const ALL: [&str; 3] = [NEW, STICKY, RESTORED];
}

/// Values of `port_releases_total{reason}`.
pub mod release {
    /// The service's last container was removed.
    pub const REMOVED: &str = "removed";
    /// The reconciler found no container for `--leak-cycles` resyncs.
    pub const LEAK: &str = "leak";
    /// An API client deleted the reservation.
    pub const API: &str = "api";
    /// Another process held the port.
    pub const CONFLICT: &str = "conflict";
    /// Every value.
    pub const ALL: [&str; 4] = [REMOVED, LEAK, API, CONFLICT];
}

/// Values of `config_reloads_total{result}`.
pub mod reload {
    /// The new configuration is in effect (possibly with keys that need a restart).
    pub const APPLIED: &str = "applied";
    /// The file was invalid or a change was refused; the old configuration stays.
    pub const REFUSED: &str = "refused";
    /// Every value.
    pub const ALL: [&str; 2] = [APPLIED, REFUSED];
}

/// Docker event actions counted by name in `docker_events_total{action}`;
/// `exec_*` is counted as `exec` and anything else as `other`, so the label
/// stays bounded (exec actions carry the command line).
pub const DOCKER_ACTIONS: &[&str] = &[
    "create",
    "start",
    "restart",
    "stop",
    "die",
    "kill",
    "pause",
    "unpause",
    "destroy",
    "oom",
    "rename",
    "health_status",
];
