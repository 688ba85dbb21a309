//! Shared helpers of the end-to-end tests: the real `mesh-bridge` binary
//! against the real Docker Engine and real containers of the MCP stub image.
//!
//! - [`TestCtx`]: per-test context (docker present, stub image built, stale
//!   containers of an earlier killed run of the same test removed, everything
//!   with the test's label removed on drop).
//! - [`TestContainer`]: one stub container carrying the test label; removed
//!   with `docker rm -f` on drop, also while unwinding from a panic.
//! - [`DockerProxy`]: a TCP relay in front of `/var/run/docker.sock` that
//!   (a) adds the test's label to the `filters` of container lists and event
//!   subscriptions, so a bridge only ever sees the containers of its own test
//!   even while other tests (or people) run labelled containers on the same
//!   engine, and (b) can be cut (every connection dropped, new ones closed at
//!   once) and restored.
//! - [`Bridge`]: the built binary with its own state dir, API port and port
//!   range; polls `/readyz`; `kill -9`, SIGTERM and restart on the same state.
//! - A small blocking HTTP/1.1 client, the MCP `initialize` call, Prometheus
//!   text parsing and [`wait_for`] (polling with a deadline; no sleeps as
//!   synchronisation).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mesh_chaos::docker_relay::Relay;
use serde_json::Value;

/// The stub image the tests run.
pub const STUB_IMAGE: &str = mesh_bridge::contract::images::STUB;
/// Label every test container carries: the test's name.
pub const TEST_LABEL: &str = "mesh-bridge.test";
/// Label every test container carries: the pid of the test process.
pub const RUN_LABEL: &str = "mesh-bridge.test.run";
/// The engine socket.
pub use mesh_chaos::docker_relay::DOCKER_SOCK;
/// A bearer token for the API (at least 16 characters).
pub const TOKEN: &str = "e2e-token-0123456789abcdef";

// ------------------------------------------------------------ polling ----

/// Polls `f` (through [`mesh_chaos::wait::until`]) until it returns `Ok`,
/// or panics after `timeout` naming `what` and the last error.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    match mesh_chaos::wait::until(what, timeout, f) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

mod bridge;
mod containers;
mod http;
mod metrics;
mod ports;
mod relay;
mod sdk;

pub use bridge::*;
pub use containers::*;
pub use http::*;
pub use metrics::*;
pub use ports::*;
pub use relay::*;
pub use sdk::*;
