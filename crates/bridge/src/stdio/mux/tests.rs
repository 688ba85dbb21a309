//! The multiplexer's rules, each on a short conversation.

use super::*;

fn req(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn init_params(version: &str) -> Value {
    json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})
}

/// Only the lines for the server.
fn to_server(out: &[Out]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            Out::Server(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// A multiplexer whose server has answered `initialize`, with `n` sessions.
fn ready(n: usize) -> (Mux, Vec<SessionId>) {
    let mut m = Mux::new(Limits::default());
    let sessions: Vec<SessionId> = (0..n).map(|_| m.open()).collect();
    let out = m.from_client(
        sessions[0],
        req(json!(0), INITIALIZE, init_params("2025-06-18")),
    );
    let sent = to_server(&out);
    let bid = sent[0]["id"].clone();
    let out = m.from_server(result(
        bid,
        json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}}),
    ));
    assert_eq!(
        to_server(&out),
        [json!({"jsonrpc": "2.0", "method": INITIALIZED})]
    );
    (m, sessions)
}

#[test]
fn the_server_sees_one_initialize_and_later_clients_get_its_result() {
    let mut m = Mux::new(Limits::default());
    let (a, b) = (m.open(), m.open());
    let out = m.from_client(a, req(json!(1), INITIALIZE, init_params("2025-06-18")));
    let sent = to_server(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["method"], INITIALIZE);
    assert_eq!(sent[0]["params"], init_params("2025-06-18"));
    // b initialises while the server has not answered: it waits.
    let out = m.from_client(
        b,
        req(json!("b-init"), INITIALIZE, init_params("2025-03-26")),
    );
    assert!(out.is_empty(), "{out:?}");
    let answer = json!({"protocolVersion": "2025-06-18", "capabilities": {}});
    let out = m.from_server(result(sent[0]["id"].clone(), answer.clone()));
    assert_eq!(
        out,
        [
            Out::Server(json!({"jsonrpc": "2.0", "method": INITIALIZED})),
            Out::Reply {
                session: a,
                msg: result(json!(1), answer.clone())
            },
            Out::Reply {
                session: b,
                msg: result(json!("b-init"), answer.clone())
            },
        ]
    );
    // A third client, later: answered at once, nothing reaches the server.
    let c = m.open();
    let out = m.from_client(c, req(json!(7), INITIALIZE, init_params("2024-11-05")));
    assert_eq!(
        out,
        [Out::Reply {
            session: c,
            msg: result(json!(7), answer)
        }]
    );
    // The clients' own notifications/initialized never reach it.
    for s in [a, b, c] {
        let out = m.from_client(s, json!({"jsonrpc": "2.0", "method": INITIALIZED}));
        assert!(out.is_empty());
    }
    assert_eq!(m.record().unwrap().params, init_params("2025-06-18"));
}

#[test]
fn two_clients_with_the_same_id_get_their_own_answers() {
    let (mut m, s) = ready(2);
    let (a, b) = (s[0], s[1]);
    let ta = to_server(&m.from_client(a, req(json!(1), "tools/call", json!({"name": "x"}))));
    let tb = to_server(&m.from_client(b, req(json!(1), "tools/call", json!({"name": "y"}))));
    let (ida, idb) = (ta[0]["id"].clone(), tb[0]["id"].clone());
    assert_ne!(ida, idb, "the server never sees the two id 1s");
    assert_eq!(ta[0]["params"], json!({"name": "x"}));
    assert_eq!(m.in_flight(), 2);
    // Answers in the other order reach their own session under its id.
    let out = m.from_server(result(idb, json!("for b")));
    assert_eq!(
        out,
        [Out::Reply {
            session: b,
            msg: result(json!(1), json!("for b"))
        }]
    );
    let out = m.from_server(result(ida.clone(), json!("for a")));
    assert_eq!(
        out,
        [Out::Reply {
            session: a,
            msg: result(json!(1), json!("for a"))
        }]
    );
    assert_eq!(m.in_flight(), 0);
    // A second answer to the same id, or to an id never sent, is dropped.
    assert!(m.from_server(result(ida, json!("again"))).is_empty());
    assert!(m.from_server(result(json!("nope"), json!(0))).is_empty());
}

#[test]
fn a_session_cannot_reuse_an_id_still_in_flight() {
    let (mut m, s) = ready(1);
    m.from_client(s[0], req(json!(5), "ping", json!({})));
    let out = m.from_client(s[0], req(json!(5), "ping", json!({})));
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(msg["error"]["code"], code::INVALID_REQUEST);
    assert_eq!(msg["id"], 5);
}

