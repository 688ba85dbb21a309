//! The multiplexer: many client sessions, one stdio server process. Pure
//! state, no I/O: every call returns the messages to send ([`Out`]).
//!
//! The rules:
//! - **One `initialize` per process.** The first client's `initialize` is
//!   sent to the server (under a bridge id); its result is kept and is the
//!   answer every later client's `initialize` gets at once, so every
//!   session sees the protocol version and capabilities the server
//!   negotiated with the first client. The bridge sends
//!   `notifications/initialized` itself as soon as the result arrives and
//!   drops the clients' own. After a server restart the kept parameters
//!   initialise the new process before anything else reaches it; requests
//!   that arrive meanwhile wait (bounded).
//! - **Ids.** Every client request reaches the server under a fresh bridge
//!   id (a number, never reused in a process's lifetime); the response goes
//!   back to the session under the client's own id. Progress tokens are
//!   rewritten the same way and restored on `notifications/progress`; a
//!   client's `notifications/cancelled` names the bridge id.
//! - **Server notifications** other than progress reach every session.
//! - **Server requests** (sampling, roots, elicitation) go to the session
//!   with the most recent request still in flight (a server asks while it
//!   serves a request), else to the session active last; with no session
//!   they are answered with a JSON-RPC error. The server's `ping` is
//!   answered by the bridge. Ids are rewritten both ways, so a session can
//!   only answer what was sent to it.
//! - **Ends.** A closed session's requests in flight are cancelled at the
//!   server; a server request sent to it is answered with an error. A
//!   server restart answers every request in flight with an error; the
//!   sessions stay. A lost attach to a process that still runs answers
//!   the requests in flight with an error too, and keeps the
//!   initialisation.
//! - **Bounds.** At most [`Limits::in_flight`] requests per session and
//!   [`Limits::waiting`] requests waiting for the initialisation; past
//!   them a request is answered with an error at once.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::contract::metric::mcp_method::{CANCELLED, INITIALIZE, INITIALIZED, PING, PROGRESS};

/// A client session of the multiplexer (the HTTP side maps its
/// `Mcp-Session-Id` to one).
pub type SessionId = u64;

/// JSON-RPC error codes the bridge answers with.
pub mod code {
    /// The message is not a valid JSON-RPC request, notification or response.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Internal error: the server restarted or the session closed meanwhile.
    pub const INTERNAL: i64 = -32603;
    /// Implementation-defined: a bound of the bridge refused the request.
    pub const OVERLOADED: i64 = -32000;
    /// Implementation-defined: no session can take the server's request.
    pub const NO_SESSION: i64 = -32001;
}

/// Bounds of one multiplexer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests one session may have in flight at the server.
    pub in_flight: usize,
    /// Requests (of all sessions) that may wait for the initialisation.
    pub waiting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            in_flight: 256,
            waiting: 1024,
        }
    }
}

/// What the bridge keeps so it can go on with a running, initialised
/// process after its own restart, and initialise a new process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    /// The `initialize` params sent to the server.
    pub params: Value,
    /// The server's result, while the current process has answered it.
    pub result: Option<Value>,
}

/// A message the caller must deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A line for the server's stdin.
    Server(Value),
    /// The answer to a session's request (`msg.id` is the client's own id).
    Reply {
        /// The session that asked.
        session: SessionId,
        /// The JSON-RPC response.
        msg: Value,
    },
    /// A message for a session that answers nothing it sent: progress of
    /// its request `about` (the client's id), a server request, a
    /// notification for every session.
    Push {
        /// The receiving session.
        session: SessionId,
        /// The JSON-RPC request or notification.
        msg: Value,
        /// The client's id of the request it belongs to, if any.
        about: Option<Value>,
    },
}

/// A client request at the server.
#[derive(Debug)]
struct Pending {
    session: SessionId,
    client_id: Value,
    /// The bridge's progress token, if the request carried one.
    token: Option<u64>,
}

/// A server request sent to a session.
#[derive(Debug)]
struct Asked {
    session: SessionId,
    server_id: Value,
}

#[derive(Debug, Default)]
struct Session {
    in_flight: usize,
    /// Logical time of its last message.
    active: u64,
}

