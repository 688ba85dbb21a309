//! Each invariant against a synthetic history that holds it and one that breaks it.

use super::*;
use crate::binds::BindSample;
use crate::faults::StoreCheck;
use crate::probe::{FaultRecord, Sample, ServiceSample, Snapshot};

const MARKS: Marks = Marks {
    availability: 0.9,
    recovery_ms: 3_000,
};

fn pool(in_use: usize, quarantined: usize) -> PoolView {
    PoolView {
        ranges: vec![[11100, 11109]],
        capacity: 10,
        in_use,
        quarantined,
        conflicted: 0,
        free: 10 - in_use - quarantined,
        pending: 0,
    }
}

fn snap(t: u64, services: &[(&str, u16)], in_use: u64, gauge: f64) -> Snapshot {
    let mut metrics = BTreeMap::new();
    metrics.insert(metric::PORTS_IN_USE.name.into(), gauge);
    metrics.insert(metric::PORTS_QUARANTINED.name.into(), 0.0);
    metrics.insert(metric::PORTS_CONFLICTED.name.into(), 0.0);
    metrics.insert(metric::PORTS_CAPACITY.name.into(), 10.0);
    metrics.insert(metric::DUPLICATE_REGISTRATIONS.name.into(), 0.0);
    metrics.insert(metric::EXHAUSTION_EVENTS.name.into(), 0.0);
    for state in ServiceState::ALL {
        let n = if state == ServiceState::Serving {
            services.len()
        } else {
            0
        };
        metrics.insert(metric::SERVICES.with("state", state.as_str()), n as f64);
    }
    Snapshot {
        t_ms: t,
        pool: Some(pool(in_use as usize, 0)),
        services: services
            .iter()
            .map(|(n, p)| ServiceSample {
                name: n.to_string(),
                port: Some(*p),
                state: ServiceState::Serving,
                replicas: 1,
                running: 1,
            })
            .collect(),
        metrics,
        stable: true,
    }
}

fn sample(t: u64, service: &str, outcome: Outcome, server: &str) -> Sample {
    Sample {
        t_ms: t,
        service: service.into(),
        port: Some(11100),
        outcome,
        server: Some(server.into()),
        latency_ms: 1.0,
    }
}

/// A history where everything holds.
fn good() -> History {
    History {
        samples: (0..20)
            .flat_map(|i| {
                [
                    sample(i * 500, "a", Outcome::Ok, "a"),
                    sample(i * 500, "b", Outcome::Ok, "b"),
                ]
            })
            .collect(),
        snapshots: (0..10)
            .map(|i| snap(i * 1000, &[("a", 11100), ("b", 11101)], 2, 2.0))
            .collect(),
        live: vec!["a".into(), "b".into()],
        probed: vec!["a".into(), "b".into()],
        settle_from_ms: 5_000,
        end_ms: 10_000,
        grace_ms: 1_000,
        truth: Some([("a".to_string(), 1), ("b".to_string(), 1)].into()),
        binds: (0..10)
            .map(|i| BindSample {
                t_ms: i * 1000 + 500,
                ports: vec![9464, 11100, 11101],
                error: None,
            })
            .collect(),
        api_port: Some(9464),
        ..History::default()
    }
}

fn held(h: &History, id: &str) -> bool {
    check(h, MARKS)
        .0
        .iter()
        .find(|v| v.id == id)
        .expect("verdict")
        .held
}

#[test]
fn good_history_holds_everything() {
    let (vs, fig) = check(&good(), MARKS);
    assert!(vs.iter().all(|v| v.held), "{vs:#?}");
    let ids: Vec<&str> = vs.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, IDS);
    assert_eq!(fig.availability, 1.0);
}

#[test]
fn i1_shared_port_fails() {
    let mut h = good();
    h.snapshots[3].services[1].port = Some(11100);
    assert!(!held(&h, "I1"));
}