#[test]
fn progress_follows_its_token_back_to_its_session() {
    let (mut m, s) = ready(2);
    let (a, b) = (s[0], s[1]);
    let params = |t: Value| json!({"name": "slow", "_meta": {"progressToken": t}});
    let ta = to_server(&m.from_client(a, req(json!(1), "tools/call", params(json!("tok")))));
    let tb = to_server(&m.from_client(b, req(json!(2), "tools/call", params(json!("tok")))));
    let (pa, pb) = (
        ta[0]["params"]["_meta"]["progressToken"].clone(),
        tb[0]["params"]["_meta"]["progressToken"].clone(),
    );
    assert_ne!(pa, pb);
    let progress = |t: Value| json!({"jsonrpc": "2.0", "method": PROGRESS, "params": {"progressToken": t, "progress": 1}});
    let out = m.from_server(progress(pb));
    assert_eq!(
        out,
        [Out::Push {
            session: b,
            msg: progress(json!("tok")),
            about: Some(json!(2))
        }]
    );
    // Once the request is answered its token is forgotten.
    m.from_server(result(ta[0]["id"].clone(), json!({})));
    assert!(m.from_server(progress(pa)).is_empty());
}

#[test]
fn a_client_cancel_names_the_bridge_id_and_an_unknown_one_is_dropped() {
    let (mut m, s) = ready(2);
    let t = to_server(&m.from_client(s[0], req(json!("r1"), "tools/call", json!({}))));
    let cancel = |rid: Value| json!({"jsonrpc": "2.0", "method": CANCELLED, "params": {"requestId": rid, "reason": "user"}});
    let out = m.from_client(s[0], cancel(json!("r1")));
    assert_eq!(
        to_server(&out),
        [
            json!({"jsonrpc": "2.0", "method": CANCELLED, "params": {"requestId": t[0]["id"], "reason": "user"}})
        ]
    );
    // Another session cannot cancel it, and ids never sent are ignored.
    assert!(m.from_client(s[1], cancel(json!("r1"))).is_empty());
    assert!(m.from_client(s[0], cancel(json!("other"))).is_empty());
}

