//! Blocking forms of the harness' HTTP client and MCP `initialize`, and
//! waiting for a port to serve.
#![allow(dead_code)]

use super::*;

/// A whole HTTP response (the harness' one client type).
pub use mesh_chaos::http::Reply as HttpResponse;

/// One HTTP/1.1 request on a fresh connection, read to the end, through
/// the harness' one client ([`mesh_chaos::http::send_blocking`]); the
/// timeout bounds the whole exchange.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let body = bytes::Bytes::copy_from_slice(body);
    mesh_chaos::http::send_blocking(addr, method, path, headers, body, timeout)
        .map_err(|e| e.to_string())
}

/// Sends MCP `initialize` to `addr` (the stub client's one request) and
/// returns `serverInfo.name`.
pub fn initialize(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    mesh_chaos::http::block_on(mesh_chaos::stub::initialize(addr, timeout))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Waits until `port` answers `initialize` as `name`.
#[track_caller]
pub fn wait_serving(port: u16, name: &str, timeout: Duration) {
    wait_for(&format!("port {port} to answer as {name}"), timeout, || {
        let got = initialize(local(port), Duration::from_secs(3))?;
        if got == name {
            Ok(())
        } else {
            Err(format!("answered as {got}"))
        }
    });
}
