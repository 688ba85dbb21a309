//! Property tests of the port pool against a simple model.
//!
//! The model keeps one plain map of port -> state and checks every answer of
//! the real pool: a port is never given to two services, never outside the
//! ranges, never while quarantined for another service or conflicted; a
//! reservation fails only when the model has no free port (no "counter only
//! grows" exhaustion); sticky ports stay sticky; a new port is the next
//! free one after the cursor (round robin across every range and every
//! 64-port word of the pool's bitmap); and every query (a port's state, the
//! entries, a service's holding and last port, the next deadline) answers
//! what the model holds.

use std::collections::{BTreeMap, HashMap};

use mesh_bridge::pool::{Millis, Outcome, Pool, PoolError, PortRanges, PortState, Reservation};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
enum M {
    Reserved(usize),
    Quarantined(usize, Millis),
    Conflicted(Millis),
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(usize),
    /// An API reservation naming a port: the model's port at this index,
    /// or one past the ranges when the index is past them.
    ReservePort(usize, usize),
    Release(usize),
    Forget(usize),
    Advance(Millis),
    Conflict(usize),
    Widen,
}

const SERVICES: usize = 12;
const GRACE: Millis = 100;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..SERVICES).prop_map(Op::Reserve),
        2 => (0..SERVICES, 0usize..220).prop_map(|(s, i)| Op::ReservePort(s, i)),
        3 => (0..SERVICES).prop_map(Op::Release),
        1 => (0..SERVICES).prop_map(Op::Forget),
        2 => (1u64..150).prop_map(Op::Advance),
        1 => (0usize..200).prop_map(Op::Conflict),
        1 => Just(Op::Widen),
    ]
}

struct Model {
    ranges: Vec<(u16, u16)>,
    ports: BTreeMap<u16, M>,
    last: HashMap<usize, u16>,
    /// Index (into `all_ports`) where the search for a new port starts.
    cursor: usize,
}

impl Model {
    fn all_ports(&self) -> Vec<u16> {
        self.ranges.iter().flat_map(|&(a, b)| a..=b).collect()
    }
    fn expire(&mut self, now: Millis) {
        let mut freed = Vec::new();
        self.ports.retain(|&p, st| match st {
            M::Quarantined(s, u) if *u <= now => {
                freed.push((*s, p));
                false
            }
            M::Conflicted(u) if *u <= now => false,
            _ => true,
        });
        for (s, p) in freed {
            self.last.insert(s, p);
        }
    }
    fn held(&self, s: usize) -> Option<(u16, &M)> {
        self.ports
            .iter()
            .find(|(_, st)| matches!(st, M::Reserved(x) | M::Quarantined(x, _) if *x == s))
            .map(|(p, st)| (*p, st))
    }
    /// The first free port at or after the cursor, wrapping, with its index.
    fn next_free(&self) -> Option<(usize, u16)> {
        let all = self.all_ports();
        (0..all.len())
            .map(|k| (self.cursor + k) % all.len())
            .map(|i| (i, all[i]))
            .find(|(_, p)| !self.ports.contains_key(p))
    }
    fn free_count(&self) -> usize {
        self.all_ports().len() - self.ports.len()
    }
    fn ranges(&self) -> PortRanges {
        let s: Vec<String> = self
            .ranges
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect();
        s.join(",").parse().expect("model ranges are valid")
    }
}

fn name(s: usize) -> String {
    format!("svc-{s}")
}

