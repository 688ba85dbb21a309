//! The deployment the deployment faults act on: the bridge container, the
//! engines, the state directory, the API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::store::{self, StoreDamage};
use super::{Docker, deploy};

/// A deployment the deployment faults act on.
#[derive(Debug, Clone)]
pub struct Target {
    /// The engine the bridge (and DinD) containers run on.
    pub outer: Docker,
    /// The engine the services run on (the one the bridge watches).
    pub inner: Docker,
    /// The bridge container's name on `outer`.
    pub bridge: String,
    /// The DinD container's name on `outer` (engine faults), if any.
    pub engine: Option<String>,
    /// Host path of the bridge's state directory.
    pub state_dir: PathBuf,
    /// The bridge image (for `state check`).
    pub bridge_image: String,
    /// The stub image (squatters, replacements).
    pub stub_image: String,
    /// The bridge's API on host loopback.
    pub api: SocketAddr,
    /// The API bearer token.
    pub token: String,
    /// Labels every started container gets.
    pub labels: Vec<String>,
    /// Docker's `--network` value for containers that must share the
    /// bridge's network namespace (squatters).
    pub bridge_netns: String,
}

/// What a store check found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreCheck {
    /// When, ms from the start.
    pub t_ms: u64,
    /// `mesh-bridge state check` exit 0.
    pub ok: bool,
    /// Its output.
    pub detail: String,
    /// The store was damaged on purpose just before.
    pub damaged_on_purpose: bool,
    /// What `mesh-bridge state export` listed (service -> port, reserved and
    /// quarantined alike), when it could be read.
    #[serde(default)]
    pub exported: Option<BTreeMap<String, u16>>,
}

impl Target {
    /// `docker run --rm` args with the harness labels.
    pub fn labelled_run(&self) -> Vec<String> {
        let mut v = vec!["run".to_string()];
        for l in &self.labels {
            v.push("--label".into());
            v.push(l.clone());
        }
        v
    }

    /// SIGKILL the bridge container.
    pub async fn kill_bridge(&self) -> Result<()> {
        self.outer.run_line(&deploy::kill(&self.bridge)).await
    }

    /// SIGTERM the bridge container and wait for it to exit.
    pub async fn stop_bridge(&self) -> Result<()> {
        self.outer.run_line(&deploy::stop(&self.bridge)).await
    }

    /// Starts the (stopped) bridge container.
    pub async fn start_bridge(&self) -> Result<()> {
        self.outer.run_line(&deploy::start(&self.bridge)).await
    }

    /// `mesh-bridge state check` on the state directory while the bridge is down.
    pub async fn check_store(&self) -> (bool, String) {
        match self.state_command("check").await {
            Ok(out) => (true, out.trim().to_string()),
            Err(e) => (false, format!("{e:#}")),
        }
    }

