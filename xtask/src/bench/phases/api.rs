//! The HTTP API load both P5 and P6 use: keep-alive clients sending a burst.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use crate::bench::infra::TOKEN;

pub(super) type Sender = SendRequest<Full<Bytes>>;

pub(super) async fn connect_api(addr: SocketAddr, n: usize) -> Result<Vec<Sender>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        out.push(send);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Call {
    GetPool,
    Reserve,
}

/// `total` requests spread over the connections (each sequential on its own);
/// returns the wall time, the connections back and the status counts.
pub(super) async fn burst(
    addr: SocketAddr,
    conns: Vec<Sender>,
    total: usize,
    call: Call,
    prefix: &str,
) -> Result<(Duration, Vec<Sender>, BTreeMap<u16, usize>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let prefix: Arc<str> = Arc::from(prefix);
    let host = addr.to_string();
    let t = Instant::now();
    let mut set = JoinSet::new();
    for mut s in conns {
        let next = Arc::clone(&next);
        let prefix = Arc::clone(&prefix);
        let host = host.clone();
        set.spawn(async move {
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let req = match call {
                    Call::GetPool => Request::get("/v1/pool")
                        .header("host", &host)
                        .body(Full::new(Bytes::new()))?,
                    Call::Reserve => Request::post("/v1/reservations")
                        .header("host", &host)
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(Full::new(Bytes::from(format!(
                            "{{\"service\":\"{prefix}-{i:05}\"}}"
                        ))))?,
                };
                s.ready().await?;
                let resp = s.send_request(req).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                *statuses.entry(status).or_default() += 1;
            }
            Ok::<_, anyhow::Error>((s, statuses))
        });
    }
    let mut back = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = set.join_next().await {
            let (s, st) = r??;
            back.push(s);
            for (k, v) in st {
                *statuses.entry(k).or_default() += v;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    let elapsed = t.elapsed();
    match all {
        Ok(r) => r?,
        Err(_) => bail!("the burst did not finish within 120 s"),
    }
    Ok((elapsed, back, statuses))
}
