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
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Adds `labels` to the `label` filter of a Docker API query string.
fn add_label_filters(query: Option<&str>, labels: &[String]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let idx = match pairs.iter().position(|(k, _)| k == "filters") {
        Some(i) => i,
        None => {
            pairs.push(("filters".into(), percent_encode("{}")));
            pairs.len() - 1
        }
    };
    let mut filters: Value = serde_json::from_str(&percent_decode(&pairs[idx].1))
        .unwrap_or(Value::Object(Default::default()));
    if !filters.is_object() {
        filters = Value::Object(Default::default());
    }
    if let Some(obj) = filters.as_object_mut() {
        let entry = obj
            .entry("label")
            .or_insert_with(|| Value::Array(Vec::new()));
        match entry {
            Value::Array(a) => a.extend(labels.iter().map(|l| Value::String(l.clone()))),
            Value::Object(m) => {
                for l in labels {
                    m.insert(l.clone(), Value::Bool(true));
                }
            }
            other => {
                *other = Value::Array(labels.iter().map(|l| Value::String(l.clone())).collect())
            }
        }
    }
    pairs[idx].1 = percent_encode(&filters.to_string());
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_labels_to_existing_filters() {
        let q = add_label_filters(
            Some("all=1&filters=%7B%22label%22%3A%5B%22a%22%5D%7D"),
            &["x=1".into()],
        );
        let f = q.split("filters=").nth(1).unwrap_or("");
        let v: Value = serde_json::from_str(&percent_decode(f)).unwrap_or(Value::Null);
        assert_eq!(v["label"], serde_json::json!(["a", "x=1"]));
        assert!(q.starts_with("all=1&"));
    }
}