#[test]
fn i2_moved_port_fails_unless_allowed() {
    let mut h = good();
    for s in &mut h.snapshots[5..] {
        s.services[0].port = Some(11105);
    }
    assert!(!held(&h, "I2"));
    h.faults.push(FaultRecord {
        t_ms: 4_500,
        kind: FaultKind::StoreCorrupt,
        target: "store".into(),
        services: vec!["a".into(), "b".into()],
        until_ms: 4_600,
        may_move: vec!["*".into()],
        error: None,
        no_failures: vec![],
        latency_ms: None,
    });
    assert!(held(&h, "I2"));
}

#[test]
fn i3_leaked_port_fails() {
    let mut h = good();
    let last = h.snapshots.last_mut().expect("snap");
    last.pool = Some(pool(3, 0));
    assert!(!held(&h, "I3"));
    let mut h = good();
    h.snapshots.last_mut().expect("snap").pool = Some(pool(2, 1));
    h.snapshots.last_mut().expect("snap").t_ms = 60_000;
    assert!(!held(&h, "I3"), "quarantine that never drains");
}

#[test]
fn i4_low_availability_and_slow_recovery_fail() {
    let mut h = good();
    for s in h.samples.iter_mut().take(10) {
        s.outcome = Outcome::Refused;
    }
    assert!(!held(&h, "I4"));
    let mut h = good();
    h.faults.push(bridge_kill(1_000, 1_000));
    for s in h
        .samples
        .iter_mut()
        .filter(|s| s.t_ms >= 1_000 && s.t_ms < 5_000)
    {
        s.outcome = Outcome::Refused;
    }
    let fig = figures(&h, MARKS);
    assert_eq!(fig.recovery_ms, Some(4_000));
    assert!(!held(&h, "I4"));
}

#[test]
fn i4_a_service_created_after_a_restart_is_not_unrecovered() {
    let mut h = good();
    h.faults.push(bridge_kill(1_000, 1_000));
    // "late" first appears at 8 s: it cannot have recovered from a kill at 1 s.
    h.probed.push("late".into());
    h.samples.push(sample(8_000, "late", Outcome::Ok, "late"));
    let fig = figures(&h, MARKS);
    assert_eq!(fig.recovery_ms, Some(0), "{fig:?}");
    // A service that existed and never answered again still fails.
    h.samples.push(sample(500, "gone", Outcome::Ok, "gone"));
    h.probed.push("gone".into());
    assert!(!held(&h, "I4"));
}

#[test]
fn i5_metric_disagreement_and_counters_fail() {
    let mut h = good();
    h.snapshots[2]
        .metrics
        .insert(metric::PORTS_IN_USE.name.into(), 3.0);
    assert!(!held(&h, "I5"));
    let mut h = good();
    h.expect.duplicates = Some(5);
    h.snapshots[6]
        .metrics
        .insert(metric::DUPLICATE_REGISTRATIONS.name.into(), 4.0);
    for s in &mut h.snapshots[7..] {
        s.metrics
            .insert(metric::DUPLICATE_REGISTRATIONS.name.into(), 4.0);
    }
    assert!(!held(&h, "I5"), "4 duplicates counted for 5 attempts");
    let mut h = good();
    h.expect.exhaustion = Some(true);
    assert!(!held(&h, "I5"), "exhaustion never counted");
    let mut h = good();
    h.expect.exhaustion_events = Some(2);
    for s in &mut h.snapshots[4..] {
        s.metrics.insert(metric::EXHAUSTION_EVENTS.name.into(), 3.0);
    }
    assert!(
        !held(&h, "I5"),
        "3 exhaustion events for 2 services left without a port"
    );
    h.expect.exhaustion_events = Some(3);
    assert!(held(&h, "I5"));
}

#[test]
fn i6_inconsistent_store_fails() {
    let mut h = good();
    h.store_checks.push(StoreCheck {
        t_ms: 1,
        ok: false,
        detail: "malformed".into(),
        damaged_on_purpose: false,
        exported: None,
    });
    assert!(!held(&h, "I6"));
    h.store_checks[0].damaged_on_purpose = true;
    assert!(held(&h, "I6"));
}