/// Where the current process is in its initialisation.
#[derive(Debug, PartialEq)]
enum Init {
    /// Nothing sent yet.
    Idle,
    /// `initialize` sent under this bridge id.
    Sent(u64),
    /// Answered and `notifications/initialized` sent.
    Done,
}

/// The multiplexer of one server process; see the module doc.
#[derive(Debug)]
pub struct Mux {
    limits: Limits,
    sessions: HashMap<SessionId, Session>,
    next_session: SessionId,
    /// Bridge ids: of client requests, of server requests, of tokens.
    next_id: u64,
    clock: u64,
    /// Client requests at the server, by bridge id.
    pending: HashMap<u64, Pending>,
    /// (session, client id as JSON text) to bridge id, for cancellation.
    by_client: HashMap<(SessionId, String), u64>,
    /// Progress tokens: bridge token to (session, client token, client id).
    tokens: HashMap<u64, (SessionId, Value, Value)>,
    /// Server requests at sessions, by bridge id.
    asked: HashMap<u64, Asked>,
    init: Init,
    params: Option<Value>,
    result: Option<Value>,
    /// Bumped whenever `params` or `result` change (the record to keep).
    record_version: u64,
    /// Sessions' `initialize` requests waiting for the server's answer.
    init_waiters: Vec<(SessionId, Value)>,
    /// Client requests waiting for the initialisation (already rewritten).
    waiting: Vec<Value>,
}

/// A JSON-RPC response with `result`.
fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC error response.
fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The kinds of JSON-RPC message.
enum Kind {
    Request { id: Value, method: String },
    Notification { method: String },
    Response { id: Value },
}

fn kind(msg: &Map<String, Value>) -> Option<Kind> {
    let id = msg.get("id").cloned();
    match (msg.get("method"), id) {
        (Some(Value::String(m)), Some(id)) if valid_id(&id) => Some(Kind::Request {
            id,
            method: m.clone(),
        }),
        (Some(Value::String(m)), None) => Some(Kind::Notification { method: m.clone() }),
        (None, Some(id))
            if (msg.contains_key("result") || msg.contains_key("error"))
                && (valid_id(&id) || id.is_null()) =>
        {
            Some(Kind::Response { id })
        }
        _ => None,
    }
}

/// A request id is a string or a number (JSON-RPC 2.0; MCP forbids null).
fn valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

/// A bridge id as JSON.
fn bridge_id(id: u64) -> Value {
    Value::from(id)
}

/// The bridge id a message names, if it is one of ours.
fn as_bridge_id(v: &Value) -> Option<u64> {
    v.as_u64()
}