    /// `mesh-bridge state <sub> --state-dir /state` in a throwaway container
    /// of the bridge image (no network) on the state directory.
    async fn state_command(&self, sub: &str) -> Result<String> {
        let vol = format!("{}:/state", self.state_dir.display());
        let mut args = self.labelled_run();
        args.extend(
            [
                "--rm",
                "--network",
                "none",
                "-v",
                &vol,
                &self.bridge_image,
                "state",
                sub,
                "--state-dir",
                "/state",
            ]
            .map(String::from),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.outer.run(&argv).await
    }

    /// `mesh-bridge state export` of the state directory while the bridge is
    /// down: service -> port of every reservation the store holds.
    pub async fn export_store(&self) -> Result<BTreeMap<String, u16>> {
        let out = self.state_command("export").await?;
        let v: serde_json::Value =
            serde_json::from_str(&out).context("state export printed no JSON")?;
        let mut map = BTreeMap::new();
        for r in v
            .get("reservations")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(svc), Some(port)) = (
                r.get("service").and_then(|x| x.as_str()),
                r.get("port").and_then(|x| x.as_u64()),
            ) {
                map.insert(svc.to_string(), u16::try_from(port).unwrap_or(0));
            }
        }
        Ok(map)
    }

    /// Damages the store (the bridge must be down): the same
    /// [`store::damage`] `mesh-chaos store-corrupt|store-truncate` does.
    pub fn damage_store(&self, how: StoreDamage) -> Result<()> {
        store::damage(&self.state_dir, how, false, &mut |_| {})
    }

    /// Files moved aside by the bridge (`state.db.damaged-*`).
    pub fn damaged_files(&self) -> Vec<String> {
        store::damaged_files(&self.state_dir)
    }

    /// Starts a foreign listener (an MCP stub named `squatter`) on `port` in
    /// the bridge's network namespace; returns its container name.
    pub async fn squat(&self, port: u16, tag: &str) -> Result<String> {
        let name = format!("mesh-chaos-squat-{tag}-{port}");
        let mut args = self.labelled_run();
        args.extend(
            [
                "-d",
                "--name",
                &name,
                "--network",
                &self.bridge_netns,
                "-e",
                &format!("MCP_STUB_PORT={port}"),
                "-e",
                "MCP_STUB_NAME=squatter",
                &self.stub_image,
            ]
            .map(String::from),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.outer.run(&argv).await?;
        Ok(name)
    }

    /// Removes containers on the outer engine.
    pub async fn remove_outer(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let mut args = vec!["rm", "--force"];
        args.extend(names.iter().map(String::as_str));
        self.outer.run(&args).await.map(drop)
    }

    /// Sends SIGTERM to dockerd inside the engine container (its entrypoint
    /// loop starts a new one).
    pub async fn restart_engine(&self) -> Result<()> {
        let Some(engine) = &self.engine else {
            bail!("no engine container: engine faults need the DinD topology");
        };
        self.outer.run_line(&deploy::term_dockerd(engine)).await
    }

    /// Cuts (or restores) the bridge's tcp :2375 connection (loopback) inside
    /// the engine container.
    pub async fn cut_engine(&self, cut: bool) -> Result<()> {
        let Some(engine) = &self.engine else {
            bail!("no engine container: engine faults need the DinD topology");
        };
        let op = if cut { "-I" } else { "-D" };
        for dir in ["--dport", "--sport"] {
            self.outer
                .run(&[
                    "exec",
                    engine,
                    "iptables",
                    op,
                    "INPUT",
                    // Only the bridge's loopback connection: the harness reaches
                    // the engine through the published port (eth0) meanwhile.
                    "-i",
                    "lo",
                    "-p",
                    "tcp",
                    dir,
                    "2375",
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ])
                .await?;
        }
        Ok(())
    }

    /// Adds (`add`) or deletes an iptables OUTPUT rule in the bridge's network
    /// namespace (the DinD container's), for the network faults.
    pub async fn net_rule(&self, add: bool, rule: &[String]) -> Result<()> {
        let Some(engine) = &self.engine else {
            bail!("no engine container: network faults need the DinD topology");
        };
        let mut argv = vec![
            "exec",
            engine,
            "iptables",
            if add { "-I" } else { "-D" },
            "OUTPUT",
        ];
        argv.extend(rule.iter().map(String::as_str));
        self.outer.run(&argv).await.map(drop)
    }

    /// The address of a service container on the inner engine.
    pub async fn replica_ip(&self, id: &str) -> Result<String> {
        self.inner.address_of(id).await
    }

    /// `POST /v1/reservations` for `service`; returns the HTTP status and body.
    pub async fn reserve(&self, service: &str) -> Result<(u16, String)> {
        self.api_call(
            hyper::Method::POST,
            "/v1/reservations",
            serde_json::json!({ "service": service }).to_string(),
        )
        .await
    }

    /// `DELETE /v1/reservations/{service}`.
    pub async fn unreserve(&self, service: &str) -> Result<(u16, String)> {
        self.api_call(
            hyper::Method::DELETE,
            &format!("/v1/reservations/{service}"),
            String::new(),
        )
        .await
    }

    async fn api_call(
        &self,
        method: hyper::Method,
        path: &str,
        body: String,
    ) -> Result<(u16, String)> {
        crate::http::request(self.api, method, path, body, Some(&self.token)).await
    }
}
