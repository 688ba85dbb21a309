//! [`DockerProxy`]: the shared Docker API relay on a runtime of its own.
#![allow(dead_code)]

use super::*;

// ------------------------------------------------------- docker relay ----

/// The shared Docker API relay (`mesh_chaos::docker_relay`) on a runtime of
/// its own, limited to one test's containers; it can be cut and restored.
#[derive(Debug)]
pub struct DockerProxy {
    /// Loopback port the relay listens on.
    pub port: u16,
    relay: Option<Relay>,
    rt: Option<tokio::runtime::Runtime>,
}

impl DockerProxy {
    /// Starts a relay that shows only the containers of `ctx`.
    pub fn start(ctx: &TestCtx) -> DockerProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let relay = rt
            .block_on(Relay::start(ctx.label_filters()))
            .expect("start the docker relay");
        DockerProxy {
            port: relay.addr.port(),
            relay: Some(relay),
            rt: Some(rt),
        }
    }

    fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("running")
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.relay().url()
    }

    /// Drops every relayed connection and closes new ones at once.
    pub fn cut(&self) {
        self.relay().cut();
    }

    /// Relays again.
    pub fn restore(&self) {
        self.relay().restore();
    }

    /// From now on, every container `start` event on the event streams is
    /// delivered twice, as an engine replaying it would.
    pub fn replay_start_events(&self, on: bool) {
        self.relay().replay_start_events(on);
    }

    /// Connections currently relayed.
    pub fn connections(&self) -> usize {
        self.relay().connections()
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        drop(self.relay.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