impl Mux {
    /// A multiplexer for a new process.
    pub fn new(limits: Limits) -> Mux {
        Mux {
            limits,
            sessions: HashMap::new(),
            next_session: 1,
            next_id: 1,
            clock: 0,
            pending: HashMap::new(),
            by_client: HashMap::new(),
            tokens: HashMap::new(),
            asked: HashMap::new(),
            init: Init::Idle,
            params: None,
            result: None,
            record_version: 0,
            init_waiters: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// A multiplexer that goes on with a process the bridge found running
    /// after its own restart (`record` kept from before): initialised if
    /// the record has the result, so nothing is sent to it again.
    /// `first_id` must exceed every bridge id of the previous bridge's
    /// lifetime that the process may still answer (responses to ids the
    /// new bridge does not know are dropped).
    pub fn resume(limits: Limits, record: InitRecord, first_id: u64) -> Mux {
        let mut m = Mux::new(limits);
        m.next_id = first_id.max(1);
        m.init = if record.result.is_some() {
            Init::Done
        } else {
            Init::Idle
        };
        m.params = Some(record.params);
        m.record_version += 1;
        m.result = record.result;
        m
    }

    /// What to keep durable (see [`InitRecord`]); None before any client
    /// has initialised.
    pub fn record(&self) -> Option<InitRecord> {
        Some(InitRecord {
            params: self.params.clone()?,
            result: self.result.clone(),
        })
    }

    /// Changes whenever [`Mux::record`] does (cheap to compare; the
    /// record itself is cloned JSON).
    pub fn record_version(&self) -> u64 {
        self.record_version
    }

    /// The next bridge id this multiplexer will use.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Opens a session (the HTTP side calls it for an `initialize` without
    /// a session id).
    pub fn open(&mut self) -> SessionId {
        let s = self.next_session;
        self.next_session += 1;
        self.clock += 1;
        self.sessions.insert(
            s,
            Session {
                in_flight: 0,
                active: self.clock,
            },
        );
        s
    }

    /// Whether `session` is open.
    pub fn is_open(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Client requests at the server or waiting for the initialisation.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A message from a session's client.
    pub fn from_client(&mut self, session: SessionId, msg: Value) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(s) = self.sessions.get_mut(&session) else {
            return out;
        };
        self.clock += 1;
        s.active = self.clock;
        let Value::Object(obj) = msg else {
            out.push(self.invalid(session, Value::Null));
            return out;
        };
        match kind(&obj) {
            None => {
                let id = obj.get("id").filter(|i| valid_id(i)).cloned();
                out.push(self.invalid(session, id.unwrap_or(Value::Null)));
            }
            Some(Kind::Request { id, method }) if method == INITIALIZE => {
                self.client_initialize(session, id, obj, &mut out)
            }
            Some(Kind::Request { id, .. }) => self.client_request(session, id, obj, &mut out),
            Some(Kind::Notification { method }) => {
                self.client_notification(session, &method, obj, &mut out)
            }
            Some(Kind::Response { id }) => self.client_response(session, id, obj, &mut out),
        }
        out
    }

    fn invalid(&self, session: SessionId, id: Value) -> Out {
        Out::Reply {
            session,
            msg: error(
                id,
                code::INVALID_REQUEST,
                "not a JSON-RPC 2.0 request, notification or response",
            ),
        }
    }

    fn client_initialize(
        &mut self,
        session: SessionId,
        id: Value,
        mut obj: Map<String, Value>,
        out: &mut Vec<Out>,
    ) {
        if let (Init::Done, Some(r)) = (&self.init, &self.result) {
            out.push(Out::Reply {
                session,
                msg: result(id, r.clone()),
            });
            return;
        }
        self.init_waiters.push((session, id));
        if self.init == Init::Idle {
            let params = obj.remove("params").unwrap_or_else(|| json!({}));
            self.params = Some(params);
            self.record_version += 1;
            self.send_initialize(out);
        }
    }

    fn send_initialize(&mut self, out: &mut Vec<Out>) {
        let Some(params) = self.params.clone() else {
            return;
        };
        let id = self.take_id();
        self.init = Init::Sent(id);
        out.push(Out::Server(json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": INITIALIZE,
            "params": params,
        })));
    }

