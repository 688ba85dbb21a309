//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), one
//! per parser of outside input. Each takes arbitrary bytes, drives the real
//! code, and panics when a promise of the contract does not hold, not only
//! when the code itself panics: a parsed label set round-trips, a refused
//! `state import` changes nothing, a refused store file is left as it was,
//! every API answer has a documented status and a JSON body, an MCP session
//! id comes back to the replica that made it, a stdio server's answer
//! reaches only the session that asked.
//!
//! Built only with the `fuzzing` feature. `tests/fuzz_corpus.rs` replays the
//! committed corpora (`fuzz/corpus/<target>/`) through these same functions
//! on every `cargo test`, so a fixed crash stays fixed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::contract::labels::{NETWORK, PORT, SERVICE, TRANSPORT};
use crate::contract::metric::mcp_method;
use crate::forward::sessions;

/// A target's entry point: arbitrary bytes in, a panic on a broken promise.
pub type Target = fn(&[u8]);

/// The targets, by name: `fuzz/fuzz_targets/<name>.rs` calls the function.
pub const TARGETS: &[(&str, Target)] = &[
    ("labels", labels),
    ("config", config),
    ("state_import", state_import),
    ("store_open", store_open),
    ("api", api),
    ("mcp", mcp),
    ("stdio", stdio),
];

/// Longest error message a hostile input may produce (messages reach logs
/// and API answers, so they stay bounded).
const MAX_MESSAGE: usize = 2048;

/// Splits `data` at the first `sep` (the rest empty when absent).
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch directory on tmpfs when there is one (no fsync cost), removed
/// on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "mesh-bridge-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------- labels ----

/// Lines `KEY=VALUE`; a one-byte key `0`-`3` stands for one of the four
/// label names, so that the fuzzer reaches past the name lookup.
pub fn labels(data: &[u8]) {
    let names = [SERVICE, PORT, NETWORK, TRANSPORT];
    let mut map = HashMap::new();
    for line in data.split(|b| *b == b'\n') {
        let (k, v) = split(line, b'=');
        let key = match k {
            [d @ b'0'..=b'3'] => names[usize::from(d - b'0')].to_string(),
            other => text(other),
        };
        map.insert(key, text(v));
    }
    match crate::labels::parse(&map) {
        Ok(parsed) => {
            let mut again = HashMap::new();
            again.insert(SERVICE.to_string(), parsed.service.clone());
            again.insert(PORT.to_string(), parsed.port.to_string());
            again.insert(TRANSPORT.to_string(), parsed.transport.as_str().to_string());
            if let Some(n) = &parsed.network {
                again.insert(NETWORK.to_string(), n.clone());
            }
            assert_eq!(
                crate::labels::parse(&again).as_ref(),
                Ok(&parsed),
                "parsed labels read back as they were"
            );
            assert!(crate::labels::validate_service_name(&parsed.service).is_ok());
            assert!(parsed.port > 0);
        }
        Err(e) => {
            let m = e.to_string();
            assert!(!m.is_empty() && m.len() <= MAX_MESSAGE, "bounded: {m}");
        }
    }
}

// ------------------------------------------------------------- config ----

/// First byte even: the rest is the TOML file of `--config`; odd: the rest
/// is `mesh-bridge run`'s flags, one per line.
pub fn config(data: &[u8]) {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: crate::config::RunArgs,
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let scratch = Scratch::new();
    let args = if mode % 2 == 0 {
        let file = scratch.0.join("bridge.toml");
        std::fs::write(&file, rest).expect("write the config file");
        crate::config::RunArgs {
            config: Some(file),
            ..Default::default()
        }
    } else {
        let argv = std::iter::once("mesh-bridge".to_string())
            .chain(rest.split(|b| *b == b'\n').map(text))
            .collect::<Vec<_>>();
        match Cli::try_parse_from(argv) {
            Ok(cli) if cli.run.config.is_none() => cli.run,
            // clap's own refusal, or a config file named by the input.
            _ => return,
        }
    };
    match crate::config::Config::resolve(&args) {
        Ok(c) => {
            assert!(c.ports.capacity() > 0, "at least one port");
            assert!((1..=1000).contains(&c.leak_cycles));
            assert!(!c.resync.is_zero());
            assert!(!c.ports.contains(c.listen.port()) || c.listen.ip() != c.bind_ip);
        }
        Err(e) => {
            let m = e.to_string();
            assert!(!m.is_empty() && m.len() <= MAX_MESSAGE * 4, "bounded: {m}");
        }
    }
}

