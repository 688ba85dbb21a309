//! The forwarder's metrics: the families it registers in the app's registry
//! and each listener's resolved children.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::contract::metric::{mcp_method, miss};

/// The forwarder's metrics, registered in the app's registry.
///
/// Every vector has the single label `service`; [`Forwarder::close`](super::Forwarder::close) removes a
/// service's label values, so the label set stays bounded by the pool's capacity.
#[derive(Debug, Clone)]
pub struct ForwardMetrics {
    /// `mesh_bridge_forward_connections_total{service}`: connections accepted.
    pub connections: IntCounterVec,
    /// `mesh_bridge_forward_active_connections{service}`: connections currently open.
    pub active: IntGaugeVec,
    /// `mesh_bridge_forward_upstream_errors_total{service}`: failed attempts to reach a replica.
    pub upstream_errors: IntCounterVec,
    /// `mesh_bridge_mcp_sessions{service}`.
    pub mcp_sessions: IntGaugeVec,
    /// `mesh_bridge_mcp_requests_total{service,method}`.
    pub mcp_requests: IntCounterVec,
    /// `mesh_bridge_mcp_session_misses_total{service,reason}`.
    pub mcp_misses: IntCounterVec,
    /// `mesh_bridge_mcp_request_duration_seconds{service}`.
    pub mcp_duration: HistogramVec,
}

impl ForwardMetrics {
    /// Creates the forwarder's metrics and registers them in `registry`.
    ///
    /// # Errors
    /// Fails when a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use crate::contract::metric::{
            FORWARD_ACTIVE, FORWARD_CONNECTIONS, FORWARD_UPSTREAM_ERRORS, MCP_REQUEST_DURATION,
            MCP_REQUESTS, MCP_SESSION_MISSES, MCP_SESSIONS,
        };
        let d = FORWARD_CONNECTIONS;
        let connections = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
        let d = FORWARD_ACTIVE;
        let active = IntGaugeVec::new(Opts::new(d.name, d.help), d.labels)?;
        let d = FORWARD_UPSTREAM_ERRORS;
        let upstream_errors = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(active.clone()))?;
        let d = MCP_SESSIONS;
        let mcp_sessions = IntGaugeVec::new(Opts::new(d.name, d.help), d.labels)?;
        let d = MCP_REQUESTS;
        let mcp_requests = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
        let d = MCP_SESSION_MISSES;
        let mcp_misses = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
        let d = MCP_REQUEST_DURATION;
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let mcp_duration = HistogramVec::new(
            HistogramOpts::new(d.name, d.help).buckets(buckets),
            d.labels,
        )?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(mcp_sessions.clone()))?;
        registry.register(Box::new(mcp_requests.clone()))?;
        registry.register(Box::new(mcp_misses.clone()))?;
        registry.register(Box::new(mcp_duration.clone()))?;
        Ok(Self {
            connections,
            active,
            upstream_errors,
            mcp_sessions,
            mcp_requests,
            mcp_misses,
            mcp_duration,
        })
    }

    pub(super) fn for_service(&self, service: &str) -> ServiceMetrics {
        // Misses are there at 0 from the start, so a rate() alert sees the
        // first one.
        for r in miss::ALL {
            self.mcp_misses.with_label_values(&[service, r]);
        }
        ServiceMetrics {
            connections: self.connections.with_label_values(&[service]),
            active: self.active.with_label_values(&[service]),
            upstream_errors: self.upstream_errors.with_label_values(&[service]),
            mcp_sessions: self.mcp_sessions.with_label_values(&[service]),
            mcp_duration: self.mcp_duration.with_label_values(&[service]),
            mcp_requests: self.mcp_requests.clone(),
            mcp_misses: self.mcp_misses.clone(),
            service: Arc::from(service),
            methods: (0..=mcp_method::SPEC.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    pub(super) fn remove_service(&self, service: &str) {
        // Absent label values are fine: the service may never have been opened.
        let _ = self.connections.remove_label_values(&[service]);
        let _ = self.active.remove_label_values(&[service]);
        let _ = self.upstream_errors.remove_label_values(&[service]);
        let _ = self.mcp_sessions.remove_label_values(&[service]);
        let _ = self.mcp_duration.remove_label_values(&[service]);
        for m in mcp_method::SPEC.iter().chain([&mcp_method::OTHER]) {
            let _ = self.mcp_requests.remove_label_values(&[service, m]);
        }
        for r in miss::ALL {
            let _ = self.mcp_misses.remove_label_values(&[service, r]);
        }
    }
}

/// Per-service metric children, resolved once per listener.
#[derive(Clone)]
pub(super) struct ServiceMetrics {
    pub(super) connections: IntCounter,
    pub(super) active: IntGauge,
    pub(super) upstream_errors: IntCounter,
    pub(super) mcp_sessions: IntGauge,
    pub(super) mcp_duration: Histogram,
    pub(super) mcp_requests: IntCounterVec,
    pub(super) mcp_misses: IntCounterVec,
    pub(super) service: Arc<str>,
    /// `mcp_requests` children already resolved, one per method of
    /// [`mcp_method::SPEC`] and the last for `other` (a label lookup hashes
    /// and locks; this is on every request).
    pub(super) methods: Arc<[OnceLock<IntCounter>]>,
}

impl ServiceMetrics {
    /// Counts one request of `method` in `mcp_requests`.
    pub(super) fn count_request(&self, method: &'static str) {
        let i = mcp_method::SPEC
            .iter()
            .position(|m| *m == method)
            .unwrap_or(mcp_method::SPEC.len());
        self.methods[i]
            .get_or_init(|| {
                self.mcp_requests
                    .with_label_values(&[&*self.service, method])
            })
            .inc();
    }

    pub(super) fn mcp_miss(&self, reason: &str) -> IntCounter {
        self.mcp_misses.with_label_values(&[&*self.service, reason])
    }
}