    fn client_request(
        &mut self,
        session: SessionId,
        id: Value,
        mut obj: Map<String, Value>,
        out: &mut Vec<Out>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let must_wait = self.init != Init::Done;
        let key = (session, id.to_string());
        // The first bound or rule the request breaks, if any.
        let refusal = if s.in_flight >= self.limits.in_flight {
            Some((
                code::OVERLOADED,
                "too many requests of this session in flight; wait for answers",
            ))
        } else if must_wait && self.waiting.len() >= self.limits.waiting {
            Some((
                code::OVERLOADED,
                "too many requests waiting for the server to initialise",
            ))
        } else if must_wait && self.params.is_none() {
            Some((
                code::INVALID_REQUEST,
                "the server has not been initialised: send initialize first",
            ))
        } else if self.by_client.contains_key(&key) {
            Some((
                code::INVALID_REQUEST,
                "this session already has a request with this id in flight",
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            out.push(Out::Reply {
                session,
                msg: error(id, code, message),
            });
            return;
        }
        s.in_flight += 1;
        let bid = self.take_id();
        let token = self.rewrite_token(session, &id, &mut obj);
        obj.insert("id".into(), bridge_id(bid));
        self.by_client.insert(key, bid);
        self.pending.insert(
            bid,
            Pending {
                session,
                client_id: id,
                token,
            },
        );
        let msg = Value::Object(obj);
        if must_wait {
            self.waiting.push(msg);
            if self.init == Init::Idle {
                self.send_initialize(out);
            }
        } else {
            out.push(Out::Server(msg));
        }
    }

    /// Replaces `params._meta.progressToken` with a bridge token.
    fn rewrite_token(
        &mut self,
        session: SessionId,
        client_id: &Value,
        obj: &mut Map<String, Value>,
    ) -> Option<u64> {
        let meta = obj
            .get_mut("params")?
            .as_object_mut()?
            .get_mut("_meta")?
            .as_object_mut()?;
        let token = meta.get("progressToken")?.clone();
        let t = self.take_id();
        meta.insert("progressToken".into(), Value::from(t));
        self.tokens.insert(t, (session, token, client_id.clone()));
        Some(t)
    }

    fn client_notification(
        &mut self,
        session: SessionId,
        method: &str,
        mut obj: Map<String, Value>,
        out: &mut Vec<Out>,
    ) {
        match method {
            // The bridge sent it when the server answered initialize.
            INITIALIZED => {}
            CANCELLED => {
                let Some(params) = obj.get_mut("params").and_then(Value::as_object_mut) else {
                    return;
                };
                let Some(rid) = params.get("requestId") else {
                    return;
                };
                let Some(&bid) = self.by_client.get(&(session, rid.to_string())) else {
                    return;
                };
                params.insert("requestId".into(), bridge_id(bid));
                if self.init == Init::Done {
                    out.push(Out::Server(Value::Object(obj)));
                } else {
                    self.waiting.push(Value::Object(obj));
                }
            }
            _ if self.init == Init::Done => out.push(Out::Server(Value::Object(obj))),
            // Before the initialisation only requests wait; notifications
            // (roots changed, say) describe a state the server will ask for.
            _ => {}
        }
    }

    fn client_response(
        &mut self,
        session: SessionId,
        id: Value,
        mut obj: Map<String, Value>,
        out: &mut Vec<Out>,
    ) {
        let Some(bid) = as_bridge_id(&id) else {
            return;
        };
        // Only the session the request was sent to may answer it.
        if self.asked.get(&bid).is_none_or(|a| a.session != session) {
            return;
        }
        let Some(asked) = self.asked.remove(&bid) else {
            return;
        };
        obj.insert("id".into(), asked.server_id);
        out.push(Out::Server(Value::Object(obj)));
    }

    /// A message the server wrote on stdout.
    pub fn from_server(&mut self, msg: Value) -> Vec<Out> {
        let mut out = Vec::new();
        match msg {
            Value::Object(obj) => self.server_message(obj, &mut out),
            Value::Array(batch) => {
                for m in batch.into_iter().take(1000) {
                    if let Value::Object(obj) = m {
                        self.server_message(obj, &mut out);
                    }
                }
            }
            _ => {}
        }
        out
    }

    fn server_message(&mut self, mut obj: Map<String, Value>, out: &mut Vec<Out>) {
        match kind(&obj) {
            Some(Kind::Response { id }) => {
                let Some(bid) = as_bridge_id(&id) else {
                    return;
                };
                if self.init == Init::Sent(bid) {
                    self.initialized(obj, out);
                    return;
                }
                let Some(p) = self.finish(bid) else {
                    return;
                };
                obj.insert("id".into(), p.client_id);
                out.push(Out::Reply {
                    session: p.session,
                    msg: Value::Object(obj),
                });
            }
            Some(Kind::Notification { method }) if method == PROGRESS => {
                let Some(params) = obj.get_mut("params").and_then(Value::as_object_mut) else {
                    return;
                };
                let Some(t) = params.get("progressToken").and_then(as_bridge_id) else {
                    return;
                };
                let Some((session, token, client_id)) = self.tokens.get(&t).cloned() else {
                    return;
                };
                params.insert("progressToken".into(), token);
                out.push(Out::Push {
                    session,
                    msg: Value::Object(obj),
                    about: Some(client_id),
                });
            }
            Some(Kind::Notification { method }) if method == CANCELLED => {
                // The server gives up on a request it sent to a session.
                let Some(params) = obj.get_mut("params").and_then(Value::as_object_mut) else {
                    return;
                };
                let Some(rid) = params.get("requestId").cloned() else {
                    return;
                };
                let Some((&bid, _)) = self.asked.iter().find(|(_, a)| a.server_id == rid) else {
                    return;
                };
                let Some(a) = self.asked.remove(&bid) else {
                    return;
                };
                params.insert("requestId".into(), bridge_id(bid));
                out.push(Out::Push {
                    session: a.session,
                    msg: Value::Object(obj),
                    about: None,
                });
            }
            Some(Kind::Notification { .. }) => {
                let msg = Value::Object(obj);
                let mut sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
                sessions.sort_unstable();
                for session in sessions {
                    out.push(Out::Push {
                        session,
                        msg: msg.clone(),
                        about: None,
                    });
                }
            }
            Some(Kind::Request { id, method }) if method == PING => {
                out.push(Out::Server(result(id, json!({}))));
            }
            Some(Kind::Request { id, .. }) => match self.target() {
                Some(session) => {
                    let bid = self.take_id();
                    self.asked.insert(
                        bid,
                        Asked {
                            session,
                            server_id: id,
                        },
                    );
                    obj.insert("id".into(), bridge_id(bid));
                    out.push(Out::Push {
                        session,
                        msg: Value::Object(obj),
                        about: None,
                    });
                }
                None => out.push(Out::Server(error(
                    id,
                    code::NO_SESSION,
                    "no client session of the bridge can take this request",
                ))),
            },
            None => {}
        }
    }

    /// The session a server request goes to: the one with the most recent
    /// request in flight, else the one active last.
    fn target(&self) -> Option<SessionId> {
        let busy = self
            .pending
            .iter()
            .filter(|(_, p)| self.sessions.contains_key(&p.session))
            .max_by_key(|(bid, _)| **bid)
            .map(|(_, p)| p.session);
        busy.or_else(|| {
            self.sessions
                .iter()
                .max_by_key(|(_, s)| s.active)
                .map(|(id, _)| *id)
        })
    }

    /// Removes a finished client request and its token.
    fn finish(&mut self, bid: u64) -> Option<Pending> {
        let p = self.pending.remove(&bid)?;
        self.by_client.remove(&(p.session, p.client_id.to_string()));
        if let Some(t) = p.token {
            self.tokens.remove(&t);
        }
        if let Some(s) = self.sessions.get_mut(&p.session) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        Some(p)
    }

    fn initialized(&mut self, obj: Map<String, Value>, out: &mut Vec<Out>) {
        let waiters = std::mem::take(&mut self.init_waiters);
        match obj.get("result") {
            Some(r) => {
                self.result = Some(r.clone());
                self.record_version += 1;
                self.init = Init::Done;
                out.push(Out::Server(
                    json!({"jsonrpc": "2.0", "method": INITIALIZED}),
                ));
                for (session, id) in waiters {
                    out.push(Out::Reply {
                        session,
                        msg: result(id, r.clone()),
                    });
                }
                for msg in std::mem::take(&mut self.waiting) {
                    out.push(Out::Server(msg));
                }
            }
            None => {
                // The server refused the parameters: every waiter gets its
                // error, and the next initialize tries again with its own.
                let err = obj.get("error").cloned().unwrap_or(Value::Null);
                self.init = Init::Idle;
                self.params = None;
                self.record_version += 1;
                for (session, id) in waiters {
                    out.push(Out::Reply {
                        session,
                        msg: json!({"jsonrpc": "2.0", "id": id, "error": err}),
                    });
                }
                self.fail_waiting(
                    code::INTERNAL,
                    "the server refused to initialise; send initialize again",
                    out,
                );
            }
        }
    }

    /// Answers every request waiting for the initialisation with an error.
    fn fail_waiting(&mut self, code: i64, message: &str, out: &mut Vec<Out>) {
        for msg in std::mem::take(&mut self.waiting) {
            let Some(bid) = msg.get("id").and_then(as_bridge_id) else {
                continue;
            };
            if let Some(p) = self.finish(bid) {
                out.push(Out::Reply {
                    session: p.session,
                    msg: error(p.client_id, code, message),
                });
            }
        }
    }

    /// Bridge ids of the requests in flight whose session `keep` accepts,
    /// in the order they were sent.
    fn pending_ids(&self, keep: impl Fn(SessionId) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| keep(p.session))
            .map(|(bid, _)| *bid)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Bridge ids of the requests waiting for the initialisation (not sent).
    fn waiting_ids(&self) -> Vec<u64> {
        self.waiting
            .iter()
            .filter_map(|m| m.get("id").and_then(as_bridge_id))
            .collect()
    }

    /// Ends `session`: its requests in flight are cancelled at the server,
    /// server requests sent to it are answered with an error.
    pub fn close(&mut self, session: SessionId) -> Vec<Out> {
        let mut out = Vec::new();
        if self.sessions.remove(&session).is_none() {
            return out;
        }
        self.init_waiters.retain(|(s, _)| *s != session);
        let mine = self.pending_ids(|s| s == session);
        let waiting = self.waiting_ids();
        for bid in mine {
            self.finish(bid);
            if waiting.contains(&bid) {
                self.waiting
                    .retain(|m| m.get("id").and_then(as_bridge_id) != Some(bid));
            } else {
                out.push(Out::Server(json!({
                    "jsonrpc": "2.0",
                    "method": CANCELLED,
                    "params": {"requestId": bid, "reason": "the client session ended"},
                })));
            }
        }
        let mut asked: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, a)| a.session == session)
            .map(|(bid, _)| *bid)
            .collect();
        asked.sort_unstable();
        for bid in asked {
            if let Some(a) = self.asked.remove(&bid) {
                out.push(Out::Server(error(
                    a.server_id,
                    code::NO_SESSION,
                    "the client session this request was sent to ended",
                )));
            }
        }
        out
    }

