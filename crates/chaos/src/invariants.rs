//! Invariants I1-I10 (docs/DESIGN.md section 4), judged on a recorded
//! [`History`]; I8, session integrity, is in [`sessions`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::faults::FaultKind;
use mesh_bridge::contract::metric;

use crate::probe::{History, Outcome, PoolView, ServiceState, Snapshot};

/// Every invariant [`check`] judges, in order.
pub const IDS: [&str; 10] = ["I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9", "I10"];

pub mod sessions;

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// One of [`IDS`].
    pub id: String,
    /// What it says.
    pub title: String,
    /// Held?
    pub held: bool,
    /// Evidence.
    pub detail: String,
}

/// Pass marks used by I4.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    /// Minimum availability of services not under fault.
    pub availability: f64,
    /// Maximum recovery after a bridge restart, ms.
    pub recovery_ms: u64,
}

/// Availability and recovery figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Ok / all samples of services not under fault.
    pub availability: f64,
    /// Samples counted for it.
    pub samples: usize,
    /// Ok / all samples of the probed services, fault windows included.
    #[serde(default)]
    pub availability_all: f64,
    /// Worst recovery after a bridge restart (ms), if any restart.
    pub recovery_ms: Option<u64>,
    /// Every recovery, ms.
    pub recoveries: Vec<u64>,
    /// What the session probes and the SDK client saw.
    #[serde(default)]
    pub sessions: sessions::SessionFigures,
}

fn v(id: &str, title: &str, problems: Vec<String>, ok_detail: String) -> Verdict {
    let held = problems.is_empty();
    let detail = if held {
        ok_detail
    } else {
        let n = problems.len();
        let mut d: Vec<String> = problems.into_iter().take(5).collect();
        if n > 5 {
            d.push(format!("... and {} more", n - 5));
        }
        d.join("; ")
    };
    Verdict {
        id: id.into(),
        title: title.into(),
        held,
        detail,
    }
}

/// Is `service` under a fault at `t` (fault window plus `tail` ms)?
pub fn under_fault(h: &History, service: &str, t: u64, tail: u64) -> bool {
    h.faults.iter().any(|f| {
        (f.kind.is_global() || f.services.iter().any(|s| s == service))
            && t + 500 >= f.t_ms
            && t <= f.until_ms + tail
    })
}

/// Availability (I4) and recovery figures.
pub fn figures(h: &History, marks: Marks) -> Figures {
    let probed: BTreeSet<&str> = h.probed.iter().map(String::as_str).collect();
    let mut ok = 0usize;
    let mut all = 0usize;
    for s in &h.samples {
        if !probed.contains(s.service.as_str())
            || under_fault(h, &s.service, s.t_ms, marks.recovery_ms)
        {
            continue;
        }
        all += 1;
        if s.outcome == Outcome::Ok {
            ok += 1;
        }
    }
    let mut recoveries = Vec::new();
    for f in h
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::BridgeKill && f.error.is_none())
    {
        let mut worst = 0u64;
        let mut complete = true;
        // Services also under a container fault around the restart recover
        // when their containers do; they do not measure the bridge.
        let window_end = f.until_ms + marks.recovery_ms;
        let others_hit = |s: &str| {
            h.faults.iter().any(|g| {
                !g.kind.is_global()
                    && g.services.iter().any(|x| x == s)
                    && g.t_ms <= window_end
                    && g.until_ms + 2_000 >= f.t_ms
            })
        };
        // Only services that existed before the restart can recover from it
        // (services a churn creates later are judged by their own windows).
        let existed = |s: &str| h.samples.iter().any(|x| x.service == s && x.t_ms < f.t_ms);
        for s in probed.iter().filter(|s| !others_hit(s) && existed(s)) {
            match h
                .samples
                .iter()
                .filter(|x| x.service == *s && x.t_ms >= f.until_ms && x.outcome == Outcome::Ok)
                .map(|x| x.t_ms)
                .min()
            {
                Some(t) => worst = worst.max(t - f.until_ms),
                None => complete = false,
            }
        }
        recoveries.push(if complete { worst } else { u64::MAX });
    }
    let (mut ok_all, mut n_all) = (0usize, 0usize);
    for s in h
        .samples
        .iter()
        .filter(|s| probed.contains(s.service.as_str()))
    {
        n_all += 1;
        if s.outcome == Outcome::Ok {
            ok_all += 1;
        }
    }
    Figures {
        availability_all: if n_all == 0 {
            1.0
        } else {
            ok_all as f64 / n_all as f64
        },
        availability: if all == 0 {
            1.0
        } else {
            ok as f64 / all as f64
        },
        samples: all,
        recovery_ms: recoveries.iter().copied().max(),
        recoveries,
        sessions: sessions::SessionFigures::default(),
    }
}

