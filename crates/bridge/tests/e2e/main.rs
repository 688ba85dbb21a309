//! End to end: the built `mesh-bridge` binary against the real Docker Engine
//! and real containers of `mesh-bridge/mcp-stub:dev` (built on demand).
//!
//! Every test has its own state dir, API port, port range and test label; all
//! but one reach the engine through a [`DockerProxy`] that shows the bridge
//! only its own test's containers, so tests run in parallel with each other
//! and with anything else on the engine. A missing engine fails the tests.
//!
//! The measured figures (registration latency, recovery after kill -9 with 50
//! services) are in the ignored test `figures_registration_and_recovery`:
//! `cargo test -p mesh-bridge --release --test e2e -- --ignored --nocapture figures`.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod contract;
mod events;
mod hostile;
mod lifecycle;
mod ports;
mod sdk;
mod serving;
mod stdio;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use mesh_bridge::contract::metric;
use serde_json::{Value, json};
use support::*;

const READY: Duration = Duration::from_secs(20);
const REGISTER: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(10);

fn state_of(bridge: &Bridge, name: &str) -> Result<Value, String> {
    bridge
        .service(name)?
        .ok_or_else(|| format!("service {name} not listed"))
}
