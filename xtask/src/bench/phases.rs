//! The measurements. Each returns its report rows.

mod api;
mod p1;
mod p4;
mod p5;
mod p6;
mod p7;
mod p8;
mod start;

use std::path::PathBuf;
use std::time::Instant;

use crate::bench::infra::{BridgeSpec, PHASE_LABEL, RUN_LABEL, progress};
use mesh_chaos::docker_relay::Relay;

pub use p1::p1;
pub use p4::p4;
pub use p5::p5;
pub use p6::p6;
pub use p7::p7;
pub use p8::p8;
pub use start::p2_p3;

/// What every phase needs.
#[derive(Debug)]
pub struct Ctx {
    /// When the bench started.
    pub t0: Instant,
    /// The release bridge binary (a copy).
    pub bin: PathBuf,
    /// Run label value.
    pub run: String,
    /// Quick mode.
    pub quick: bool,
    /// P2 starts.
    pub starts: usize,
    /// P3 services.
    pub services: usize,
}

impl Ctx {
    fn note(&self, msg: &str) {
        progress(self.t0, msg);
    }

    fn filters(&self, phase: &str) -> Vec<String> {
        vec![
            format!("{RUN_LABEL}={}", self.run),
            format!("{PHASE_LABEL}={phase}"),
        ]
    }

    fn spec(&self, name: &str, ports: String, relay: &Relay) -> BridgeSpec {
        BridgeSpec {
            name: name.to_string(),
            ports,
            resync: "30s".into(),
            docker_host: relay.url(),
            launcher: Vec::new(),
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> f64 {
    pct(&sorted(v.to_vec()), 0.5)
}

/// The order to measure `paths` paths in over `rounds` rounds (indices):
/// each round rotates which path goes first, so drift on the machine falls
/// on all paths alike.
fn rotation(paths: usize, rounds: usize) -> impl Iterator<Item = usize> {
    (0..rounds).flat_map(move |r| (0..paths).map(move |k| (r + k) % paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 50.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn each_round_measures_every_path_once_and_the_first_rotates() {
        let order: Vec<usize> = rotation(3, 3).collect();
        assert_eq!(order, [0, 1, 2, 1, 2, 0, 2, 0, 1]);
    }
}