// ------------------------------------------------------- state import ----

/// The store's contents as `state export` writes them.
fn exported(dir: &Path, out: &Path) -> String {
    crate::state::export(dir, Some(out)).expect("export a sound store");
    std::fs::read_to_string(out).expect("the export")
}

/// `state import` of the bytes into a store that holds two reservations:
/// refused, the store's export is what it was; accepted, its export imports
/// again and changes nothing.
pub fn state_import(data: &[u8]) {
    let scratch = Scratch::new();
    let dir = scratch.0.join("state");
    let ranges = crate::config::parse_ports("11100-11199", None).expect("ranges");
    let seed = scratch.0.join("seed.json");
    std::fs::write(&seed, br#"{"docs": 11100, "search": 11101}"#).expect("seed");
    crate::state::import(&dir, &seed, &ranges).expect("the seed imports");
    let before = exported(&dir, &scratch.0.join("before.json"));

    let input = scratch.0.join("input.json");
    std::fs::write(&input, data).expect("write the input");
    match crate::state::import(&dir, &input, &ranges) {
        Err(e) => {
            let after = exported(&dir, &scratch.0.join("after.json"));
            assert_eq!(before, after, "a refused import changed the store: {e}");
            assert!(!e.to_string().is_empty());
        }
        Ok(_) => {
            let once = scratch.0.join("once.json");
            let first = exported(&dir, &once);
            crate::state::import(&dir, &once, &ranges).expect("an export imports again");
            let second = exported(&dir, &scratch.0.join("twice.json"));
            assert_eq!(first, second, "importing an export changed the store");
        }
    }
}

// --------------------------------------------------------- store open ----

/// The bytes as `state.db`: refused, the file is left byte for byte as it
/// was; opened, it loads or refuses to load with a typed error.
pub fn store_open(data: &[u8]) {
    let scratch = Scratch::new();
    let file = scratch.0.join(crate::contract::files::STORE);
    std::fs::write(&file, data).expect("write the file");
    match crate::store::Store::open(&scratch.0) {
        Err(e) => {
            if !data.is_empty() {
                let now = std::fs::read(&file).expect("the refused file is still there");
                assert!(now == data, "a refused store file was changed: {e}");
            }
            assert!(!e.to_string().is_empty());
        }
        Ok(store) => {
            if let Ok(snap) = store.load() {
                let ports: Vec<u16> = snap.reservations.iter().map(|r| r.port).collect();
                assert!(
                    ports.windows(2).all(|w| w[0] < w[1]),
                    "a loaded store holds each port once, in order: {ports:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- api ----

/// The API's state for fuzzing: one listed service; mutations answered by
/// a task standing in for the app's loop (the reconciler's own refusals
/// are unit-tested; here the router and its parsing are under test).
fn api_state(rt: &tokio::runtime::Runtime) -> crate::api::ApiState {
    use crate::api::{Command, Snapshot};
    use crate::contract::api::{PoolView, ServiceState, ServiceView};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Command>(64);
    rt.spawn(async move {
        while let Some(c) = rx.recv().await {
            match c {
                Command::Reserve { port, reply, .. } => {
                    let _ = reply.send(Ok((port.unwrap_or(11100), port.is_some())));
                }
                Command::Unreserve { reply, .. } => {
                    let _ = reply.send(Ok(11100));
                }
            }
        }
    });
    let snap = Snapshot {
        pool: PoolView::default(),
        services: std::sync::Arc::new(vec![ServiceView {
            name: "docs".into(),
            port: Some(11100),
            state: ServiceState::Serving,
            replicas: Vec::new(),
            since: None,
            reason: None,
        }]),
        ready: Ok(()),
    };
    let (keep, snapshot) = tokio::sync::watch::channel(std::sync::Arc::new(snap));
    // The snapshot never changes while fuzzing; its sender lives as long.
    std::mem::forget(keep);
    crate::api::ApiState {
        metrics: crate::metrics::Metrics::new().expect("metrics"),
        snapshot,
        commands: tx,
        token: Some(std::sync::Arc::from("fuzz-token-0123456789")),
        forwarder: None,
    }
}

/// Statuses the API documents, and those hyper answers a malformed request with.
const API_STATUSES: &[u16] = &[
    200, 201, 400, 401, 403, 404, 405, 409, 413, 414, 422, 503, 408, 431, 505, 501,
];

/// First byte odd: the rest is sent as it is; even: it is
/// `METHOD-INDEX PATH \n HEADER-LINES \n\n BODY`, made into a well-formed
/// request so that the fuzzer reaches the router. Every answer must have a
/// documented status, and every JSON answer of 4xx/5xx an `error` string.
pub fn api(data: &[u8]) {
    static RT: OnceLock<(tokio::runtime::Runtime, crate::api::ApiState)> = OnceLock::new();
    let (rt, state) = RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state = api_state(&rt);
        (rt, state)
    });
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let raw = mode % 2 == 1;
    let request = if raw {
        rest.to_vec()
    } else {
        const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS"];
        let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&rest[..i], &rest[i + 2..]),
            None => (rest, &[][..]),
        };
        let (first, headers) = split(head, b'\n');
        let (m, path) = first.split_first().unwrap_or((&0, &[]));
        let method = METHODS[usize::from(*m) % METHODS.len()];
        let mut r =
            format!("{method} /{} HTTP/1.1\r\nhost: fuzz\r\n", text(path).trim()).into_bytes();
        if mode & 2 == 2 {
            r.extend_from_slice(b"authorization: Bearer fuzz-token-0123456789\r\n");
        }
        // No empty line: it would end the head early.
        for h in headers.split(|b| *b == b'\n').filter(|h| !h.is_empty()) {
            r.extend_from_slice(h);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        r.extend_from_slice(body);
        r
    };
    let answer = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let stop = tokio_util::sync::CancellationToken::new();
        let served = tokio::spawn(crate::api::serve_connection(
            server,
            state.clone(),
            stop.clone(),
        ));
        let _ = client.write_all(&request).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut out),
        )
        .await;
        stop.cancel();
        let _ = served.await;
        assert!(read.is_ok(), "the API answered within 5 s");
        out
    });
    check_responses(&answer, request.starts_with(b"HEAD "), raw);
}

