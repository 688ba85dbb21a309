//! The seeded fault schedule: the same scenario and seed give the same faults
//! at the same offsets in the same order, and the same choice of victims for
//! the same set of candidates.

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::faults::FaultKind;
use crate::scenario::{Scenario, dur};

/// One planned injection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// Offset from the start of the run.
    pub t_ms: u64,
    /// The fault.
    pub kind: FaultKind,
    /// Target (service name or `K=V` label), if any.
    pub target: Option<String>,
    /// How many.
    pub count: Option<u32>,
    /// Or which fraction.
    pub fraction: Option<f64>,
    /// How long before healing, in ms.
    pub hold_ms: u64,
    /// Seed for choosing victims among candidates.
    pub pick: u64,
}

/// Expands the scenario's faults into a time-ordered plan. Faults are planned
/// in `[0, duration)`; nothing is planned in the settle time after it.
pub fn build(scenario: &Scenario, seed: u64) -> Result<Vec<Planned>> {
    let total = scenario.duration()?.as_millis() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for f in &scenario.faults {
        let hold_ms = match &f.hold {
            Some(h) => dur("hold", h)?.as_millis() as u64,
            None => f.kind.default_hold_ms(),
        };
        let mut times = Vec::new();
        for a in &f.at {
            times.push(dur("at", a)?.as_millis() as u64);
        }
        if let Some(iv) = &f.interval {
            let iv = dur("interval", iv)?.as_millis() as u64;
            let start = match &f.start {
                Some(s) => dur("start", s)?.as_millis() as u64,
                None => iv,
            };
            let mut t = start;
            let mut n = 0u64;
            while t < total && n < 10_000 {
                n += 1;
                t += iv;
            }
            if f.random {
                let lo = start.min(total.saturating_sub(1));
                for _ in 0..n {
                    times.push(rng.random_range(lo..total.max(lo + 1)));
                }
            } else {
                times.extend((0..n).map(|k| start + k * iv));
            }
        }
        for t in times {
            out.push(Planned {
                t_ms: t,
                kind: f.kind,
                target: f.target.clone(),
                count: f.count,
                fraction: f.fraction,
                hold_ms,
                pick: rng.random(),
            });
        }
    }
    // Stable: equal offsets keep file order.
    out.sort_by_key(|p| p.t_ms);
    Ok(out)
}

/// Chooses victims among `candidates` (sorted first, so the order the engine
/// lists them in does not matter): `count`, or `fraction` rounded up, or 1.
pub fn pick<T: Clone + Ord>(
    candidates: &[T],
    count: Option<u32>,
    fraction: Option<f64>,
    seed: u64,
) -> Vec<T> {
    let mut pool: Vec<T> = candidates.to_vec();
    pool.sort();
    let want = match (count, fraction) {
        (Some(c), _) => c as usize,
        (None, Some(f)) => ((pool.len() as f64) * f).ceil() as usize,
        (None, None) => 1,
    }
    .min(pool.len());
    let mut rng = StdRng::seed_from_u64(seed);
    // Partial Fisher-Yates.
    for i in 0..want {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
    }
    pool.truncate(want);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::parse(
            r#"
name = "s"
duration = "60s"
[[services]]
name = "a"
[[faults]]
kind = "container-kill"
fraction = 0.5
interval = "7s"
random = true
[[faults]]
kind = "bridge-kill"
interval = "20s"
[[faults]]
kind = "port-squat"
at = ["3s", "41s"]
[thresholds]
availability = 0.9
"#,
        )
        .expect("parse")
    }

    #[test]
    fn same_seed_same_schedule() {
        let s = scenario();
        let a = build(&s, 42).expect("build");
        let b = build(&s, 42).expect("build");
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
        // 8 random kills + 2 bridge kills (20s, 40s) + 2 squats.
        assert_eq!(a.len(), 8 + 2 + 2);
        let c = build(&s, 43).expect("build");
        assert_ne!(a, c, "a different seed moves the random faults");
        assert_eq!(
            a.iter()
                .filter(|p| p.kind == FaultKind::BridgeKill)
                .map(|p| p.t_ms)
                .collect::<Vec<_>>(),
            vec![20_000, 40_000]
        );
    }

    #[test]
    fn fixed_interval_is_regular() {
        let mut s = scenario();
        s.faults[0].random = false;
        let a = build(&s, 1).expect("build");
        let kills: Vec<u64> = a
            .iter()
            .filter(|p| p.kind == FaultKind::ContainerKill)
            .map(|p| p.t_ms)
            .collect();
        assert_eq!(
            kills,
            vec![
                7_000, 14_000, 21_000, 28_000, 35_000, 42_000, 49_000, 56_000
            ]
        );
    }

    #[test]
    fn pick_is_deterministic_and_order_free() {
        let a = ["c1", "c2", "c3", "c4", "c5"];
        let mut b = a;
        b.reverse();
        assert_eq!(pick(&a, Some(2), None, 9), pick(&b, Some(2), None, 9));
        assert_eq!(pick(&a, None, Some(0.5), 9).len(), 3);
        assert_eq!(pick(&a, Some(10), None, 9).len(), 5);
        assert_eq!(pick::<&str>(&[], None, None, 9).len(), 0);
    }
}
