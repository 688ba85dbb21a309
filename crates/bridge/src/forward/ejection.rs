//! Passive outlier ejection: which replicas of one service recently failed a dial.
//!
//! A replica whose dial fails (refused, reset, or no answer within the connect
//! timeout) is *ejected* for a while: new connections try the healthy replicas
//! first and an ejected one only when every healthy one failed too, so a
//! black-holed replica costs one client the connect timeout, not every second
//! client (round robin). The ejection lasts [`EJECT_BASE`], doubling with each
//! further failure in a row up to [`EJECT_MAX`]; the first dial that succeeds
//! ends it. A failed dial while it is ejected (tried as a last resort, every
//! healthy replica having failed) neither extends nor doubles it. This is what Envoy's outlier detection and HAProxy's
//! `observe layer4` do; it never refuses a client by itself: with every
//! replica ejected, all are still tried.
//!
//! Pure: callers pass the time, so the rules are unit-tested without a clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How long a replica stays ejected after its first failed dial.
pub const EJECT_BASE: Duration = Duration::from_secs(2);
/// Longest ejection, however many failures in a row.
pub const EJECT_MAX: Duration = Duration::from_secs(30);

/// One replica's failure streak.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    /// Failed dials in a row.
    count: u32,
    /// Ejected until then.
    until: Instant,
}

/// What a failure or success changed, so the caller logs state changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth a log line.
    None,
    /// The replica was healthy and is now ejected for this long.
    Ejected(Duration),
    /// The replica was ejected (or had failed) and answered again.
    Back,
}

/// The failure streaks of one service's replicas.
#[derive(Debug, Default)]
pub struct Ejections {
    strikes: HashMap<SocketAddr, Strikes>,
}

impl Ejections {
    /// True when no replica has a failure streak (the hot path's check).
    pub fn is_empty(&self) -> bool {
        self.strikes.is_empty()
    }

    /// Whether `addr` is ejected at `now`.
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.strikes.get(&addr).is_some_and(|s| s.until > now)
    }

    /// Records a failed dial of `addr` at `now`. Streaks of replicas that are
    /// no longer in `current` (the service's endpoints) are dropped, so the
    /// table never outgrows the endpoint set.
    pub fn failed(&mut self, addr: SocketAddr, now: Instant, current: &[SocketAddr]) -> Change {
        self.strikes.retain(|a, _| current.contains(a));
        let s = self.strikes.entry(addr).or_insert(Strikes {
            count: 0,
            until: now,
        });
        if s.until > now {
            // A last-resort dial of an ejected replica (every healthy one
            // failed too): the ejection stands as it is. Counting it would
            // let a burst of clients while all replicas start push each one
            // out for the maximum, long after it listens.
            return Change::None;
        }
        s.count = s.count.saturating_add(1);
        let factor = 1u32 << (s.count - 1).min(16);
        let d = EJECT_BASE.saturating_mul(factor).min(EJECT_MAX);
        s.until = now + d;
        Change::Ejected(d)
    }

    /// Records a successful dial of `addr`: its streak ends.
    pub fn succeeded(&mut self, addr: SocketAddr) -> Change {
        match self.strikes.remove(&addr) {
            Some(_) => Change::Back,
            None => Change::None,
        }
    }

    /// `endpoints` in dial order starting at `start` (round robin): the replicas
    /// that are not ejected first, then the ejected ones.
    pub fn order(&self, endpoints: &[SocketAddr], start: usize, now: Instant) -> Vec<SocketAddr> {
        let n = endpoints.len();
        let ring = (0..n).map(|i| endpoints[start.wrapping_add(i) % n]);
        let (mut healthy, ejected): (Vec<_>, Vec<_>) =
            ring.partition(|a| !self.is_ejected(*a, now));
        healthy.extend(ejected);
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_failed_replica_goes_last_until_its_ejection_ends() {
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let all = [a, b, c];
        let t0 = Instant::now();
        let mut e = Ejections::default();
        assert_eq!(e.order(&all, 0, t0), vec![a, b, c]);
        assert_eq!(e.failed(a, t0, &all), Change::Ejected(EJECT_BASE));
        assert_eq!(e.order(&all, 0, t0), vec![b, c, a]);
        assert_eq!(e.order(&all, 2, t0), vec![c, b, a]);
        // Ejection over: back in its round-robin place.
        assert_eq!(e.order(&all, 0, t0 + EJECT_BASE), vec![a, b, c]);
    }

    #[test]
    fn failures_in_a_row_double_the_ejection_up_to_the_cap() {
        let a = addr(1);
        let t0 = Instant::now();
        let mut e = Ejections::default();
        let mut t = t0;
        let mut seen = Vec::new();
        for _ in 0..8 {
            match e.failed(a, t, &[a]) {
                Change::Ejected(d) => seen.push(d),
                other => {
                    panic!("each failure after an ejection ended is a new ejection: {other:?}")
                }
            }
            t += EJECT_MAX;
        }
        let secs: Vec<u64> = seen.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 30, 30, 30, 30]);
        // A failure while still ejected (a last-resort dial) changes nothing.
        assert_eq!(e.failed(a, t, &[a]), Change::Ejected(EJECT_MAX));
        let later = t + Duration::from_secs(10);
        assert_eq!(e.failed(a, later, &[a]), Change::None);
        assert!(e.is_ejected(a, t + EJECT_MAX - Duration::from_millis(1)));
        assert!(
            !e.is_ejected(a, t + EJECT_MAX),
            "not extended by the last resort"
        );
    }

    #[test]
    fn success_ends_the_streak_and_says_so_once() {
        let a = addr(1);
        let t0 = Instant::now();
        let mut e = Ejections::default();
        e.failed(a, t0, &[a]);
        e.failed(a, t0 + EJECT_MAX, &[a]);
        assert_eq!(e.succeeded(a), Change::Back);
        assert_eq!(e.succeeded(a), Change::None);
        assert!(e.is_empty());
        assert_eq!(
            e.failed(a, t0 + EJECT_MAX, &[a]),
            Change::Ejected(EJECT_BASE)
        );
    }

    #[test]
    fn replicas_that_left_the_endpoint_set_are_forgotten() {
        let (a, b) = (addr(1), addr(2));
        let t0 = Instant::now();
        let mut e = Ejections::default();
        e.failed(a, t0, &[a, b]);
        e.failed(b, t0, &[b]);
        assert!(!e.is_ejected(a, t0));
        assert!(e.is_ejected(b, t0));
        assert_eq!(e.strikes.len(), 1);
    }

    #[test]
    fn every_replica_ejected_still_yields_every_replica() {
        let all = [addr(1), addr(2)];
        let t0 = Instant::now();
        let mut e = Ejections::default();
        for a in all {
            e.failed(a, t0, &all);
        }
        assert_eq!(e.order(&all, 1, t0), vec![addr(2), addr(1)]);
        assert!(e.order(&[], 0, t0).is_empty());
    }
}