/// Every response in `bytes` has a documented status, and a JSON body that
/// parses (with an `error` string on 4xx and 5xx). `head_request`: the first
/// request was a HEAD, whose answer has no body. `first_only`: the input
/// was raw bytes, which may pipeline requests of unknown methods, so only
/// the first answer can be framed.
fn check_responses(mut bytes: &[u8], mut head_request: bool, first_only: bool) {
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("a malformed answer ({other:?}): {}", text(bytes)),
        };
        let code = resp.code.expect("a status");
        assert!(API_STATUSES.contains(&code), "undocumented status {code}");
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| text(h.value))
        };
        let len: usize = if std::mem::take(&mut head_request) {
            0
        } else {
            header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let json = header("content-type").is_some_and(|t| t == "application/json");
        let body = &bytes[head..(head + len).min(bytes.len())];
        if json && body.len() == len && !body.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(bytes)));
            if code >= 400 {
                assert!(v["error"].is_string(), "an error body names the error: {v}");
            }
        }
        if body.len() < len || first_only {
            return;
        }
        bytes = &bytes[head + len..];
    }
}

// ---------------------------------------------------------------- mcp ----

/// The MCP routing's parsers:
/// - a POST body's methods are bounded labels;
/// - a client session id decodes only into what [`sessions::encode`] made;
/// - the `sse` endpoint event: the URL the client is given names the
///   replica, the client's POST to it decodes to that replica, and the
///   replica gets its own session id back.
pub fn mcp(data: &[u8]) {
    crate::forward::message::each_method(data, |m| {
        assert!(
            m == mcp_method::OTHER || mcp_method::SPEC.contains(&m),
            "{m}"
        );
    });
    let s = text(data);
    if let Some((key, id)) = sessions::decode(&s) {
        assert_eq!(sessions::encode(key, id), s, "decode inverts encode");
        assert_eq!(key.len(), sessions::KEY_LEN);
    }
    let key = sessions::key_of("0123456789abcdef0123");
    let (_, tail) = split(data, b'\n');
    let url = text(split(tail, b'\n').0);
    if let Some((rewritten, mine)) = crate::forward::sse::rewrite_url(&url, &key) {
        let (k, own) = sessions::decode(&mine).expect("the client's id names the replica");
        assert_eq!(k, &*key);
        let uri: hyper::Uri = match rewritten.parse() {
            Ok(u) => u,
            // The replica sent an URL no client could post to either.
            Err(_) => return,
        };
        let (parts, ()) = hyper::Request::post(uri.clone())
            .body(())
            .expect("a request")
            .into_parts();
        let (named, in_query) =
            crate::forward::message::session_of(&parts).expect("the POST names its session");
        assert!(in_query);
        assert_eq!(named, mine, "the client posts the id it was given");
        // Too long to rebuild: refused (414), never sent on with the client's id.
        let Some(back) = crate::forward::message::with_session_param(&uri, own) else {
            return;
        };
        let (parts, ()) = hyper::Request::post(back)
            .body(())
            .expect("a request")
            .into_parts();
        let (theirs, _) = crate::forward::message::session_of(&parts).expect("still named");
        assert_eq!(theirs, own, "the replica gets its own session id back");
    }
    let event = [b"event: endpoint\ndata: ", tail, b"\n\n"].concat();
    let (scan, session) = crate::forward::sse::scan(&event, &key);
    if let (crate::forward::sse::Scan::Release(out), Some(mine)) = (scan, session) {
        let out = text(&out);
        // The data line that named a session now names the client's id.
        let carried = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|url| url.split('#').next().and_then(|u| u.split_once('?')))
            .any(|(_, query)| {
                form_urlencoded::parse(query.as_bytes()).any(|(k, v)| {
                    crate::contract::mcp::SESSION_PARAMS.contains(&k.as_ref()) && v == mine.as_str()
                })
            });
        assert!(carried, "the event carries the id {mine}: {out}");
    }
}

