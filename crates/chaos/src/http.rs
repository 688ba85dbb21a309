//! A tiny HTTP/1.1 client for the bridge's API (one request a connection,
//! bounded by a timeout).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Time limit of one request.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Sends one request; returns the status and the body.
pub async fn request(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: String,
    token: Option<&str>,
) -> Result<(u16, String)> {
    tokio::time::timeout(TIMEOUT, async {
        let stream = TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
    .await
    .with_context(|| format!("{addr}{path}: no answer within {TIMEOUT:?}"))?
}

/// `GET path`, expecting 200 and JSON of type `T` (`serde_json::Value`
/// for any).
pub async fn get_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> Result<T> {
    let (status, body) = request(addr, hyper::Method::GET, path, String::new(), None).await?;
    anyhow::ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
    serde_json::from_str(&body).with_context(|| {
        format!(
            "GET {path}: not the expected JSON: {}",
            body.chars().take(200).collect::<String>()
        )
    })
}

/// `GET path` as text, expecting 200.
pub async fn get_text(addr: SocketAddr, path: &str) -> Result<String> {
    let (status, body) = request(addr, hyper::Method::GET, path, String::new(), None).await?;
    anyhow::ensure!(status == 200, "GET {path}: HTTP {status}");
    Ok(body)
}

/// Parses Prometheus text into `name{labels}` -> value (labels as written).
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_prometheus_text() {
        let m = super::parse_metrics(
            "# HELP x y\nmesh_bridge_ports_in_use 3\nmesh_bridge_services{state=\"serving\"} 2\n",
        );
        assert_eq!(m["mesh_bridge_ports_in_use"], 3.0);
        assert_eq!(m["mesh_bridge_services{state=\"serving\"}"], 2.0);
    }
}
