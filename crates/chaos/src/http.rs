//! The one HTTP/1.1 client of the harness and the tests: one request on a
//! fresh connection, bounded by a timeout (connect, send and the whole read).
//!
//! [`send`] is the async form, [`send_blocking`] the same for synchronous
//! callers (the bridge's e2e tests, xtask's checks); [`request`],
//! [`get_json`] and [`get_text`] are the API shortcuts the probes use. The
//! MCP calls on top of it are in [`crate::stub`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Time limit of one API request ([`request`], [`get_json`], [`get_text`]).
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The whole exchange did not finish in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// Where the request went.
        addr: SocketAddr,
        /// The limit that passed.
        timeout: Duration,
    },
    /// Connecting failed.
    #[error("i/o with {addr}: {source}")]
    Io {
        /// Where the request went.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP-level failure (handshake, malformed response, reset mid-body).
    #[error("http with {addr}: {source}")]
    Http {
        /// Where the request went.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The request itself could not be built (a bad method, path or header).
    #[error("cannot build the request to {addr}: {reason}")]
    Build {
        /// Where the request was to go.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, de-chunked.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON, or what it was instead.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("not JSON ({e}): {}", self.text()))
    }
    /// A header's value as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request on a fresh connection and reads the whole answer.
/// `Host` is set to `addr`; `headers` come on top (a `Content-Type` for a
/// body is the caller's).
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Io { addr, source })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| HttpError::Http { addr, source })?;
        let driver = tokio::spawn(conn);
        let request = build(addr, method, path, headers, body)?;
        let result = round_trip(&mut sender, request, addr).await;
        driver.abort();
        result
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout { addr, timeout })?
}

/// One kept-alive HTTP/1.1 connection: [`KeepAlive::send`] reuses it for
/// as long as the peer keeps it, and opens a new one when it is gone (the
/// reply says which). The session probes use it beside [`send`], so both
/// fresh and reused connections are exercised.
#[derive(Debug)]
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl KeepAlive {
    /// No connection yet; the first [`Self::send`] opens it.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// Sends one request, on the kept connection when it is still open.
    /// Returns the reply and whether the connection was reused. Any error
    /// drops the connection.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(Reply, bool), HttpError> {
        let addr = self.addr;
        let r = tokio::time::timeout(timeout, self.exchange(method, path, headers, body)).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.close();
                Err(e)
            }
            Err(_) => {
                self.close();
                Err(HttpError::Timeout { addr, timeout })
            }
        }
    }

    /// Drops the connection.
    pub fn close(&mut self) {
        if let Some((_, driver)) = self.conn.take() {
            driver.abort();
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(Reply, bool), HttpError> {
        let addr = self.addr;
        let live = self
            .conn
            .as_ref()
            .is_some_and(|(s, d)| !s.is_closed() && !d.is_finished());
        if !live {
            self.close();
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| HttpError::Io { addr, source })?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| HttpError::Http { addr, source })?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some((sender, driver));
        }
        let Some((sender, _)) = self.conn.as_mut() else {
            unreachable!("a connection was just opened");
        };
        let request = build(addr, method, path, headers, body)?;
        sender
            .ready()
            .await
            .map_err(|source| HttpError::Http { addr, source })?;
        Ok((round_trip(sender, request, addr).await?, live))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sends `request` on `sender` and reads the whole answer.
async fn round_trip(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    addr: SocketAddr,
) -> Result<Reply, HttpError> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| HttpError::Http { addr, source })?;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|source| HttpError::Http { addr, source })?
        .to_bytes();
    Ok(Reply {
        status,
        headers: parts.headers,
        body,
    })
}

/// A request to `addr` with `Host` set and `headers` on top.
pub(crate) fn build(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let fail = |reason: String| HttpError::Build { addr, reason };
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(body))
        .map_err(|e| fail(e.to_string()))?;
    let h = request.headers_mut();
    h.insert(
        HOST,
        HeaderValue::from_str(&addr.to_string()).map_err(|e| fail(e.to_string()))?,
    );
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let value = HeaderValue::from_str(v).map_err(|e| fail(e.to_string()))?;
        h.append(name, value);
    }
    Ok(request)
}

/// [`send`] for synchronous code: runs it on a runtime of its own. Must not
/// be called from inside a tokio runtime (use [`send`] there).
pub fn send_blocking(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    block_on(send(addr, method, path, headers, body, timeout))
        .map_err(|source| HttpError::Io { addr, source })?
}

/// Runs `future` to completion on a fresh current-thread runtime, for the
/// synchronous callers of the async clients in this crate.
pub fn block_on<F: Future>(future: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(future))
}

/// Sends one API request with a JSON body and an optional bearer token;
/// returns the status and the body as text.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: String,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let reply = send(addr, method, path, &headers, Bytes::from(body), TIMEOUT)
        .await
        .with_context(|| format!("{addr}{path}"))?;
    Ok((reply.status, reply.text()))
}

/// `GET path`, expecting 200 and JSON of type `T` (`serde_json::Value`
/// for any).
pub async fn get_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<T> {
    let (status, body) = request(addr, Method::GET, path, String::new(), None).await?;
    anyhow::ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
    serde_json::from_str(&body).with_context(|| {
        format!(
            "GET {path}: not the expected JSON: {}",
            body.chars().take(200).collect::<String>()
        )
    })
}

/// `GET path` as text, expecting 200.
pub async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (status, body) = request(addr, Method::GET, path, String::new(), None).await?;
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