#[test]
fn server_notifications_reach_every_session() {
    let (mut m, s) = ready(3);
    let n = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    let out = m.from_server(n.clone());
    let to: Vec<SessionId> = out
        .iter()
        .map(|o| match o {
            Out::Push {
                session,
                msg,
                about: None,
            } if *msg == n => *session,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(to, s);
}

#[test]
fn a_server_request_goes_to_the_session_it_serves_and_its_answer_back() {
    let (mut m, s) = ready(2);
    let (a, b) = (s[0], s[1]);
    let ta = to_server(&m.from_client(a, req(json!(1), "tools/list", json!({}))));
    let tb = to_server(&m.from_client(b, req(json!(1), "tools/call", json!({}))));
    // b's request is the latest in flight: the sampling request is b's.
    let ask = req(
        json!(900),
        "sampling/createMessage",
        json!({"messages": []}),
    );
    let out = m.from_server(ask);
    let [
        Out::Push {
            session,
            msg,
            about: None,
        },
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*session, b);
    let bid = msg["id"].clone();
    assert_ne!(bid, json!(900));
    // Only b can answer it; the server gets its own id back.
    assert!(
        m.from_client(a, result(bid.clone(), json!({"a": 1})))
            .is_empty()
    );
    let out = m.from_client(b, result(bid.clone(), json!({"role": "assistant"})));
    assert_eq!(
        to_server(&out),
        [result(json!(900), json!({"role": "assistant"}))]
    );
    assert!(
        m.from_client(b, result(bid, json!({}))).is_empty(),
        "answered once"
    );
    // With b answered, a's request is the one in flight.
    m.from_server(result(tb[0]["id"].clone(), json!({})));
    let out = m.from_server(req(json!(901), "roots/list", json!({})));
    let [Out::Push { session, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*session, a);
    // With nothing in flight, the session active last (b answered last).
    m.from_server(result(ta[0]["id"].clone(), json!({})));
    let out = m.from_server(req(json!(902), "roots/list", json!({})));
    let [Out::Push { session, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*session, b);
}

#[test]
fn without_sessions_a_server_request_gets_an_error_and_ping_an_answer() {
    let (mut m, s) = ready(1);
    m.close(s[0]);
    let out = m.from_server(req(json!(3), "roots/list", json!({})));
    let sent = to_server(&out);
    assert_eq!(sent[0]["id"], 3);
    assert_eq!(sent[0]["error"]["code"], code::NO_SESSION);
    let out = m.from_server(req(json!("p"), PING, json!({})));
    assert_eq!(to_server(&out), [result(json!("p"), json!({}))]);
}

#[test]
fn closing_a_session_cancels_its_requests_and_refuses_what_was_asked_of_it() {
    let (mut m, s) = ready(2);
    let (a, b) = (s[0], s[1]);
    let ta = to_server(&m.from_client(a, req(json!(1), "tools/call", json!({}))));
    m.from_client(b, req(json!(1), "tools/call", json!({})));
    let out = m.from_server(req(json!(50), "elicitation/create", json!({})));
    let [Out::Push { session, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*session, b);
    let out = m.close(b);
    let sent = to_server(&out);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0]["method"], CANCELLED);
    assert_eq!(sent[1]["id"], 50);
    assert_eq!(sent[1]["error"]["code"], code::NO_SESSION);
    assert!(!m.is_open(b));
    assert_eq!(m.in_flight(), 1);
    // A late answer to b's request goes nowhere; a's still arrives.
    assert!(
        m.from_client(b, req(json!(2), "ping", json!({})))
            .is_empty()
    );
    let out = m.from_server(result(ta[0]["id"].clone(), json!({})));
    assert_eq!(
        out,
        [Out::Reply {
            session: a,
            msg: result(json!(1), json!({}))
        }]
    );
}

#[test]
fn a_restart_fails_what_was_in_flight_and_initialises_the_new_process_first() {
    let (mut m, s) = ready(2);
    let (a, b) = (s[0], s[1]);
    m.from_client(a, req(json!(1), "tools/call", json!({})));
    let out = m.restarted();
    let [Out::Reply { session, msg }, Out::Server(init)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*session, a);
    assert_eq!(msg["id"], 1);
    assert_eq!(msg["error"]["code"], code::INTERNAL);
    assert_eq!(init["method"], INITIALIZE);
    assert_eq!(init["params"], init_params("2025-06-18"));
    assert_eq!(m.in_flight(), 0);
    // Requests wait for the new process's answer, then go in order.
    assert!(
        m.from_client(b, req(json!(2), "tools/list", json!({})))
            .is_empty()
    );
    assert!(
        m.from_client(a, req(json!(3), "tools/call", json!({})))
            .is_empty()
    );
    let out = m.from_server(result(
        init["id"].clone(),
        json!({"protocolVersion": "2025-06-18"}),
    ));
    let sent = to_server(&out);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0]["method"], INITIALIZED);
    assert_eq!(sent[1]["method"], "tools/list");
    assert_eq!(sent[2]["method"], "tools/call");
    assert!(
        out.iter().all(|o| matches!(o, Out::Server(_))),
        "no client initialize waited"
    );
}

#[test]
fn a_refused_initialize_reaches_its_waiters_and_the_next_one_tries_again() {
    let mut m = Mux::new(Limits::default());
    let a = m.open();
    let sent = to_server(&m.from_client(a, req(json!(1), INITIALIZE, init_params("1999-01-01"))));
    let refusal = json!({"jsonrpc": "2.0", "id": sent[0]["id"], "error": {"code": -32602, "message": "unsupported"}});
    let out = m.from_server(refusal);
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(msg["error"]["code"], -32602);
    assert_eq!(m.record(), None);
    let sent = to_server(&m.from_client(a, req(json!(2), INITIALIZE, init_params("2025-06-18"))));
    assert_eq!(sent[0]["params"], init_params("2025-06-18"));
}

#[test]
fn a_request_before_any_initialize_is_refused() {
    let mut m = Mux::new(Limits::default());
    let a = m.open();
    let out = m.from_client(a, req(json!(1), "tools/list", json!({})));
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(msg["error"]["code"], code::INVALID_REQUEST);
    assert_eq!(m.in_flight(), 0);
}

#[test]
fn bounds_refuse_at_once_and_free_up_with_answers() {
    let limits = Limits {
        in_flight: 2,
        waiting: 1,
    };
    let mut m = Mux::new(limits);
    let a = m.open();
    let init = to_server(&m.from_client(a, req(json!(0), INITIALIZE, init_params("2025-06-18"))));
    assert!(
        m.from_client(a, req(json!(1), "ping", json!({})))
            .is_empty(),
        "waits"
    );
    let out = m.from_client(a, req(json!(2), "ping", json!({})));
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        msg["error"]["code"],
        code::OVERLOADED,
        "the wait list is full"
    );
    let out = m.from_server(result(init[0]["id"].clone(), json!({})));
    let first = to_server(&out)[1]["id"].clone();
    let sent = to_server(&m.from_client(a, req(json!(3), "ping", json!({}))));
    assert_eq!(sent.len(), 1);
    let out = m.from_client(a, req(json!(4), "ping", json!({})));
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(msg["error"]["code"], code::OVERLOADED, "two in flight");
    m.from_server(result(first, json!({})));
    assert_eq!(
        to_server(&m.from_client(a, req(json!(4), "ping", json!({})))).len(),
        1
    );
}