    /// A line [`Out::Server`] gave could not be written (stdin's queue is
    /// full, or nothing is attached): a client request in it is answered
    /// with an error now instead of waiting for an answer that cannot come.
    pub fn unsent(&mut self, line: &Value) -> Vec<Out> {
        let mut out = Vec::new();
        let is_request = line.get("method").is_some();
        let Some(bid) = line.get("id").and_then(as_bridge_id).filter(|_| is_request) else {
            return out;
        };
        const WHY: &str =
            "the MCP server cannot take input now (not running, or not reading it); try again";
        if self.init == Init::Sent(bid) {
            // The initialisation itself: its waiters fail, the next
            // request or initialize tries again.
            self.init = Init::Idle;
            for (session, id) in std::mem::take(&mut self.init_waiters) {
                out.push(Out::Reply {
                    session,
                    msg: error(id, code::OVERLOADED, WHY),
                });
            }
            self.fail_waiting(code::OVERLOADED, WHY, &mut out);
            return out;
        }
        if let Some(p) = self.finish(bid) {
            out.push(Out::Reply {
                session: p.session,
                msg: error(p.client_id, code::OVERLOADED, WHY),
            });
        }
        out
    }

    /// The bridge lost its attach to a process that may still run (the
    /// engine connection broke): answers written meanwhile are lost, so
    /// every request in flight is answered with an error now; the process
    /// keeps its initialisation, and server requests wait for their answer.
    pub fn lost_answers(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let waiting = self.waiting_ids();
        for bid in self.pending_ids(|_| true) {
            if waiting.contains(&bid) {
                // Not sent yet: it goes once the process is reached again.
                continue;
            }
            if let Some(p) = self.finish(bid) {
                out.push(Out::Reply {
                    session: p.session,
                    msg: error(
                        p.client_id,
                        code::INTERNAL,
                        "the bridge lost its connection to the MCP server while this request was in flight; send it again",
                    ),
                });
            }
        }
        out
    }

    /// The server process was replaced (container restart or crash): every
    /// request in flight is answered with an error, server requests are
    /// forgotten, and the new process is initialised with the kept
    /// parameters before anything else reaches it.
    pub fn restarted(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        self.waiting.clear();
        for bid in self.pending_ids(|_| true) {
            if let Some(p) = self.finish(bid) {
                out.push(Out::Reply {
                    session: p.session,
                    msg: error(
                        p.client_id,
                        code::INTERNAL,
                        "the MCP server restarted while this request was in flight; send it again",
                    ),
                });
            }
        }
        self.asked.clear();
        self.result = None;
        self.record_version += 1;
        self.init = Init::Idle;
        if !self.init_waiters.is_empty() || !self.sessions.is_empty() {
            self.send_initialize(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests;
