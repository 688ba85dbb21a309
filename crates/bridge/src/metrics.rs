//! The bridge's Prometheus metrics (names of docs/DESIGN.md section 3, all prefixed
//! `mesh_bridge_`). One [`prometheus::Registry`] is owned by the app and passed
//! down; nothing here is a global static.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::pool::PoolCounts;

/// Label values of `port_releases_total{reason}`.
pub mod release {
    /// The service's last container was removed.
    pub const REMOVED: &str = "removed";
    /// The reconciler found no container for `--leak-cycles` resyncs.
    pub const LEAK: &str = "leak";
    /// An API client deleted the reservation.
    pub const API: &str = "api";
    /// Another process held the port.
    pub const CONFLICT: &str = "conflict";
}

/// Docker event actions counted by name; anything else is counted as `other`
/// so the label stays bounded (exec actions carry the command line).
const ACTIONS: &[&str] = &[
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

/// Every metric of the bridge except the forwarder's (see `forward`).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry all metrics live in.
    pub registry: Registry,
    /// `ports_capacity`.
    pub ports_capacity: IntGauge,
    /// `ports_in_use`.
    pub ports_in_use: IntGauge,
    /// `ports_quarantined`.
    pub ports_quarantined: IntGauge,
    /// `ports_conflicted`.
    pub ports_conflicted: IntGauge,
    /// `port_exhaustion_events_total`.
    pub exhaustion_events: IntCounter,
    /// `duplicate_registration_attempts_total`.
    pub duplicate_registrations: IntCounter,
    /// `port_allocations_total{outcome}`.
    pub allocations: IntCounterVec,
    /// `port_releases_total{reason}`.
    pub releases: IntCounterVec,
    /// `port_conflicts_total`.
    pub conflicts: IntCounter,
    /// `services{state}`.
    pub services: IntGaugeVec,
    /// `registration_latency_seconds`.
    pub registration_latency: Histogram,
    /// `reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `reconcile_leaks_total`.
    pub reconcile_leaks: IntCounter,
    /// `docker_connected`.
    pub docker_connected: IntGauge,
    /// `docker_reconnects_total`.
    pub docker_reconnects: IntCounter,
    /// `docker_events_total{action}`.
    pub docker_events: IntCounterVec,
    /// `store_write_duration_seconds`.
    pub store_write_duration: Histogram,
    /// `store_errors_total`.
    pub store_errors: IntCounter,
    /// `build_info{version}`.
    pub build_info: IntGaugeVec,
}

fn name(short: &str) -> String {
    format!("mesh_bridge_{short}")
}

impl Metrics {
    /// Creates every metric in a fresh registry (with process metrics).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |n: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name(n), help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |n: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name(n), help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec = |n: &str, help: &str, label: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name(n), help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |n: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(name(n), help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let services =
            IntGaugeVec::new(Opts::new(name("services"), "Services by state"), &["state"])?;
        registry.register(Box::new(services.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(name("build_info"), "Build information; value is always 1"),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let m = Metrics {
            ports_capacity: gauge("ports_capacity", "Ports in the configured ranges")?,
            ports_in_use: gauge("ports_in_use", "Ports reserved by a service")?,
            ports_quarantined: gauge(
                "ports_quarantined",
                "Released ports kept for their service until grace ends",
            )?,
            ports_conflicted: gauge(
                "ports_conflicted",
                "Ports of the range held by another process",
            )?,
            exhaustion_events: counter(
                "port_exhaustion_events_total",
                "Allocations that found no free port (one per service that became pending)",
            )?,
            duplicate_registrations: counter(
                "duplicate_registration_attempts_total",
                "Registrations of a container or reservation that was already registered",
            )?,
            allocations: counter_vec(
                "port_allocations_total",
                "Ports assigned, by outcome (new, sticky, restored)",
                "outcome",
            )?,
            releases: counter_vec("port_releases_total", "Ports released, by reason", "reason")?,
            conflicts: counter(
                "port_conflicts_total",
                "Binds that failed because another process held the port",
            )?,
            registration_latency: histogram(
                "registration_latency_seconds",
                "Docker start event to the service's port serving",
                latency_buckets.clone(),
            )?,
            reconcile_duration: histogram(
                "reconcile_duration_seconds",
                "Duration of a full resync with Docker",
                latency_buckets.clone(),
            )?,
            reconcile_leaks: counter(
                "reconcile_leaks_total",
                "Reservations released because their service had no container for --leak-cycles resyncs",
            )?,
            docker_connected: gauge(
                "docker_connected",
                "1 while the Docker event stream is connected",
            )?,
            docker_reconnects: counter(
                "docker_reconnects_total",
                "Reconnections to the Docker engine",
            )?,
            docker_events: counter_vec(
                "docker_events_total",
                "Docker container events received, by action",
                "action",
            )?,
            store_write_duration: histogram(
                "store_write_duration_seconds",
                "Duration of one store transaction",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ],
            )?,
            store_errors: counter("store_errors_total", "Failed store operations")?,
            services,
            build_info,
            registry,
        };
        for o in ["new", "sticky", "restored"] {
            m.allocations.with_label_values(&[o]);
        }
        for r in [
            release::REMOVED,
            release::LEAK,
            release::API,
            release::CONFLICT,
        ] {
            m.releases.with_label_values(&[r]);
        }
        for s in ["serving", "waiting", "quarantined", "pending", "rejected"] {
            m.services.with_label_values(&[s]);
        }
        Ok(m)
    }

    /// Sets the pool gauges.
    pub fn set_pool(&self, c: &PoolCounts) {
        self.ports_capacity.set(c.capacity as i64);
        self.ports_in_use.set(c.in_use as i64);
        self.ports_quarantined.set(c.quarantined as i64);
        self.ports_conflicted.set(c.conflicted as i64);
    }

    /// Counts one Docker event, with a bounded action label.
    pub fn docker_event(&self, action: &str) {
        let base = action.split(':').next().unwrap_or("").trim();
        let label = if ACTIONS.contains(&base) {
            base
        } else if base.starts_with("exec_") {
            "exec"
        } else {
            "other"
        };
        self.docker_events.with_label_values(&[label]).inc();
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let m = Metrics::new().unwrap();
        m.docker_event("exec_start: sh -c rm -rf /");
        m.docker_event("health_status: healthy");
        let text = m.render();
        for n in [
            "mesh_bridge_ports_capacity",
            "mesh_bridge_port_exhaustion_events_total",
            "mesh_bridge_duplicate_registration_attempts_total",
            "mesh_bridge_port_allocations_total{outcome=\"restored\"}",
            "mesh_bridge_registration_latency_seconds_bucket",
            "mesh_bridge_docker_events_total{action=\"exec\"}",
            "mesh_bridge_docker_events_total{action=\"health_status\"}",
            "mesh_bridge_build_info{version=",
        ] {
            assert!(text.contains(n), "{n} missing from\n{text}");
        }
        assert!(!text.contains("rm -rf"));
    }
}