fn check_agreement(pool: &Pool, model: &Model) -> Result<(), TestCaseError> {
    let c = pool.counts();
    let reserved = model
        .ports
        .values()
        .filter(|m| matches!(m, M::Reserved(_)))
        .count();
    let quarantined = model
        .ports
        .values()
        .filter(|m| matches!(m, M::Quarantined(..)))
        .count();
    prop_assert_eq!(c.in_use, reserved);
    prop_assert_eq!(c.quarantined, quarantined);
    prop_assert_eq!(c.free, model.free_count());
    prop_assert_eq!(c.capacity, model.all_ports().len());
    // No port held by two services, and each service holds at most one port.
    let mut by_service: HashMap<String, u16> = HashMap::new();
    for (svc, port) in pool.reserved() {
        prop_assert!(
            model.ranges().contains(port),
            "port {} outside ranges",
            port
        );
        prop_assert!(by_service.insert(svc.to_string(), port).is_none());
    }
    let mut ports: Vec<u16> = by_service.values().copied().collect();
    ports.sort_unstable();
    ports.dedup();
    prop_assert_eq!(
        ports.len(),
        by_service.len(),
        "a port shared by two services"
    );
    // Every port's state, and the entries, as the model has them.
    let as_state = |m: &M| match *m {
        M::Reserved(s) => PortState::Reserved(name(s).into()),
        M::Quarantined(s, u) => PortState::Quarantined(name(s).into(), u),
        M::Conflicted(u) => PortState::Conflicted(u),
    };
    for port in model.all_ports() {
        let want = model.ports.get(&port).map_or(PortState::Free, as_state);
        prop_assert_eq!(pool.state(port), want, "state of {}", port);
    }
    let entries: Vec<(u16, PortState)> =
        model.ports.iter().map(|(&p, m)| (p, as_state(m))).collect();
    prop_assert_eq!(pool.entries(), entries);
    // Every service's holding and history.
    for s in 0..SERVICES {
        let svc = name(s);
        let held = model.held(s).map(|(p, m)| match *m {
            M::Quarantined(_, u) => (p, Some(u)),
            _ => (p, None),
        });
        prop_assert_eq!(pool.holding_of(&svc), held, "holding of {}", svc);
        prop_assert_eq!(
            pool.port_of(&svc),
            held.filter(|h| h.1.is_none()).map(|h| h.0)
        );
        prop_assert_eq!(
            pool.quarantined_port_of(&svc),
            held.filter(|h| h.1.is_some()).map(|h| h.0)
        );
        prop_assert_eq!(
            pool.last_port_of(&svc),
            model.last.get(&s).copied(),
            "last port of {}",
            svc
        );
    }
    let mut last: Vec<(String, u16)> = pool.last_ports().map(|(s, p)| (s.to_string(), p)).collect();
    last.sort();
    let mut want_last: Vec<(String, u16)> =
        model.last.iter().map(|(&s, &p)| (name(s), p)).collect();
    want_last.sort();
    prop_assert_eq!(last, want_last);
    Ok(())
}

/// After an expiry at `now` the next deadline is the model's earliest one:
/// none left means None, and a stale deadline (of a quarantine that was
/// reclaimed) may come first but never lies at or before `now`.
fn check_deadline(pool: &Pool, model: &Model, now: Millis) -> Result<(), TestCaseError> {
    let earliest = model
        .ports
        .values()
        .filter_map(|m| match *m {
            M::Quarantined(_, u) | M::Conflicted(u) => Some(u),
            M::Reserved(_) => None,
        })
        .min();
    match (pool.next_deadline(), earliest) {
        (None, None) => {}
        (Some(d), Some(e)) => prop_assert!(
            now < d && d <= e,
            "next deadline {} (model {}, now {})",
            d,
            e,
            now
        ),
        (Some(d), None) => prop_assert!(now < d, "stale deadline {} at or before now {}", d, now),
        (None, Some(e)) => prop_assert!(false, "no next deadline, the model has {}", e),
    }
    Ok(())
}

