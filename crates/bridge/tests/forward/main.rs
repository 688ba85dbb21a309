//! The forwarder against real TCP on 127.0.0.1: splicing (bulk both ways, half-close,
//! resets), round robin, dead replicas,
//! hold, address-in-use detection, close, shutdown and the metrics it reports.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns are test code too

mod mcp;
mod process;
mod routing;
mod stdio;
mod stream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_bridge::forward::{
    Endpoints, ForwardError, ForwardMetrics, Forwarder, Transport, Upstream,
};
use mesh_chaos::wait;
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Upper bound for anything that should happen "promptly".
const PROMPT: Duration = Duration::from_secs(5);

struct Harness {
    fwd: Forwarder,
    registry: Registry,
    _token: CancellationToken,
}

fn harness(hold: Duration) -> Harness {
    let registry = Registry::new();
    let metrics = ForwardMetrics::register(&registry).unwrap();
    let token = CancellationToken::new();
    let fwd = Forwarder::new(LOCALHOST, hold, metrics, token.clone());
    Harness {
        fwd,
        registry,
        _token: token,
    }
}

impl Harness {
    /// The value of `name{service=...}` in the registry, None when the series is absent.
    fn metric(&self, name: &str, service: &str) -> Option<i64> {
        let families = self.registry.gather();
        let family = families.iter().find(|f| f.name() == name)?;
        let m = family.get_metric().iter().find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "service" && l.value() == service)
        })?;
        let v = if m.get_counter().has_value() {
            m.get_counter().value()
        } else {
            m.get_gauge().value()
        };
        Some(v as i64)
    }

    fn connections(&self, service: &str) -> i64 {
        self.metric("mesh_bridge_forward_connections_total", service)
            .unwrap_or(0)
    }
    fn active(&self, service: &str) -> i64 {
        self.metric("mesh_bridge_forward_active_connections", service)
            .unwrap_or(0)
    }
    fn upstream_errors(&self, service: &str) -> i64 {
        self.metric("mesh_bridge_forward_upstream_errors_total", service)
            .unwrap_or(0)
    }
}

/// A port that was free a moment ago (bind :0, read the port, release it).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// An echo server; returns its address and how many connections it accepted.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A `tcp` service's endpoints: each address one replica (its key made up).
fn tcp(addrs: &[SocketAddr]) -> Endpoints {
    let upstreams = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Upstream::new(*a, &format!("{i:012x}")))
        .collect();
    Endpoints {
        transport: Transport::Tcp,
        upstreams,
        waiting: Vec::new(),
    }
}

/// Polls `cond` every few milliseconds until it holds; panics after `PROMPT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let check = || {
        let held = cond();
        async move {
            if held {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    };
    if let Err(e) = wait::until_every_async(what, PROMPT, Duration::from_millis(5), check).await {
        panic!("{e}");
    }
}

async fn connect(port: u16) -> TcpStream {
    timeout(PROMPT, TcpStream::connect((LOCALHOST, port)))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Writes `msg` and expects it echoed back.
async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    timeout(PROMPT, stream.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("echo failed");
    assert_eq!(buf, msg);
}

/// Reads until the peer closes; returns how long that took. Panics after `limit`.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match timeout(limit, stream.read(&mut buf)).await {
        Err(_) => panic!("connection not closed within {limit:?}"),
        Ok(Ok(0) | Err(_)) => start.elapsed(),
        Ok(Ok(_)) => panic!("unexpected data on a connection that should close"),
    }
}

/// True when nothing accepts on the port any more.
async fn refused(port: u16) -> bool {
    matches!(
        timeout(PROMPT, TcpStream::connect((LOCALHOST, port))).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

async fn eventually_refused(port: u16) {
    let what = format!("port {port} to refuse");
    let check = || async move {
        if refused(port).await {
            Ok(())
        } else {
            Err("still accepts".to_string())
        }
    };
    if let Err(e) = wait::until_every_async(&what, PROMPT, Duration::from_millis(5), check).await {
        panic!("{e}");
    }
}