fn bridge_kill(t_ms: u64, until_ms: u64) -> FaultRecord {
    FaultRecord {
        t_ms,
        kind: FaultKind::BridgeKill,
        target: "bridge".into(),
        services: vec![],
        until_ms,
        may_move: vec![],
        error: None,
        no_failures: vec![],
        latency_ms: None,
    }
}

fn net_fault(kind: FaultKind, latency_ms: Option<u64>) -> FaultRecord {
    FaultRecord {
        t_ms: 2_000,
        kind,
        target: "a-1".into(),
        services: vec![],
        until_ms: 8_000,
        may_move: vec![],
        error: None,
        no_failures: vec!["a".into()],
        latency_ms,
    }
}

#[test]
fn i4_a_failure_during_a_failover_fault_fails() {
    let mut h = good();
    h.faults.push(net_fault(FaultKind::NetReset, None));
    assert!(held(&h, "I4"));
    // A probe already under way when the rule landed may fail ...
    h.samples[4] = sample(2_000, "a", Outcome::Refused, "a");
    assert!(held(&h, "I4"));
    // ... a later one must have failed over. (Its availability would
    // still pass: one sample in twenty.)
    h.samples[10] = sample(5_000, "a", Outcome::Refused, "a");
    let (vs, fig) = check(&h, MARKS);
    assert!(fig.availability >= 0.9);
    let i4 = vs.iter().find(|v| v.id == "I4").expect("I4");
    assert!(!i4.held && i4.detail.contains("fail over"), "{i4:?}");
}

#[test]
fn i4_latency_that_never_showed_fails() {
    let mut h = good();
    h.faults.push(net_fault(FaultKind::NetLatency, Some(400)));
    assert!(!held(&h, "I4"), "every probe answered fast: no delay");
    h.samples[8].latency_ms = 420.0;
    assert!(held(&h, "I4"));
}

/// A kill -9 at 4.5 s, store checked at 4.8 s, bridge back at 5 s.
fn killed(mut h: History, exported: &[(&str, u16)]) -> History {
    h.faults.push(bridge_kill(4_500, 5_000));
    h.store_checks.push(StoreCheck {
        t_ms: 4_800,
        ok: true,
        detail: String::new(),
        damaged_on_purpose: false,
        exported: Some(exported.iter().map(|(s, p)| (s.to_string(), *p)).collect()),
    });
    h
}

#[test]
fn i6_store_that_lost_a_reservation_fails() {
    let h = killed(good(), &[("a", 11100), ("b", 11101)]);
    assert!(held(&h, "I6"), "{:?}", check(&h, MARKS).0);
    let h = killed(good(), &[("a", 11100)]);
    assert!(!held(&h, "I6"), "b's reservation is gone from the store");
    let h = killed(good(), &[("a", 11100), ("b", 11107)]);
    assert!(!held(&h, "I6"), "b's port changed in the store");
}

fn restored(h: &mut History, from: usize, n: f64) {
    for s in &mut h.snapshots[from..] {
        s.metrics.insert(
            metric::ALLOCATIONS.with("outcome", metric::outcome::RESTORED),
            n,
        );
    }
}

#[test]
fn i2_restart_that_reallocates_instead_of_restoring_fails() {
    let mut h = killed(good(), &[("a", 11100), ("b", 11101)]);
    restored(&mut h, 5, 2.0);
    assert!(held(&h, "I2"));
    let mut h = killed(good(), &[("a", 11100), ("b", 11101)]);
    restored(&mut h, 5, 0.0);
    assert!(
        !held(&h, "I2"),
        "the restarted bridge re-derived both ports from Docker"
    );
}

