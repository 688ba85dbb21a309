//! The bridge's Prometheus metrics (names of docs/DESIGN.md section 3, all prefixed
//! `mesh_bridge_`). One [`prometheus::Registry`] is owned by the app and passed
//! down; nothing here is a global static.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::pool::PoolCounts;

use crate::contract::api::ServiceState;
pub use crate::contract::metric::release;
use crate::contract::metric::{self as def, DOCKER_ACTIONS, Def, outcome};

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
    /// `config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    /// Creates every metric of [`crate::contract::metric`] except the
    /// forwarder's in a fresh registry (with process metrics).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |d: Def| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(d.name, d.help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge_vec = |d: Def| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(d.name, d.help), d.labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |d: Def| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(d.name, d.help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec = |d: Def| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |d: Def, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(d.name, d.help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let m = Metrics {
            ports_capacity: gauge(def::PORTS_CAPACITY)?,
            ports_in_use: gauge(def::PORTS_IN_USE)?,
            ports_quarantined: gauge(def::PORTS_QUARANTINED)?,
            ports_conflicted: gauge(def::PORTS_CONFLICTED)?,
            exhaustion_events: counter(def::EXHAUSTION_EVENTS)?,
            duplicate_registrations: counter(def::DUPLICATE_REGISTRATIONS)?,
            allocations: counter_vec(def::ALLOCATIONS)?,
            releases: counter_vec(def::RELEASES)?,
            conflicts: counter(def::CONFLICTS)?,
            registration_latency: histogram(def::REGISTRATION_LATENCY, latency_buckets.clone())?,
            reconcile_duration: histogram(def::RECONCILE_DURATION, latency_buckets)?,
            reconcile_leaks: counter(def::RECONCILE_LEAKS)?,
            docker_connected: gauge(def::DOCKER_CONNECTED)?,
            docker_reconnects: counter(def::DOCKER_RECONNECTS)?,
            docker_events: counter_vec(def::DOCKER_EVENTS)?,
            store_write_duration: histogram(
                def::STORE_WRITE_DURATION,
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ],
            )?,
            store_errors: counter(def::STORE_ERRORS)?,
            services: gauge_vec(def::SERVICES)?,
            build_info: gauge_vec(def::BUILD_INFO)?,
            config_reloads: counter_vec(def::CONFIG_RELOADS)?,
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for o in outcome::ALL {
            m.allocations.with_label_values(&[o]);
        }
        for r in def::reload::ALL {
            m.config_reloads.with_label_values(&[r]);
        }
        for r in release::ALL {
            m.releases.with_label_values(&[r]);
        }
        for s in ServiceState::ALL {
            m.services.with_label_values(&[s.as_str()]);
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
        let label = if DOCKER_ACTIONS.contains(&base) {
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

    #[test]
    fn the_registry_holds_exactly_the_contract_table() {
        let m = Metrics::new().unwrap();
        let f = crate::forward::ForwardMetrics::register(&m.registry).unwrap();
        // A vector without a label value is not gathered: give each one.
        f.connections.with_label_values(&["x"]);
        f.active.with_label_values(&["x"]);
        f.upstream_errors.with_label_values(&["x"]);
        f.mcp_sessions.with_label_values(&["x"]);
        f.mcp_requests.with_label_values(&["x", "ping"]);
        f.mcp_misses.with_label_values(&["x", "expired"]);
        f.mcp_duration.with_label_values(&["x"]);
        let s = crate::stdio::hub::StdioMetrics::register(&m.registry).unwrap();
        let _ = s.meters("x");
        m.docker_event("start");
        let mut registered: Vec<(String, prometheus::proto::MetricType, Vec<String>)> = m
            .registry
            .gather()
            .into_iter()
            .filter(|f| f.name().starts_with("mesh_bridge_"))
            .map(|f| {
                let labels = f
                    .get_metric()
                    .first()
                    .map(|s| s.get_label().iter().map(|l| l.name().to_string()).collect())
                    .unwrap_or_default();
                (f.name().to_string(), f.get_field_type(), labels)
            })
            .collect();
        registered.sort_by(|a, b| a.0.cmp(&b.0));
        let mut table: Vec<&def::Def> = def::ALL.iter().collect();
        table.sort_by_key(|d| d.name);
        let names: Vec<&str> = registered.iter().map(|r| r.0.as_str()).collect();
        let want: Vec<&str> = table.iter().map(|d| d.name).collect();
        assert_eq!(
            names, want,
            "registered metrics differ from contract::metric::ALL"
        );
        for ((_, kind, labels), d) in registered.iter().zip(&table) {
            let k = match d.kind {
                def::Kind::Counter => prometheus::proto::MetricType::COUNTER,
                def::Kind::Gauge => prometheus::proto::MetricType::GAUGE,
                def::Kind::Histogram => prometheus::proto::MetricType::HISTOGRAM,
            };
            assert_eq!(*kind, k, "{} has the wrong type", d.name);
            // The exposition sorts label names.
            let mut want = d.labels.to_vec();
            want.sort_unstable();
            assert_eq!(labels, &want, "{} has the wrong labels", d.name);
        }
    }
}