/// I4's second half: what the network faults promise clients
/// (docs/DESIGN.md section 4.1). A service in a fault's `no_failures` sees no
/// failed probe while the fault holds, except probes already under way when
/// it landed (a spliced connection cannot move); with `latency_ms`, some probe
/// of those services in the window took at least that long.
fn broken_promises(h: &History, tail: u64) -> Vec<String> {
    let in_flight = crate::probe::PROBE_TIMEOUT.as_millis() as u64;
    let mut out = Vec::new();
    for (i, f) in h
        .faults
        .iter()
        .enumerate()
        .filter(|(_, f)| f.error.is_none())
    {
        // Another fault on the service at the same time (a kill, a bridge
        // restart) breaks no promise of this one.
        let others = |svc: &str, t: u64| {
            h.faults.iter().enumerate().any(|(j, g)| {
                j != i
                    && (g.kind.is_global() || g.services.iter().any(|s| s == svc))
                    && t + 500 >= g.t_ms
                    && t <= g.until_ms + tail
            })
        };
        let window = |t: u64| t >= f.t_ms && t <= f.until_ms;
        for svc in &f.no_failures {
            let mine = || {
                h.samples
                    .iter()
                    .filter(|x| &x.service == svc && window(x.t_ms))
            };
            let failed = mine()
                .filter(|x| x.t_ms >= f.t_ms + in_flight && x.outcome != Outcome::Ok)
                .filter(|x| !others(svc, x.t_ms))
                .count();
            if failed > 0 {
                out.push(format!(
                    "{svc}: {failed} failed probes during {} at t={}..{}ms, which must fail over or only slow down",
                    f.kind, f.t_ms, f.until_ms
                ));
            }
            // A session stays on its replica: whether one was on a slowed
            // replica is chance, so the delay is looked for only in
            // one-shot probes.
            if let Some(d) = f
                .latency_ms
                .filter(|_| !h.session_services.contains_key(svc))
            {
                let slowest = mine().map(|x| x.latency_ms).fold(0.0, f64::max);
                if mine().next().is_some() && slowest < d as f64 {
                    out.push(format!(
                        "{svc}: slowest probe {slowest:.0}ms during {} of {d}ms at t={}..{}ms: the delay did not take effect",
                        f.kind, f.t_ms, f.until_ms
                    ));
                }
            }
        }
    }
    out
}

/// Checks I1-I10, one function each.
pub fn check(h: &History, marks: Marks) -> (Vec<Verdict>, Figures) {
    let mut fig = figures(h, marks);
    let (i8_verdict, session_figures) = i8_sessions(h, marks.recovery_ms);
    fig.sessions = session_figures;
    let out = vec![
        i1_unique_ports(h),
        i2_ports_kept(h),
        i3_settled(h),
        i4_availability(h, marks, &fig),
        i5_metrics_agree(h),
        i6_nothing_lost(h),
        i7_right_service(h),
        i8_verdict,
        i9_catalog(h),
        i10_binds(h),
    ];
    (out, fig)
}