fn step(
    pool: &mut Pool,
    model: &mut Model,
    now: &mut Millis,
    op: &Op,
) -> Result<(), TestCaseError> {
    match *op {
        Op::Advance(dt) => {
            *now += dt;
            pool.expire(*now);
            model.expire(*now);
            check_deadline(pool, model, *now)?;
        }
        Op::Reserve(s) => {
            model.expire(*now);
            let before = model.held(s).map(|(p, st)| (p, st.clone()));
            match pool.reserve(&name(s), *now) {
                Ok(Reservation::AlreadyHeld(p)) => {
                    prop_assert_eq!(before, Some((p, M::Reserved(s))));
                }
                Ok(Reservation::Assigned { port, outcome }) => {
                    match before {
                        Some((q, M::Quarantined(..))) => {
                            prop_assert_eq!(port, q, "quarantined port must come back");
                            prop_assert_eq!(outcome, Outcome::Sticky);
                        }
                        Some((_, other)) => prop_assert!(false, "reserved twice: {:?}", other),
                        None => {
                            prop_assert!(
                                !model.ports.contains_key(&port),
                                "port {} was not free",
                                port
                            );
                            prop_assert!(model.all_ports().contains(&port), "outside ranges");
                            let last_free = model.last.get(&s).filter(|p| {
                                !model.ports.contains_key(p) && model.all_ports().contains(p)
                            });
                            if let Some(&lp) = last_free {
                                prop_assert_eq!(port, lp, "last port is tried first");
                                prop_assert_eq!(outcome, Outcome::Sticky);
                            } else {
                                let (i, next) = model.next_free().expect("a port was given");
                                prop_assert_eq!(port, next, "the next free port after the cursor");
                                prop_assert_eq!(outcome, Outcome::New);
                                model.cursor = (i + 1) % model.all_ports().len();
                            }
                        }
                    }
                    model.ports.insert(port, M::Reserved(s));
                    model.last.insert(s, port);
                }
                Err(PoolError::Exhausted { .. }) => {
                    prop_assert!(before.is_none());
                    prop_assert_eq!(model.free_count(), 0, "exhausted while a port was free");
                }
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }
        Op::ReservePort(s, i) => {
            model.expire(*now);
            let all = model.all_ports();
            let port = all
                .get(i)
                .copied()
                .unwrap_or(model.ranges.last().expect("non-empty").1 + 1);
            let got = pool.reserve_port(&name(s), port, *now);
            let held = model.held(s).map(|(p, m)| (p, m.clone()));
            match (&got, held) {
                (Err(PoolError::OutsideRanges { .. }), _) => prop_assert!(!all.contains(&port)),
                (Ok(Reservation::AlreadyHeld(p)), Some((q, M::Reserved(_)))) => {
                    prop_assert_eq!((*p, q), (port, port));
                }
                (Err(PoolError::ServiceHoldsOther { held, .. }), Some((q, M::Reserved(_)))) => {
                    prop_assert!(q != port && *held == q);
                }
                (Err(PoolError::PortTaken { .. }), held) => {
                    prop_assert!(model.ports.contains_key(&port), "port {} was free", port);
                    prop_assert!(held.is_none_or(|(q, _)| q != port));
                }
                (Ok(Reservation::Assigned { port: p, outcome }), held) => {
                    prop_assert_eq!(*p, port);
                    match held {
                        Some((q, M::Quarantined(..))) if q == port => {
                            prop_assert_eq!(*outcome, Outcome::Sticky);
                        }
                        Some((q, M::Quarantined(..))) => {
                            prop_assert!(!model.ports.contains_key(&port));
                            // The caller chose another port: the quarantined one is given up.
                            model.ports.remove(&q);
                        }
                        Some(other) => prop_assert!(false, "assigned while holding {:?}", other),
                        None => prop_assert!(!model.ports.contains_key(&port)),
                    }
                    let sticky = model.last.get(&s) == Some(&port);
                    prop_assert_eq!(
                        *outcome == Outcome::Sticky,
                        sticky,
                        "sticky means the last port"
                    );
                    model.ports.insert(port, M::Reserved(s));
                    model.last.insert(s, port);
                }
                (got, held) => prop_assert!(
                    false,
                    "reserve_port({}) = {:?} while holding {:?}",
                    port,
                    got,
                    held
                ),
            }
        }
        Op::Forget(s) => {
            let got = pool.forget(&name(s));
            let held = model.held(s).map(|(p, _)| p);
            prop_assert_eq!(got, held);
            if let Some(p) = held {
                model.ports.remove(&p);
            }
        }
        Op::Release(s) => {
            let got = pool.release(&name(s), *now);
            match model.held(s).map(|(p, st)| (p, st.clone())) {
                Some((p, M::Reserved(_))) => {
                    prop_assert_eq!(got, Some(p));
                    model.ports.insert(p, M::Quarantined(s, *now + GRACE));
                    model.last.insert(s, p);
                }
                _ => prop_assert_eq!(got, None),
            }
        }
        Op::Conflict(i) => {
            let all = model.all_ports();
            let port = all[i % all.len()];
            let lost = pool.mark_conflicted(port, *now + 50);
            let expected = match model.ports.get(&port) {
                Some(M::Reserved(s) | M::Quarantined(s, _)) => Some(name(*s)),
                _ => None,
            };
            prop_assert_eq!(lost.as_deref().map(str::to_string), expected);
            if let Some(M::Reserved(s) | M::Quarantined(s, _)) = model.ports.get(&port)
                && model.last.get(s) == Some(&port)
            {
                let s = *s;
                model.last.remove(&s);
            }
            model.ports.insert(port, M::Conflicted(*now + 50));
        }
        Op::Widen => {
            let end = model.ranges.last().expect("non-empty").1;
            if end < 60_000 {
                model.ranges.push((end + 10, end + 13));
                pool.set_ranges(model.ranges())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// What a writer that persists only `take_changed` names would hold.
#[derive(Debug, Default)]
struct Mirror(HashMap<String, (u16, Option<Millis>)>);

impl Mirror {
    /// Applies the changed names, then checks the mirror equals every holding.
    fn follow(&mut self, pool: &mut Pool) -> Result<(), TestCaseError> {
        let mut names = Vec::new();
        let map = &mut self.0;
        pool.take_changed(|name, held| {
            names.push(name.to_string());
            match held {
                Some(h) => map.insert(name.to_string(), h),
                None => map.remove(name),
            };
        });
        names.sort();
        let before = names.len();
        names.dedup();
        prop_assert_eq!(before, names.len(), "a name reported twice in one take");
        for name in &names {
            prop_assert_eq!(self.0.get(name).copied(), pool.holding_of(name));
        }
        let all: HashMap<String, (u16, Option<Millis>)> = pool
            .holdings()
            .map(|(s, p, u)| (s.to_string(), (p, u)))
            .collect();
        prop_assert_eq!(&self.0, &all);
        let mut again = 0;
        pool.take_changed(|_, _| again += 1);
        prop_assert_eq!(again, 0, "a second take right after is empty");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pool_agrees_with_model(
        start in 1000u16..2000,
        // Up to three 64-port words: the search for a free port crosses words.
        len in prop_oneof![1u16..10, 60u16..150],
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut model = Model { ranges: vec![(start, start + len - 1)], ports: BTreeMap::new(), last: HashMap::new(), cursor: 0 };
        let mut pool = Pool::new(model.ranges(), GRACE);
        pool.track_changes();
        let mut now: Millis = 0;
        let mut mirror = Mirror::default();
        for (k, op) in ops.iter().enumerate() {
            step(&mut pool, &mut model, &mut now, op)?;
            check_agreement(&pool, &model)?;
            if k % 3 == 0 {
                mirror.follow(&mut pool)?;
            }
        }
        mirror.follow(&mut pool)?;
    }

    #[test]
    fn changed_names_keep_a_mirror_exact_through_record_reuse(
        ops in proptest::collection::vec((0usize..1_000_000, proptest::bool::weighted(0.9), 0u64..20), 1..4000),
        take_every in prop_oneof![1usize..20, 500usize..4000],
    ) {
        // Many distinct names over a small range: history is pruned (past
        // 2 x 16 + 1024 names), records are freed and reused under other
        // names between takes.
        let mut pool = Pool::new("20000-20015".parse().expect("valid"), 30);
        pool.track_changes();
        let mut now: Millis = 0;
        let mut mirror = Mirror::default();
        for (k, (s, churn, dt)) in ops.iter().enumerate() {
            now += dt;
            pool.expire(now);
            if *churn {
                // A name of its own, held a moment: history grows past the bound.
                let svc = format!("svc-{s}");
                let _ = pool.reserve(&svc, now);
                pool.release(&svc, now);
            } else {
                // One of 8 long-lived services, toggled.
                let svc = format!("long-{}", s % 8);
                if pool.port_of(&svc).is_some() {
                    pool.release(&svc, now);
                } else {
                    let _ = pool.reserve(&svc, now);
                }
            }
            if k % take_every == 0 {
                mirror.follow(&mut pool)?;
            }
        }
        mirror.follow(&mut pool)?;
    }

    #[test]
    fn never_exhausted_while_a_port_is_free(churn in proptest::collection::vec(0usize..50, 1..400)) {
        // The seed's bug: a counter that only grows. Churning far more services
        // than the range holds must keep working as long as ports are released.
        let mut pool = Pool::new("20000-20009".parse().expect("valid"), 0);
        for (i, s) in churn.iter().enumerate() {
            let svc = format!("s{s}-{i}");
            let port = pool.reserve(&svc, 0).map_err(|e| TestCaseError::fail(e.to_string()))?.port();
            prop_assert!((20000..=20009).contains(&port));
            pool.release(&svc, 0);
        }
        prop_assert_eq!(pool.counts().free, 10);
    }
}