#[test]
fn i9_catalog_that_is_not_the_truth_fails() {
    let mut h = good();
    h.truth = Some([("a".to_string(), 1)].into());
    assert!(!held(&h, "I9"), "b is listed but nothing of it runs");
    let mut h = good();
    h.truth = Some([("a".to_string(), 1), ("b".into(), 1), ("c".into(), 2)].into());
    assert!(!held(&h, "I9"), "c runs but is not listed");
    let mut h = good();
    h.truth = Some([("a".to_string(), 2), ("b".into(), 1)].into());
    assert!(!held(&h, "I9"), "a lists 1 replica, Docker runs 2");
    let mut h = good();
    let dup = h.snapshots[9].services[0].clone();
    h.snapshots[9].services.push(dup);
    assert!(!held(&h, "I9"), "a listed twice");
    let mut h = good();
    h.snapshots[9]
        .metrics
        .insert(metric::SERVICES.with("state", "serving"), 3.0);
    assert!(!held(&h, "I9"), "the gauge counts 3 serving for 2 listed");
    let mut h = good();
    h.truth = None;
    assert!(!held(&h, "I9"), "no truth recorded");
}

#[test]
fn i7_wrong_server_fails() {
    let mut h = good();
    h.samples[3] = sample(1500, "b", Outcome::Wrong, "a");
    assert!(!held(&h, "I7"));
}

#[test]
fn i10_a_port_outside_the_ranges_fails_and_so_does_no_sample() {
    let mut h = good();
    h.binds[4].ports.push(8080);
    assert!(!held(&h, "I10"));
    let mut h = good();
    h.api_port = None;
    assert!(!held(&h, "I10"), "the API's port counts only when named");
    let mut h = good();
    for b in &mut h.binds {
        b.ports.clear();
        b.error = Some("permission denied".into());
    }
    assert!(
        !held(&h, "I10"),
        "a run whose sockets were never read proves nothing"
    );
    let mut h = good();
    h.binds[0].error = Some("restarting".into());
    h.binds[0].ports.clear();
    assert!(held(&h, "I10"), "a sample lost to a restart is allowed");
}

#[test]
fn i4_a_failure_under_another_fault_breaks_no_failover_promise() {
    let mut h = good();
    h.faults.push(net_fault(FaultKind::NetReset, None));
    h.samples[10] = sample(5_000, "a", Outcome::Refused, "a");
    assert!(!held(&h, "I4"));
    // The same failure while the bridge restarts is that restart's.
    h.faults.push(bridge_kill(4_900, 5_100));
    let (vs, _) = check(&h, MARKS);
    let i4 = vs.iter().find(|v| v.id == "I4").expect("I4");
    assert!(!i4.detail.contains("fail over"), "{i4:?}");
}

#[test]
fn i7_a_stale_port_is_excused_only_while_the_port_may_move() {
    // b's probe went to 11100 (a's port) after b's port moved to 11101.
    let mut h = good();
    h.samples[3] = sample(1_500, "b", Outcome::Wrong, "a");
    let at = h
        .snapshots
        .iter()
        .position(|s| s.t_ms >= 1_500)
        .expect("a later snapshot");
    for s in &mut h.snapshots[at..] {
        for v in &mut s.services {
            if v.name == "b" {
                v.port = Some(11_101);
            }
        }
    }
    assert!(!held(&h, "I7"), "no fault let b's port move");
    let mut f = bridge_kill(1_000, 1_400);
    f.kind = FaultKind::StoreTruncate;
    f.may_move = vec!["*".into()];
    h.faults.push(f);
    let (vs, _) = check(&h, MARKS);
    let i7 = vs.iter().find(|v| v.id == "I7").expect("I7");
    assert!(
        i7.held && i7.detail.contains("1 probes went to a port"),
        "{i7:?}"
    );
    // b left without a new port (pending: a flood had filled the pool when
    // the store was lost) has left its port too.
    for s in &mut h.snapshots[at..] {
        for v in &mut s.services {
            if v.name == "b" {
                v.port = None;
            }
        }
    }
    assert!(held(&h, "I7"));
    // A wrong answer at the port the service still holds is never excused.
    h.samples[5] = sample(2_500, "a", Outcome::Wrong, "b");
    assert!(!held(&h, "I7"));
}
