//! I8, session integrity, and the session figures, judged on the session
//! probes' events ([`crate::session`]) and the SDK client's runs:
//! - every answer in a session comes from the replica that created it (the
//!   same process for streamable HTTP servers; the same container for stdio
//!   servers, whose sessions the bridge carries over to a new process);
//! - a session ends only when its client ends it or its replica died, and
//!   then with 404, never an answer after it: a 404 needs a fault that ended
//!   that replica while the session lived (a kill, stop, restart or removal
//!   for HTTP servers; a removal for stdio ones) or moved the service's port;
//! - a request of a session fails only inside a fault window on its service
//!   (a session that fails for no reason is broken, 404 or not);
//! - once the run has settled, every request of a live session is answered;
//! - a run of the official SDK client fails only under a fault of its service.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::faults::FaultKind;
use crate::probe::{FaultRecord, History};
use crate::session::{Got, Op, Replica, SessionEvent, SessionKind, by_session};

/// How long after a fault began a session created meanwhile may still have
/// been on the process it ends (`docker restart` waits up to 10 s first).
const LATE_MS: u64 = 12_000;
/// Requests in the first moments of the settle time may still meet a
/// healing fault.
const SETTLED_AFTER_MS: u64 = 3_000;

/// What the session probes and the SDK client saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionFigures {
    /// Sessions opened.
    pub started: u64,
    /// Sessions their client ended (DELETE answered).
    pub completed: u64,
    /// Sessions that ended with 404.
    pub lost: u64,
    /// Sessions whose client's DELETE got no answer (a bridge restart at
    /// that moment): left to the server.
    pub unended: u64,
    /// Why each loss was allowed (or not), with how many.
    pub lost_why: BTreeMap<String, u64>,
    /// Requests (initialize, calls, pings, deletes) sent in sessions.
    pub requests: u64,
    /// Of them answered.
    pub answered: u64,
    /// Notifications received on GET streams that named their sender.
    pub stream_notes: u64,
    /// Per service: started, completed, lost.
    pub by_service: BTreeMap<String, [u64; 3]>,
    /// Runs of the official SDK client.
    pub sdk_runs: u64,
    /// Of them failed (a session failed, or the run did).
    pub sdk_failed: u64,
    /// Sessions the SDK client opened.
    pub sdk_sessions: u64,
    /// Calls it got answered.
    pub sdk_calls: u64,
}

/// Does fault `f` end the process (HTTP) or the container (stdio) of
/// `replica`, or of any replica of `service` when the replica is unknown?
fn ends(f: &FaultRecord, kind: SessionKind, service: &str, replica: Option<&Replica>) -> bool {
    let kills = match kind {
        SessionKind::Http => matches!(
            f.kind,
            FaultKind::ContainerKill
                | FaultKind::ContainerStop
                | FaultKind::ContainerRestart
                | FaultKind::ContainerRemove
                | FaultKind::ServiceChurn
                | FaultKind::EngineRestart
        ),
        SessionKind::Stdio => {
            matches!(f.kind, FaultKind::ContainerRemove | FaultKind::ServiceChurn)
        }
    };
    if !kills {
        return false;
    }
    if f.kind == FaultKind::EngineRestart {
        return true;
    }
    if f.kind == FaultKind::ServiceChurn {
        // Every replica of the services it removed.
        return f.services.iter().any(|s| s == service);
    }
    match replica {
        Some(r) => f.target.split(',').any(|t| t.trim() == r.container),
        None => f.services.iter().any(|s| s == service),
    }
}