/// I8: sessions stay on their replica and end only as allowed
/// ([`sessions`]).
fn i8_sessions(h: &History, recovery_ms: u64) -> (Verdict, sessions::SessionFigures) {
    let (problems, f) = sessions::i8_sessions(h, recovery_ms);
    let ok = if f.started == 0 && f.sdk_runs == 0 {
        "no session services in this scenario".to_string()
    } else {
        format!(
            "{} sessions ({} requests, {} stream notes): {} ended by their client, {} whose DELETE went unanswered, {} lost as allowed ({}); {} SDK client runs ({} failed under faults)",
            f.started,
            f.requests,
            f.stream_notes,
            f.completed,
            f.unended,
            f.lost,
            f.lost_why
                .iter()
                .map(|(k, v)| format!("{v}x {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            f.sdk_runs,
            f.sdk_failed
        )
    };
    (
        v(
            "I8",
            "every session is answered by the replica that created it and ends only by its client or its replica's end (then 404)",
            problems,
            ok,
        ),
        f,
    )
}

/// I1: no two services share a port, in any snapshot.
fn i1_unique_ports(h: &History) -> Verdict {
    let mut p1 = Vec::new();
    for s in &h.snapshots {
        let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
        for sv in &s.services {
            if let Some(p) = sv.port
                && let Some(other) = seen.insert(p, &sv.name)
            {
                p1.push(format!(
                    "t={}ms port {p} held by {other} and {}",
                    s.t_ms, sv.name
                ));
            }
        }
    }
    let n = h.snapshots.len();
    v(
        "I1",
        "no two services ever share a port",
        p1,
        format!("{n} snapshots, no shared port"),
    )
}

/// I2: a live service keeps its port (unless a fault allows it to move), and every held port comes back `restored` after a kill -9.
fn i2_ports_kept(h: &History) -> Verdict {
    let mut p2 = Vec::new();
    let mut last: BTreeMap<&str, (u16, u64)> = BTreeMap::new();
    let live: BTreeSet<&str> = h.probed.iter().map(String::as_str).collect();
    for s in &h.snapshots {
        for sv in &s.services {
            if !live.contains(sv.name.as_str()) {
                continue;
            }
            let Some(p) = sv.port else { continue };
            if let Some(&(old, t_old)) = last.get(sv.name.as_str())
                && old != p
            {
                let allowed = h.faults.iter().any(|f| {
                    f.t_ms <= s.t_ms && f.until_ms + 30_000 >= t_old && f.lets_move(&sv.name)
                });
                if !allowed {
                    p2.push(format!(
                        "{} moved {old} -> {p} between t={t_old}ms and t={}ms",
                        sv.name, s.t_ms
                    ));
                }
            }
            last.insert(&sv.name, (p, s.t_ms));
        }
    }
    p2.extend(not_restored(h));
    let restarts = h.faults.iter().filter(|f| f.kind.is_global()).count();
    v(
        "I2",
        "a live service keeps its port across bridge and container restarts",
        p2,
        format!(
            "{} services kept their ports through {} bridge/engine faults",
            last.len(),
            restarts
        ),
    )
}

/// I3: after settling, ports_in_use equals the live services; quarantine drained.
fn i3_settled(h: &History) -> Verdict {
    let mut p3 = Vec::new();
    let fin = h.snapshots.iter().rev().find(|s| s.pool.is_some());
    match fin {
        None => p3.push("no snapshot of /v1/pool at the end".to_string()),
        Some(s) => {
            let in_use = s.pool_field(|p| p.in_use).unwrap_or(u64::MAX);
            let want = h.live.len() as u64;
            if in_use != want {
                p3.push(format!(
                    "final in_use {in_use} but {want} live services ({})",
                    h.live.join(",")
                ));
            }
            let serving: BTreeSet<&str> = s
                .services
                .iter()
                .filter(|x| x.port.is_some() && x.state == ServiceState::Serving)
                .map(|x| x.name.as_str())
                .collect();
            for l in &h.live {
                if !serving.contains(l.as_str()) {
                    p3.push(format!("live service {l} not serving at the end"));
                }
            }
            let q = s.pool_field(|p| p.quarantined).unwrap_or(0);
            if q > 0 && s.t_ms >= h.settle_from_ms + h.grace_ms + 2_000 {
                p3.push(format!(
                    "{q} ports still quarantined {}ms after the last fault (grace {}ms)",
                    s.t_ms - h.settle_from_ms,
                    h.grace_ms
                ));
            }
        }
    }
    v(
        "I3",
        "after settling, ports_in_use equals the live services and quarantine drains",
        p3,
        format!("{} live services, each serving on one port", h.live.len()),
    )
}

/// I4: availability and recovery, and what DESIGN promises under each network fault.
fn i4_availability(h: &History, marks: Marks, fig: &Figures) -> Verdict {
    let mut p4 = Vec::new();
    if fig.availability < marks.availability {
        p4.push(format!(
            "availability {:.4} < {:.4} over {} samples",
            fig.availability, marks.availability, fig.samples
        ));
    }
    if fig.samples == 0 && !h.probed.is_empty() {
        p4.push("no sample of a service outside fault windows".into());
    }
    p4.extend(broken_promises(h, marks.recovery_ms));
    for r in &fig.recoveries {
        if *r > marks.recovery_ms {
            p4.push(if *r == u64::MAX {
                "a service never recovered after a bridge restart".into()
            } else {
                format!("recovery {r}ms > {}ms", marks.recovery_ms)
            });
        }
    }
    v(
        "I4",
        "availability of services not under fault >= threshold; recovery <= bound",
        p4,
        format!(
            "availability {:.4} over {} samples (>= {}); worst recovery {}",
            fig.availability,
            fig.samples,
            marks.availability,
            fig.recovery_ms
                .map_or("n/a (no bridge restart)".to_string(), |r| format!(
                    "{r}ms (<= {}ms)",
                    marks.recovery_ms
                ))
        ),
    )
}

/// I5: /metrics agrees with /v1/pool; counters move exactly as expected.
fn i5_metrics_agree(h: &History) -> Verdict {
    let mut p5 = Vec::new();
    let mut compared = 0;
    for s in h.snapshots.iter().filter(|s| s.stable) {
        compared += 1;
        let fields: [PoolGauge; 4] = [
            ("in_use", metric::PORTS_IN_USE, |p| p.in_use),
            ("quarantined", metric::PORTS_QUARANTINED, |p| p.quarantined),
            ("conflicted", metric::PORTS_CONFLICTED, |p| p.conflicted),
            ("capacity", metric::PORTS_CAPACITY, |p| p.capacity),
        ];
        for (k, d, field) in fields {
            let m = d.name;
            let a = s.pool_field(field);
            let b = s.metric(m).map(|x| x as u64);
            if a != b {
                p5.push(format!("t={}ms /v1/pool {k}={a:?} but {m}={b:?}", s.t_ms));
            }
        }
    }
    let delta = |name: &str| -> u64 {
        // Sum of increases; a drop means the bridge restarted (counter reset).
        let mut total = 0f64;
        let mut prev: Option<f64> = None;
        for s in &h.snapshots {
            if let Some(x) = s.metric(name) {
                if let Some(p) = prev {
                    total += if x >= p { x - p } else { x };
                }
                prev = Some(x);
            }
        }
        total as u64
    };
    let dup = delta(metric::DUPLICATE_REGISTRATIONS.name);
    let exh = delta(metric::EXHAUSTION_EVENTS.name);
    if let Some(want) = h.expect.duplicates
        && dup != want
    {
        p5.push(format!(
            "duplicate_registration_attempts_total rose by {dup}, expected exactly {want}"
        ));
    }
    match h.expect.exhaustion {
        Some(true) if exh == 0 => p5.push(
            "port_exhaustion_events_total did not move during a flood beyond capacity".into(),
        ),
        Some(false) if exh > 0 => p5.push(format!(
            "port_exhaustion_events_total rose by {exh} with the pool never full"
        )),
        _ => {}
    }
    if let Some(want) = h.expect.exhaustion_events
        && exh != want
    {
        p5.push(format!(
            "port_exhaustion_events_total rose by {exh}, expected exactly {want} (one per service left without a port)"
        ));
    }
    v(
        "I5",
        "/metrics agrees with /v1/pool; exhaustion and duplicate counters move exactly when they should",
        p5,
        format!("{compared} snapshots agree; duplicates +{dup}, exhaustion +{exh}"),
    )
}

/// I6: the store is consistent and complete after every kill -9.
fn i6_nothing_lost(h: &History) -> Verdict {
    let mut p6 = Vec::new();
    for c in &h.store_checks {
        if !c.ok && !c.damaged_on_purpose {
            p6.push(format!("t={}ms store check failed: {}", c.t_ms, c.detail));
        }
    }
    for f in h.faults.iter().filter(|f| f.error.is_some()) {
        if matches!(f.kind, FaultKind::StoreCorrupt | FaultKind::StoreTruncate) {
            p6.push(format!(
                "t={}ms {}: {}",
                f.t_ms,
                f.kind,
                f.error.as_deref().unwrap_or("")
            ));
        }
    }
    p6.extend(lost_reservations(h));
    let exported = h
        .store_checks
        .iter()
        .filter(|c| c.exported.is_some())
        .count();
    v(
        "I6",
        "nothing is lost: the store is consistent and complete after any kill -9",
        p6,
        format!(
            "{} store checks after kills, {exported} exports held every reservation shown before the kill",
            h.store_checks.len()
        ),
    )
}

/// I7: X's port is answered by X.
fn i7_right_service(h: &History) -> Verdict {
    let (stale, wrong): (Vec<_>, Vec<_>) = h
        .samples
        .iter()
        .filter(|s| s.outcome == Outcome::Wrong)
        .partition(|s| stale_port(h, s));
    let wrong: Vec<String> = wrong
        .into_iter()
        .map(|s| {
            format!(
                "t={}ms port {:?} of {} answered by {}",
                s.t_ms,
                s.port,
                s.service,
                s.server.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let answered = h
        .samples
        .iter()
        .filter(|s| s.outcome == Outcome::Ok)
        .count();
    let mut ok = format!("{answered} answers, all from the right service");
    if !stale.is_empty() {
        ok.push_str(&format!(
            "; {} probes went to a port their service had left in a fault that let it move",
            stale.len()
        ));
    }
    v(
        "I7",
        "a request to service X's port is answered by a replica of X",
        wrong,
        ok,
    )
}

/// Was `s` sent to a port its service no longer held, during a fault that
/// let that port move? The probe knew the port from the last snapshot
/// before the move (a client with a stale port); the bridge's first view
/// after the sample shows the service elsewhere, or without a port (when
/// the store was lost while a flood filled the pool, another service may
/// take its port and it waits as pending).
fn stale_port(h: &History, s: &crate::probe::Sample) -> bool {
    let moving = h
        .faults
        .iter()
        .any(|f| f.lets_move(&s.service) && f.t_ms <= s.t_ms && s.t_ms <= f.until_ms + 2_000);
    let next = h
        .snapshots
        .iter()
        .find(|x| x.t_ms >= s.t_ms && x.pool.is_some())
        .and_then(|x| x.services.iter().find(|v| v.name == s.service));
    moving && next.is_some_and(|v| v.port != s.port)
}

/// A field of `/v1/pool`, the gauge that must agree with it, and its reader.
type PoolGauge = (&'static str, metric::Def, fn(&PoolView) -> usize);

/// The services holding a port in a snapshot (reserved: serving or
/// waiting; quarantined ones may expire while the bridge is down).
fn reserved(s: &Snapshot) -> BTreeMap<&str, u16> {
    s.services
        .iter()
        .filter(|v| matches!(v.state, ServiceState::Serving | ServiceState::Waiting))
        .filter_map(|v| Some((v.name.as_str(), v.port?)))
        .collect()
}

/// The last snapshot with a pool view before `t_ms`, and the first after it.
fn around(h: &History, t_ms: u64) -> (Option<&Snapshot>, Option<&Snapshot>) {
    let before = h
        .snapshots
        .iter()
        .rev()
        .find(|s| s.t_ms < t_ms && s.pool.is_some());
    let after = h
        .snapshots
        .iter()
        .find(|s| s.t_ms > t_ms && s.pool.is_some());
    (before, after)
}

/// I2, restarts: after each bridge kill -9 the new process must count every
/// port held before the kill as `restored` from its store (a bridge that
/// forgot its allocations and re-derived them from Docker counts them `new`
/// or `sticky`, and may hand out different ports).
fn not_restored(h: &History) -> Vec<String> {
    let mut problems = Vec::new();
    for f in h
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::BridgeKill && f.error.is_none())
    {
        let (Some(before), Some(after)) = (around(h, f.t_ms).0, around(h, f.until_ms).1) else {
            continue;
        };
        let held = reserved(before).len() as f64;
        let restored = after
            .metric(&metric::ALLOCATIONS.with("outcome", metric::outcome::RESTORED))
            .unwrap_or(0.0);
        if restored < held {
            problems.push(format!(
                "t={}ms: {held} ports held before the kill -9, the restarted bridge restored {restored} from its store",
                f.t_ms
            ));
        }
    }
    problems
}

/// I6, completeness: after each kill -9 the store holds every reservation
/// the API showed just before the kill, on the same port (services under a
/// fault of their own at that moment may legitimately have changed).
fn lost_reservations(h: &History) -> Vec<String> {
    let mut problems = Vec::new();
    for c in h.store_checks.iter().filter(|c| !c.damaged_on_purpose) {
        let Some(exported) = &c.exported else {
            continue;
        };
        let Some(before) = around(h, c.t_ms).0 else {
            continue;
        };
        for (service, port) in reserved(before) {
            let own_fault = h.faults.iter().any(|f| {
                !f.kind.is_global()
                    && f.services.iter().any(|s| s == service)
                    && f.t_ms <= c.t_ms
                    && f.until_ms + 500 >= before.t_ms
            });
            if own_fault {
                continue;
            }
            match exported.get(service) {
                Some(p) if *p == port => {}
                Some(p) => problems.push(format!(
                    "t={}ms: {service} held {port} before the kill -9, the store says {p}",
                    c.t_ms
                )),
                None => problems.push(format!(
                    "t={}ms: {service} held {port} before the kill -9, the store lost it",
                    c.t_ms
                )),
            }
        }
    }
    problems
}

/// I9: after settling, the catalog (`/v1/services`) is Docker's truth: every
/// service with a running container listed once, with exactly its running
/// replicas, no entry for a service that has none (quarantined entries only
/// within grace), and the `services{state}` gauge agrees with the list.
fn i9_catalog(h: &History) -> Verdict {
    let title =
        "the catalog is the truth: /v1/services lists exactly the live services and replicas";
    let mut p = Vec::new();
    let fin = h.snapshots.iter().rev().find(|s| s.pool.is_some());
    let (Some(fin), Some(truth)) = (fin, &h.truth) else {
        return v(
            "I9",
            title,
            vec!["no final snapshot or no Docker truth recorded at the end".into()],
            String::new(),
        );
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for s in fin
        .services
        .iter()
        .filter(|s| s.state != ServiceState::Rejected)
    {
        *seen.entry(s.name.as_str()).or_default() += 1;
    }
    for (name, n) in seen.iter().filter(|(_, n)| **n > 1) {
        p.push(format!("{name} listed {n} times"));
    }
    let grace_over = fin.t_ms >= h.settle_from_ms + h.grace_ms + 2_000;
    for s in fin
        .services
        .iter()
        .filter(|s| s.state != ServiceState::Rejected)
    {
        let live = truth.get(&s.name).copied().unwrap_or(0);
        match s.state {
            ServiceState::Quarantined if live > 0 => p.push(format!(
                "{} listed quarantined while {live} of its containers run",
                s.name
            )),
            ServiceState::Quarantined if grace_over => p.push(format!(
                "{} still listed (quarantined) {}ms after the faults ended, grace {}ms",
                s.name,
                fin.t_ms.saturating_sub(h.settle_from_ms),
                h.grace_ms
            )),
            ServiceState::Quarantined => {}
            _ if live == 0 => p.push(format!(
                "{} listed {} but no container of it runs",
                s.name, s.state
            )),
            _ if s.running != live => p.push(format!(
                "{} lists {} running replicas, Docker runs {live}",
                s.name, s.running
            )),
            _ => {}
        }
    }
    for (name, n) in truth.iter().filter(|(_, n)| **n > 0) {
        if !seen.contains_key(name.as_str()) {
            p.push(format!("{name} runs {n} containers but is not listed"));
        }
    }
    for state in ServiceState::ALL {
        let listed = fin.services.iter().filter(|s| s.state == state).count() as f64;
        let key = metric::SERVICES.with("state", state.as_str());
        match fin.metric(&key) {
            Some(g) if (g - listed).abs() < 0.5 => {}
            g => p.push(format!("{key} is {g:?} but {listed} listed {state}")),
        }
    }
    let live = truth.values().filter(|n| **n > 0).count();
    v(
        "I9",
        title,
        p,
        format!(
            "{} entries for {live} live services at t={}ms, replicas and gauges agree",
            fin.services.len(),
            fin.t_ms
        ),
    )
}

#[cfg(test)]
mod tests;

/// I10: the bridge never listens on a port outside its ranges (the API's
/// port aside), in any sample of its sockets; judged against the ranges
/// the API showed at or before each sample (a reload may widen them).
fn i10_binds(h: &History) -> Verdict {
    let title = "no port outside the ranges is ever bound";
    let read: Vec<_> = h.binds.iter().filter(|b| b.error.is_none()).collect();
    if read.is_empty() {
        let why = h
            .binds
            .iter()
            .find_map(|b| b.error.clone())
            .unwrap_or_else(|| "none was taken".into());
        return v(
            "I10",
            title,
            vec![format!(
                "no sample of the bridge's sockets could be read: {why}"
            )],
            String::new(),
        );
    }
    let mut p = Vec::new();
    for b in &read {
        let ranges = h
            .snapshots
            .iter()
            .filter(|s| s.t_ms <= b.t_ms)
            .filter_map(|s| s.pool.as_ref())
            .next_back()
            .or_else(|| h.snapshots.iter().find_map(|s| s.pool.as_ref()))
            .map(|pool| pool.ranges.clone())
            .unwrap_or_default();
        for port in &b.ports {
            let inside = ranges.iter().any(|[lo, hi]| (lo..=hi).contains(&port));
            if !inside && h.api_port != Some(*port) {
                p.push(format!(
                    "t={}ms port {port} bound, outside the ranges {ranges:?} and not the API's",
                    b.t_ms
                ));
            }
        }
    }
    let most = read.iter().map(|b| b.ports.len()).max().unwrap_or(0);
    v(
        "I10",
        title,
        p,
        format!(
            "{} samples of the bridge's sockets (up to {most} listening), {} unreadable",
            read.len(),
            h.binds.len() - read.len()
        ),
    )
}
