//! A Docker API relay on 127.0.0.1 in front of the engine socket that adds
//! label filters to container lists and event subscriptions, so a bench
//! bridge sees only the containers of its own phase (and never the labelled
//! containers other people's tests run on the same engine; nor do unfiltered
//! bridges elsewhere change what we measure, beyond the engine's load).
//!
//! Costs one loopback hop on the event path (tens of microseconds), which
//! the P2 figure includes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Result;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use mesh_chaos::docker_query::add_label_filters;

use super::infra::DOCKER_SOCK;

/// A running relay; stops on drop.
#[derive(Debug)]
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Relay {
    /// Starts a relay that adds `labels` (`key=value`) to every filter.
    pub async fn start(labels: Vec<String>) -> Result<Relay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let labels = Arc::new(labels);
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = s.cancelled() => break,
                    r = listener.accept() => r,
                };
                let Ok((stream, _)) = accepted else { continue };
                let labels = Arc::clone(&labels);
                let s = s.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = s.cancelled() => {}
                        () = relay(stream, labels) => {}
                    }
                });
            }
        });
        Ok(Relay { addr, stop })
    }

    /// `tcp://127.0.0.1:PORT` for `--docker-host`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(stream: tokio::net::TcpStream, labels: Arc<Vec<String>>) {
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
        let labels = Arc::clone(&labels);
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            if path.ends_with("/containers/json") || path.ends_with("/events") {
                let q = add_label_filters(parts.uri.query(), &labels);
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
            Ok::<_, hyper::Error>(resp.map(|b| b.boxed()))
        }
    });
    let server =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = server => {}
    }
}
