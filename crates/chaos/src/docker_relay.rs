//! A Docker API relay on 127.0.0.1 in front of the engine socket, shared by
//! the bridge's end-to-end tests and the bench: it adds label filters to
//! container lists and event subscriptions, so a bridge behind it sees only
//! the containers of one test or bench phase (never other people's, nor do
//! unfiltered bridges elsewhere change what is measured). Tests can also cut
//! it (every relayed connection dropped, new ones closed at once: the engine
//! is "gone") and make it deliver every `start` event twice (an engine
//! replaying it). Costs one loopback hop on the event path.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::docker_query::add_label_filters;

/// The engine socket relayed to.
pub const DOCKER_SOCK: &str = "/var/run/docker.sock";

#[derive(Debug)]
struct Shared {
    labels: Vec<String>,
    cut: AtomicBool,
    /// Cancelled to drop every current connection; replaced on restore.
    kill: Mutex<CancellationToken>,
    connections: AtomicUsize,
    replay_starts: AtomicBool,
}

/// A running relay; stops on drop.
#[derive(Debug)]
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Relay {
    /// Starts a relay (on the current tokio runtime) that adds `labels`
    /// (`key=value`) to every list and event filter.
    pub async fn start(labels: Vec<String>) -> std::io::Result<Relay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            labels,
            cut: AtomicBool::new(false),
            kill: Mutex::new(CancellationToken::new()),
            connections: AtomicUsize::new(0),
            replay_starts: AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        Ok(Relay { addr, shared, stop })
    }

    /// `tcp://127.0.0.1:PORT` for `--docker-host`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Drops every relayed connection and closes new ones at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.kill_token().cancel();
    }

    /// Relays again.
    pub fn restore(&self) {
        *self.shared.kill.lock().unwrap_or_else(|e| e.into_inner()) = CancellationToken::new();
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// From now on (or no longer), every container `start` event on the
    /// event streams is delivered twice.
    pub fn replay_start_events(&self, on: bool) {
        self.shared.replay_starts.store(on, Ordering::SeqCst);
    }

    /// Connections currently relayed.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn kill_token(&self) -> CancellationToken {
        self.shared
            .kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.kill_token().cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let Ok((stream, _)) = accepted else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let kill = shared
            .kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                () = stop.cancelled() => {}
                () = kill.cancelled() => {}
                () = relay(stream, Arc::clone(&shared)) => {}
            }
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn relay(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = tokio::net::UnixStream::connect(DOCKER_SOCK).await else {
        return;
    };
    let Ok((sender, conn)) =
        hyper::client::conn::http1::handshake::<_, hyper::body::Incoming>(TokioIo::new(upstream))
            .await
    else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let sender = Arc::clone(&sender);
        let shared = Arc::clone(&shared);
        async move {
            if req.uri().path().ends_with("/attach") {
                return attach(req, &shared).await;
            }
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            let events = path.ends_with("/events");
            if path.ends_with("/containers/json") || events {
                let q = add_label_filters(parts.uri.query(), &shared.labels);
                if let Ok(uri) = format!("{path}?{q}").parse() {
                    parts.uri = uri;
                }
            }
            let req = hyper::Request::from_parts(parts, body);
            let resp = {
                let mut s = sender.lock().await;
                s.ready().await?;
                s.send_request(req).await?
            };
            Ok::<_, hyper::Error>(resp.map(move |b| {
                if !events {
                    return b.boxed();
                }
                b.map_frame(move |frame| match frame.into_data() {
                    Ok(data) => {
                        let pat: &[u8] = b"\"Action\":\"start\"";
                        let start = data.windows(pat.len()).any(|w| w == pat);
                        if start && shared.replay_starts.load(Ordering::SeqCst) {
                            // Docker sends one JSON event a chunk, newline-terminated.
                            let mut twice = data.to_vec();
                            twice.extend_from_slice(&data);
                            hyper::body::Frame::data(bytes::Bytes::from(twice))
                        } else {
                            hyper::body::Frame::data(data)
                        }
                    }
                    Err(frame) => frame,
                })
                .boxed()
            }))
        }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = server => {}
    }
}

/// An attach (a stdio server's stdin and stdout): relayed on a connection
/// of its own, and once the engine switches protocols, the two upgraded
/// connections are copied both ways until either ends or the relay is cut.
async fn attach(
    mut req: hyper::Request<hyper::body::Incoming>,
    shared: &Shared,
) -> Result<
    hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>>,
    hyper::Error,
> {
    let client_side = hyper::upgrade::on(&mut req);
    let upstream = match tokio::net::UnixStream::connect(DOCKER_SOCK).await {
        Ok(u) => u,
        Err(_) => {
            let mut r = hyper::Response::new(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, hyper::body::Incoming>(TokioIo::new(upstream))
            .await?;
    tokio::spawn(conn.with_upgrades());
    let mut resp = sender.send_request(req).await?;
    if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        let engine_side = hyper::upgrade::on(&mut resp);
        let kill = shared
            .kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(engine)) = (client_side.await, engine_side.await) else {
                return;
            };
            let (mut client, mut engine) = (TokioIo::new(client), TokioIo::new(engine));
            tokio::select! {
                () = kill.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
            }
        });
    }
    Ok(resp.map(|b| b.boxed()))
}
