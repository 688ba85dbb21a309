//! Harness metrics for Prometheus, served on a loopback port during a run:
//! `mesh_chaos_faults_injected_total{fault}`, `mesh_chaos_probe_results_total{outcome}`,
//! `mesh_chaos_probe_duration_seconds`, `mesh_chaos_sessions_total{event}`,
//! `mesh_chaos_invariant_violations_total{invariant}`.

use std::net::SocketAddr;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

use mesh_bridge::contract::metric::{Def, Kind};

use crate::probe::Outcome;

/// `mesh_chaos_faults_injected_total{fault}`.
pub const FAULTS_INJECTED: Def = Def {
    name: "mesh_chaos_faults_injected_total",
    kind: Kind::Counter,
    labels: &["fault"],
    help: "Faults injected, by kind.",
};
/// `mesh_chaos_probe_results_total{outcome}`.
pub const PROBE_RESULTS: Def = Def {
    name: "mesh_chaos_probe_results_total",
    kind: Kind::Counter,
    labels: &["outcome"],
    help: "Probe results, by outcome.",
};
/// `mesh_chaos_probe_duration_seconds`.
pub const PROBE_DURATION: Def = Def {
    name: "mesh_chaos_probe_duration_seconds",
    kind: Kind::Histogram,
    labels: &[],
    help: "Round trip of one probe through the mesh port.",
};
/// `mesh_chaos_sessions_total{event}`.
pub const SESSIONS: Def = Def {
    name: "mesh_chaos_sessions_total",
    kind: Kind::Counter,
    labels: &["event"],
    help: "Sessions of the session probes: started, completed (ended by the client) or lost (404).",
};
/// The `event` values of [`SESSIONS`].
pub const SESSION_EVENTS: [&str; 3] = ["started", "completed", "lost"];
/// `mesh_chaos_invariant_violations_total{invariant}`.
pub const INVARIANT_VIOLATIONS: Def = Def {
    name: "mesh_chaos_invariant_violations_total",
    kind: Kind::Counter,
    labels: &["invariant"],
    help: "Invariants found violated, by invariant.",
};
/// The harness's metrics, served during a scenario run and read by the
/// reliability dashboard.
pub const ALL: [Def; 5] = [
    FAULTS_INJECTED,
    PROBE_RESULTS,
    PROBE_DURATION,
    SESSIONS,
    INVARIANT_VIOLATIONS,
];

/// The harness's metrics.
#[derive(Debug, Clone)]
pub struct HarnessMetrics {
    /// The registry.
    pub registry: Registry,
    faults: IntCounterVec,
    probes: IntCounterVec,
    duration: Histogram,
    sessions: IntCounterVec,
    violations: IntCounterVec,
}

impl HarnessMetrics {
    /// Registers the metrics.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let vec = |d: Def| IntCounterVec::new(Opts::new(d.name, d.help), d.labels);
        let faults = vec(FAULTS_INJECTED)?;
        let probes = vec(PROBE_RESULTS)?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(PROBE_DURATION.name, PROBE_DURATION.help).buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let violations = vec(INVARIANT_VIOLATIONS)?;
        let sessions = vec(SESSIONS)?;
        registry.register(Box::new(sessions.clone()))?;
        for e in SESSION_EVENTS {
            sessions.with_label_values(&[e]);
        }
        registry.register(Box::new(faults.clone()))?;
        registry.register(Box::new(probes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(violations.clone()))?;
        for o in [
            Outcome::Ok,
            Outcome::Wrong,
            Outcome::NoPort,
            Outcome::Refused,
            Outcome::Timeout,
            Outcome::Error,
        ] {
            probes.with_label_values(&[o.as_str()]);
        }
        for id in crate::invariants::IDS {
            violations.with_label_values(&[id]);
        }
        Ok(Self {
            registry,
            faults,
            probes,
            duration,
            sessions,
            violations,
        })
    }

    /// Counts a fault.
    pub fn fault(&self, kind: &str) {
        self.faults.with_label_values(&[kind]).inc();
    }
    /// Counts a probe.
    pub fn probe(&self, outcome: Outcome, seconds: f64) {
        self.probes.with_label_values(&[outcome.as_str()]).inc();
        if outcome != Outcome::NoPort {
            self.duration.observe(seconds);
        }
    }
    /// Counts a session event (one of [`SESSION_EVENTS`]).
    pub fn session(&self, event: &str) {
        self.sessions.with_label_values(&[event]).inc();
    }
    /// Counts a violated invariant.
    pub fn violation(&self, id: &str) {
        self.violations.with_label_values(&[id]).inc();
    }
    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Serves `/metrics` on `addr` (use 127.0.0.1:0) until the task is aborted.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = me.render();
                        async move {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
                });
            }
        });
        Ok((local, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_and_serves() {
        let m = HarnessMetrics::new().expect("metrics");
        m.fault("container-kill");
        m.probe(Outcome::Ok, 0.002);
        m.violation("I3");
        let text = m.render();
        assert!(text.contains("mesh_chaos_faults_injected_total{fault=\"container-kill\"} 1"));
        assert!(text.contains("mesh_chaos_invariant_violations_total{invariant=\"I3\"} 1"));
        assert!(text.contains("mesh_chaos_probe_duration_seconds_count 1"));
        let (addr, task) = m
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serve");
        let body = crate::http::get_text(addr, "/metrics").await.expect("get");
        assert!(body.contains("mesh_chaos_probe_results_total{outcome=\"ok\"} 1"));
        task.abort();
    }
}