#[test]
fn garbage_gets_invalid_request_and_changes_nothing() {
    let (mut m, s) = ready(1);
    for bad in [
        json!("text"),
        json!({"jsonrpc": "2.0"}),
        json!({"id": null, "method": "x"}),
        json!({"id": {"o": 1}, "method": "x"}),
        json!({"method": 5}),
    ] {
        let out = m.from_client(s[0], bad.clone());
        let [Out::Reply { msg, .. }] = &out[..] else {
            panic!("{bad}: {out:?}")
        };
        assert_eq!(msg["error"]["code"], code::INVALID_REQUEST, "{bad}");
    }
    assert_eq!(m.in_flight(), 0);
    // From the server, garbage is dropped.
    for bad in [
        json!(1),
        json!({"x": 1}),
        json!([1, {"id": "zzz", "result": 1}]),
    ] {
        assert!(m.from_server(bad).is_empty());
    }
    // A closed or unknown session is ignored.
    assert!(
        m.from_client(999, req(json!(1), "ping", json!({})))
            .is_empty()
    );
}

#[test]
fn a_resumed_multiplexer_sends_nothing_again_and_never_reuses_an_id() {
    let (m, _) = ready(1);
    let record = m.record().unwrap();
    assert!(record.result.is_some());
    let text = serde_json::to_string(&record).unwrap();
    let back: InitRecord = serde_json::from_str(&text).unwrap();
    let mut r = Mux::resume(Limits::default(), back, 1000);
    let a = r.open();
    let out = r.from_client(a, req(json!(1), INITIALIZE, init_params("2025-06-18")));
    assert_eq!(
        out,
        [Out::Reply {
            session: a,
            msg: result(json!(1), record.result.unwrap())
        }]
    );
    let sent = to_server(&r.from_client(a, req(json!(2), "tools/list", json!({}))));
    assert_eq!(sent[0]["id"], 1000);
    assert_eq!(r.next_id(), 1001);
}

#[test]
fn a_lost_attach_fails_what_was_sent_and_keeps_the_initialisation() {
    let (mut m, s) = ready(1);
    m.from_client(s[0], req(json!(1), "tools/call", json!({})));
    let out = m.lost_answers();
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(msg["error"]["code"], code::INTERNAL);
    assert_eq!(m.in_flight(), 0);
    // Still initialised: the next request goes straight to the server.
    let sent = to_server(&m.from_client(s[0], req(json!(2), "tools/list", json!({}))));
    assert_eq!(sent[0]["method"], "tools/list");
}

#[test]
fn an_unsent_line_answers_its_request_or_resets_the_initialisation() {
    let mut m = Mux::new(Limits::default());
    let a = m.open();
    let init = to_server(&m.from_client(a, req(json!(1), INITIALIZE, init_params("2025-06-18"))));
    m.from_client(a, req(json!(2), "tools/list", json!({})));
    let out = m.unsent(&init[0]);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out.iter().all(
            |o| matches!(o, Out::Reply { msg, .. } if msg["error"]["code"] == code::OVERLOADED)
        )
    );
    assert_eq!(m.in_flight(), 0);
    // The next initialize is sent again.
    let again = to_server(&m.from_client(a, req(json!(3), INITIALIZE, init_params("2025-06-18"))));
    assert_eq!(again[0]["method"], INITIALIZE);
    let (mut m, s) = ready(1);
    let sent = to_server(&m.from_client(s[0], req(json!(9), "tools/call", json!({}))));
    let out = m.unsent(&sent[0]);
    let [Out::Reply { msg, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(msg["id"], 9);
    assert!(
        m.unsent(&json!({"jsonrpc": "2.0", "method": INITIALIZED}))
            .is_empty()
    );
}