/// Why a session created at `created` and ended by a 404 at `t` may have
/// ended, if it may.
fn loss_allowed(
    h: &History,
    kind: SessionKind,
    service: &str,
    replica: Option<&Replica>,
    created: u64,
    t: u64,
) -> Option<String> {
    let lived = |f: &&FaultRecord| f.t_ms <= t && created <= f.until_ms + LATE_MS;
    if let Some(f) = h
        .faults
        .iter()
        .filter(lived)
        .find(|f| ends(f, kind, service, replica))
    {
        return Some(match replica {
            Some(r) => format!("{} ended its replica {}", f.kind, r.container),
            None => format!("{} hit {service} (replica unknown)", f.kind),
        });
    }
    h.faults
        .iter()
        .filter(lived)
        .find(|f| f.lets_move(service))
        .map(|f| format!("{} moved the port of {service}", f.kind))
}

/// I8 and the session figures; `recovery_ms` is the scenario's bound.
pub fn i8_sessions(h: &History, recovery_ms: u64) -> (Vec<String>, SessionFigures) {
    let mut problems = Vec::new();
    let mut fig = SessionFigures::default();
    for ((service, n), events) in by_session(&h.sessions) {
        let kind = h
            .session_services
            .get(&service)
            .copied()
            .unwrap_or(SessionKind::Http);
        let name = format!("{service}#{n}");
        let created = events.first().map_or(0, |e| e.t_ms);
        let origin: Option<&Replica> = events
            .iter()
            .filter(|e| e.reply == Got::Answered)
            .find_map(|e| e.replica.as_ref());
        let counts = fig.by_service.entry(service.clone()).or_default();
        fig.started += 1;
        counts[0] += 1;
        let mut lost_at = None;
        for e in &events {
            if e.op != Op::Stream {
                fig.requests += 1;
                fig.answered += u64::from(e.reply == Got::Answered);
            } else if e.reply == Got::Answered {
                fig.stream_notes += 1;
            }
            if let (Some(o), Some(r), Got::Answered) = (origin, e.replica.as_ref(), e.reply) {
                let same = match kind {
                    SessionKind::Http => r == o,
                    SessionKind::Stdio => r.container == o.container,
                };
                if !same {
                    problems.push(format!(
                        "session {name} created on {} (process {}) was answered by {} (process {}) at t={}ms ({:?})",
                        o.container, o.process, r.container, r.process, e.t_ms, e.op
                    ));
                }
            }
            if e.reply == Got::Answered
                && let Some(t) = lost_at
            {
                problems.push(format!(
                    "session {name} was answered at t={}ms after its 404 at t={t}ms",
                    e.t_ms
                ));
            }
            if e.reply == Got::NotFound && lost_at.is_none() {
                lost_at = Some(e.t_ms);
            }
        }
        let deleted = events
            .iter()
            .any(|e| e.op == Op::Delete && e.reply == Got::Answered);
        if let Some(t) = lost_at {
            fig.lost += 1;
            counts[2] += 1;
            match loss_allowed(h, kind, &service, origin, created, t) {
                Some(why) => *fig.lost_why.entry(why).or_default() += 1,
                None => {
                    *fig.lost_why.entry("not allowed".into()).or_default() += 1;
                    problems.push(format!(
                        "session {name} got 404 at t={t}ms although nothing ended its replica {} since it began at t={created}ms",
                        origin.map_or("(unknown)", |r| r.container.as_str())
                    ));
                }
            }
        } else if deleted {
            fig.completed += 1;
            counts[1] += 1;
        } else {
            fig.unended += 1;
        }
        if lost_at.is_none() {
            problems.extend(unsettled(h, &name, &events));
        }
        problems.extend(unexcused(h, kind, &service, &name, &events, recovery_ms));
    }
    for r in &h.sdk_runs {
        fig.sdk_runs += 1;
        fig.sdk_sessions += r.sessions;
        fig.sdk_calls += r.calls;
        let failed = r.failed > 0 || r.error.is_some();
        fig.sdk_failed += u64::from(failed);
        if failed && !faulted(h, &r.service, r.t_ms, r.end_ms) {
            problems.push(format!(
                "the SDK client's run on {} at t={}..{}ms failed with no fault on it: {} of {} sessions failed{}",
                r.service,
                r.t_ms,
                r.end_ms,
                r.failed,
                r.sessions,
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    (problems, fig)
}

/// Requests of a live session that failed once the run had settled.
fn unsettled(h: &History, name: &str, events: &[&SessionEvent]) -> Vec<String> {
    let from = h.settle_from_ms + SETTLED_AFTER_MS;
    events
        .iter()
        .filter(|e| e.t_ms >= from && e.op != Op::Stream && e.reply == Got::Failed)
        .take(1)
        .map(|e| {
            format!(
                "session {name}: {:?} failed at t={}ms, after the run settled: {}",
                e.op,
                e.t_ms,
                e.detail.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

/// The first request of a session that failed outside every fault window
/// on its service (from 500 ms before a fault to its heal + `recovery_ms`;
/// for stdio services an engine cut counts too, as their traffic passes
/// through the engine): a session that fails for no reason is broken, 404
/// or not.
fn unexcused(
    h: &History,
    kind: SessionKind,
    service: &str,
    name: &str,
    events: &[&SessionEvent],
    recovery_ms: u64,
) -> Option<String> {
    let hits = |f: &FaultRecord| {
        f.kind.is_global()
            || f.services.iter().any(|s| s == service)
            || (kind == SessionKind::Stdio && f.kind == FaultKind::EngineCut)
    };
    let excused = |t: u64| {
        h.faults
            .iter()
            .any(|f| hits(f) && t + 500 >= f.t_ms && t <= f.until_ms + recovery_ms)
    };
    let e = events.iter().find(|e| {
        matches!(e.op, Op::Call | Op::Ping) && e.reply == Got::Failed && !excused(e.t_ms)
    })?;
    Some(format!(
        "session {name}: {:?} failed at t={}ms with no fault on {service} to excuse it: {}",
        e.op,
        e.t_ms,
        e.detail.as_deref().unwrap_or("?")
    ))
}

/// Was `service` under a fault (or its recovery) during `from..=to`?
fn faulted(h: &History, service: &str, from: u64, to: u64) -> bool {
    h.faults.iter().any(|f| {
        (f.kind.is_global() || f.services.iter().any(|s| s == service))
            && f.t_ms <= to
            && f.until_ms + LATE_MS >= from
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SdkRun;

    fn rep(container: &str, process: &str) -> Option<Replica> {
        Some(Replica {
            container: container.into(),
            process: process.into(),
        })
    }

    fn ev(t: u64, session: u64, op: Op, reply: Got, replica: Option<Replica>) -> SessionEvent {
        SessionEvent {
            t_ms: t,
            service: "docs".into(),
            session,
            op,
            reused: false,
            reply,
            replica,
            detail: None,
        }
    }

    fn fault(kind: FaultKind, t: u64, target: &str) -> FaultRecord {
        FaultRecord {
            t_ms: t,
            kind,
            target: target.into(),
            services: vec!["docs".into()],
            until_ms: t,
            may_move: Vec::new(),
            error: None,
            no_failures: Vec::new(),
            latency_ms: None,
        }
    }

    /// Two sessions on two replicas, answered throughout (calls and stream
    /// notes), ended by their client.
    fn good(kind: SessionKind) -> History {
        let mut h = History {
            settle_from_ms: 10_000,
            end_ms: 20_000,
            ..History::default()
        };
        h.session_services.insert("docs".into(), kind);
        for (n, c) in [(1, "docs-0"), (2, "docs-1")] {
            h.sessions
                .push(ev(100, n, Op::Initialize, Got::Answered, None));
            for i in 1..30 {
                let op = if i % 3 == 1 { Op::Ping } else { Op::Call };
                let who = if op == Op::Call { rep(c, "p1") } else { None };
                h.sessions
                    .push(ev(100 + i * 500, n, op, Got::Answered, who));
            }
            h.sessions
                .push(ev(7_000, n, Op::Stream, Got::Answered, rep(c, "p1")));
            h.sessions
                .push(ev(19_000, n, Op::Delete, Got::Answered, None));
        }
        h
    }

    fn holds(h: &History) -> bool {
        i8_sessions(h, RECOVERY).0.is_empty()
    }

    const RECOVERY: u64 = 3_000;

    /// Session 1's requests from `t` on get 404.
    fn lost_at(mut h: History, t: u64) -> History {
        for e in h
            .sessions
            .iter_mut()
            .filter(|e| e.session == 1 && e.t_ms >= t)
        {
            e.reply = Got::NotFound;
            e.replica = None;
        }
        h
    }

    #[test]
    fn sessions_that_stay_and_end_by_their_client_hold() {
        for kind in [SessionKind::Http, SessionKind::Stdio] {
            let h = good(kind);
            let (problems, fig) = i8_sessions(&h, RECOVERY);
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!((fig.started, fig.completed, fig.lost), (2, 2, 0));
            assert_eq!(fig.stream_notes, 2);
            assert_eq!(fig.by_service["docs"], [2, 2, 0]);
        }
    }

    #[test]
    fn an_answer_from_another_replica_fails() {
        let mut h = good(SessionKind::Http);
        h.sessions
            .push(ev(5_100, 1, Op::Call, Got::Answered, rep("docs-1", "p1")));
        let (problems, _) = i8_sessions(&h, RECOVERY);
        assert!(problems[0].contains("created on docs-0"), "{problems:?}");
        // On the stream too.
        let mut h = good(SessionKind::Stdio);
        h.sessions
            .push(ev(5_100, 2, Op::Stream, Got::Answered, rep("docs-0", "p1")));
        assert!(!holds(&h));
    }

    #[test]
    fn a_new_process_may_answer_a_stdio_session_but_not_an_http_one() {
        let mut h = good(SessionKind::Http);
        h.sessions
            .push(ev(5_100, 1, Op::Call, Got::Answered, rep("docs-0", "p2")));
        assert!(!holds(&h), "an HTTP server's session lives in its process");
        h.session_services.insert("docs".into(), SessionKind::Stdio);
        assert!(
            holds(&h),
            "the bridge carries stdio sessions to a new process"
        );
    }

    #[test]
    fn a_404_needs_a_fault_that_ended_the_replica() {
        let h = lost_at(good(SessionKind::Http), 6_000);
        let (problems, fig) = i8_sessions(&h, RECOVERY);
        assert!(problems[0].contains("got 404"), "{problems:?}");
        assert_eq!(fig.lost, 1);

        let mut other = h.clone();
        other
            .faults
            .push(fault(FaultKind::ContainerKill, 5_800, "docs-1"));
        assert!(!holds(&other), "another replica's death does not excuse it");

        let mut bridge = h.clone();
        let mut f = fault(FaultKind::BridgeKill, 5_800, "bridge");
        f.until_ms = 6_500;
        bridge.faults.push(f);
        assert!(!holds(&bridge), "sessions outlive a bridge kill -9");

        let mut killed = h.clone();
        killed
            .faults
            .push(fault(FaultKind::ContainerKill, 5_800, "docs-0,docs-2"));
        let (problems, fig) = i8_sessions(&killed, RECOVERY);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(fig.lost_why["container-kill ended its replica docs-0"], 1);
        assert_eq!((fig.completed, fig.lost), (1, 1));

        let mut later = h;
        later
            .faults
            .push(fault(FaultKind::ContainerKill, 6_500, "docs-0"));
        assert!(!holds(&later), "a kill after the 404 does not explain it");
    }

    #[test]
    fn a_404_after_a_fault_that_moved_every_port_is_allowed() {
        let mut h = lost_at(good(SessionKind::Stdio), 6_000);
        let mut f = fault(FaultKind::StoreTruncate, 5_000, "state.db");
        f.until_ms = 5_900;
        f.may_move = vec!["*".into()];
        h.faults.push(f);
        let (problems, fig) = i8_sessions(&h, RECOVERY);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(fig.lost_why["store-truncate moved the port of docs"], 1);
    }

    #[test]
    fn a_stdio_session_is_lost_only_with_its_container() {
        let mut h = lost_at(good(SessionKind::Stdio), 6_000);
        h.faults
            .push(fault(FaultKind::ContainerKill, 5_800, "docs-0"));
        assert!(!holds(&h), "a killed stdio server's sessions go on");
        h.faults
            .push(fault(FaultKind::ContainerRemove, 5_900, "docs-0"));
        assert!(holds(&h));
    }

    #[test]
    fn an_answer_after_the_404_fails() {
        let mut h = lost_at(good(SessionKind::Http), 6_000);
        h.faults
            .push(fault(FaultKind::ContainerKill, 5_800, "docs-0"));
        h.sessions.push(ev(8_000, 1, Op::Ping, Got::Answered, None));
        let (problems, _) = i8_sessions(&h, RECOVERY);
        assert!(problems[0].contains("after its 404"), "{problems:?}");
    }

    #[test]
    fn a_failure_after_the_run_settled_fails() {
        let mut h = good(SessionKind::Http);
        let mut e = ev(14_000, 2, Op::Call, Got::Failed, None);
        e.detail = Some("HTTP 502".into());
        h.sessions.push(e.clone());
        assert!(i8_sessions(&h, RECOVERY).0[0].contains("after the run settled"));
        e.t_ms = 9_000;
        let mut before = good(SessionKind::Http);
        before.sessions.push(e);
        before
            .faults
            .push(fault(FaultKind::BridgeKill, 8_800, "bridge"));
        assert!(
            holds(&before),
            "failures under a fault during the run are allowed"
        );
    }

    #[test]
    fn a_request_that_fails_with_no_fault_to_excuse_it_fails() {
        // Session 1 fails from 5 s to 7 s.
        let failing = |h: &mut History| {
            for e in h
                .sessions
                .iter_mut()
                .filter(|e| e.session == 1 && (5_000..7_000).contains(&e.t_ms))
            {
                e.reply = Got::Failed;
                e.replica = None;
            }
        };
        let mut h = good(SessionKind::Stdio);
        failing(&mut h);
        let (problems, _) = i8_sessions(&h, RECOVERY);
        assert!(problems[0].contains("no fault on docs"), "{problems:?}");
        // A kill of its replica that healed at 4.5 s excuses it (+3 s).
        let mut f = fault(FaultKind::ContainerKill, 4_000, "docs-0");
        f.until_ms = 4_500;
        h.faults.push(f.clone());
        assert!(holds(&h));
        // Healed at 1 s, it does not.
        let mut early = good(SessionKind::Stdio);
        failing(&mut early);
        f.t_ms = 500;
        f.until_ms = 1_000;
        early.faults.push(f);
        assert!(!holds(&early));
        // An engine cut excuses a stdio session (its traffic passes through
        // the engine), not an HTTP one.
        let mut cut = good(SessionKind::Stdio);
        failing(&mut cut);
        let mut c = fault(FaultKind::EngineCut, 4_800, "tcp :2375");
        c.services.clear();
        c.until_ms = 7_000;
        cut.faults.push(c);
        assert!(holds(&cut));
        cut.session_services
            .insert("docs".into(), SessionKind::Http);
        assert!(!holds(&cut));
    }

    #[test]
    fn an_sdk_run_fails_only_under_a_fault() {
        let mut h = good(SessionKind::Stdio);
        h.sdk_runs.push(SdkRun {
            t_ms: 1_000,
            end_ms: 4_000,
            service: "docs".into(),
            sessions: 2,
            failed: 1,
            calls: 5,
            error: None,
        });
        let (problems, fig) = i8_sessions(&h, RECOVERY);
        assert!(problems[0].contains("SDK client"), "{problems:?}");
        assert_eq!((fig.sdk_runs, fig.sdk_failed, fig.sdk_calls), (1, 1, 5));
        h.faults
            .push(fault(FaultKind::ContainerKill, 3_000, "docs-0"));
        assert!(holds(&h));
    }
}