/// stdio: the server's stdout through the framer, and a conversation of
/// sessions and a server through the multiplexer. Lines of `data` are a
/// script: `o` opens a session, `x<d>` closes session `d`, `r` restarts
/// the server, `c<d><json>` is session `d`'s message, `s<bytes>` is server
/// output (framed first). Properties:
/// - a framed line is a JSON object or array, or reported as not JSON or
///   too long (then the input had a line over the limit);
/// - a reply reaches an open session under an id that session sent and
///   that is not answered yet (or null, for a message with no usable id);
/// - a push reaches an open session, and one about a request names an id
///   of that session;
/// - every request the server gets has a bridge id it never got before,
///   across restarts too, and every line for it is a JSON object;
/// - requests in flight stay within the per-session bound.
pub fn stdio(data: &[u8]) {
    use crate::stdio::framing::{Framer, Line};
    use crate::stdio::mux::{Limits, Mux, Out, SessionId};
    use std::collections::HashSet;

    /// Client ids of a session not answered yet, as JSON text, with counts.
    type Outstanding = HashMap<SessionId, HashMap<String, usize>>;
    const LIMIT: usize = 256;
    const IN_FLIGHT: usize = 4;
    let mut framer = Framer::new(LIMIT);
    let mut mux = Mux::new(Limits {
        in_flight: IN_FLIGHT,
        waiting: 8,
    });
    let mut open: Vec<SessionId> = Vec::new();
    let mut asked: Outstanding = HashMap::new();
    let mut server_ids: HashSet<u64> = HashSet::new();
    let mut check = |out: Vec<Out>, open: &[SessionId], asked: &mut Outstanding| {
        for o in out {
            match o {
                Out::Server(v) => {
                    let obj = v.as_object().expect("a server line is an object");
                    let is_request = obj.get("method").is_some_and(|m| m.is_string())
                        && !obj.contains_key("result")
                        && !obj.contains_key("error");
                    if is_request && let Some(id) = obj.get("id") {
                        let id = id
                            .as_u64()
                            .expect("requests reach the server under bridge ids");
                        assert!(server_ids.insert(id), "bridge id {id} used twice");
                    }
                }
                Out::Reply { session, msg } => {
                    assert!(open.contains(&session), "reply to closed session {session}");
                    let id = msg.get("id").expect("a reply has an id");
                    if !id.is_null() {
                        let n = asked
                            .get_mut(&session)
                            .and_then(|ids| ids.get_mut(&id.to_string()))
                            .filter(|n| **n > 0)
                            .unwrap_or_else(|| {
                                panic!("session {session} has no unanswered id {id}")
                            });
                        *n -= 1;
                    }
                }
                Out::Push { session, about, .. } => {
                    assert!(open.contains(&session), "push to closed session {session}");
                    if let Some(id) = about {
                        assert!(
                            asked
                                .get(&session)
                                .is_some_and(|ids| ids.contains_key(&id.to_string())),
                            "progress for an id session {session} never sent"
                        );
                    }
                }
            }
        }
    };
    for line in data.split(|b| *b == b'\n').take(200) {
        let Some((&op, rest)) = line.split_first() else {
            continue;
        };
        let pick = |rest: &[u8]| -> Option<SessionId> {
            let d = *rest.first()?;
            (!open.is_empty()).then(|| open[usize::from(d) % open.len()])
        };
        match op {
            b'o' => {
                let s = mux.open();
                open.push(s);
                asked.insert(s, HashMap::new());
            }
            b'x' => {
                if let Some(s) = pick(rest) {
                    let out = mux.close(s);
                    open.retain(|o| *o != s);
                    check(out, &open, &mut asked);
                }
            }
            b'r' => {
                let out = mux.restarted();
                check(out, &open, &mut asked);
            }
            b'c' => {
                let Some(s) = pick(rest) else { continue };
                let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&rest[1..]) else {
                    continue;
                };
                // Everything but a response may be answered under its id.
                let response = msg.get("method").is_none()
                    && (msg.get("result").is_some() || msg.get("error").is_some());
                if let Some(id) = msg.get("id")
                    && !response
                {
                    *asked
                        .entry(s)
                        .or_default()
                        .entry(id.to_string())
                        .or_insert(0) += 1;
                }
                let out = mux.from_client(s, msg);
                check(out, &open, &mut asked);
            }
            b's' => {
                let mut buf = bytes::BytesMut::from(rest);
                buf.extend_from_slice(b"\n");
                while let Some(l) = framer.next(&mut buf) {
                    match l {
                        Line::Message(v) => {
                            assert!(v.is_object() || v.is_array());
                            let out = mux.from_server(v);
                            check(out, &open, &mut asked);
                        }
                        Line::NotJson { excerpt } => assert!(excerpt.len() <= LIMIT),
                        Line::TooLong { limit } => {
                            assert_eq!(limit, LIMIT);
                            assert!(rest.len() > LIMIT, "too long at {} bytes", rest.len());
                        }
                    }
                }
            }
            _ => {}
        }
        assert!(
            mux.in_flight() <= IN_FLIGHT * open.len(),
            "{} in flight for {} sessions",
            mux.in_flight(),
            open.len()
        );
        assert_eq!(mux.sessions(), open.len());
    }
}
