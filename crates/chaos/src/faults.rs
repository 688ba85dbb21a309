//! Faults, injected through the docker CLI against a given engine
//! (`docker -H <host>`), and against the bridge's state directory and API.
//!
//! Container faults pick victims by label and count or fraction (seeded, see
//! [`crate::schedule::pick`]). Deployment faults (bridge kill -9, engine
//! restart or cut, store damage, full disk, port squat, registration flood,
//! duplicate storm) need a [`Target`] describing the deployment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Label of every container the harness starts.
pub const TEST_LABEL: &str = "mesh-bridge.test";
/// Label naming the service of a container.
pub const SERVICE_LABEL: &str = "mesh-bridge.service";

/// Every fault the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL containers.
    ContainerKill,
    /// `docker stop` containers.
    ContainerStop,
    /// `docker restart` containers.
    ContainerRestart,
    /// `docker pause` containers (unpaused after `hold`).
    ContainerPause,
    /// `docker rm -f` containers (a replacement is started after `hold`).
    ContainerRemove,
    /// SIGKILL the bridge, check its store, start it again.
    BridgeKill,
    /// Restart the engine the bridge talks to (dockerd inside DinD).
    EngineRestart,
    /// Cut the bridge's connection to the engine for `hold`.
    EngineCut,
    /// Stop the bridge, overwrite the store with garbage, start it.
    StoreCorrupt,
    /// Stop the bridge, truncate the store, start it.
    StoreTruncate,
    /// Fill the state disk for `hold` while services come and go.
    DiskFull,
    /// A foreign listener on free ports of the range, then a new service.
    PortSquat,
    /// Reserve more services than the pool holds (then release them).
    RegistrationFlood,
    /// Re-register services that already hold ports.
    DuplicateStorm,
    /// Remove every replica of `count` live services for good and start as
    /// many new services under new names (a crowded pool's churn).
    ServiceChurn,
    /// Start `count` new services in the same instant (they stay).
    ServiceBurst,
    /// Drop 30 % of the bridge's packets to the chosen replicas (iptables
    /// `statistic` in the bridge's network namespace).
    NetLoss,
    /// Answer the bridge's connections to the chosen replicas with a TCP reset.
    NetReset,
    /// Drop every packet the bridge sends to the chosen replicas.
    NetBlackhole,
    /// Delay every MCP answer of the chosen replicas by [`NET_LATENCY_MS`]
    /// (the stub's delay mode: this kernel has no netem).
    NetLatency,
}

/// Share of packets `net-loss` drops in scenarios.
pub const NET_LOSS: f64 = 0.3;

/// Latency `net-latency` adds in scenarios: well below the probes' timeout,
/// so clients see slower answers and no failure.
pub const NET_LATENCY_MS: u64 = 400;

/// The stub's binary inside its image (`xtask/images/mcp-stub/Dockerfile`).
pub const STUB_BIN: &str = "/mcp-stub";

/// `docker exec` arguments that set the delay of the stub in container `id`
/// (0 ends it).
pub fn delay_command(id: &str, ms: u64) -> Vec<String> {
    ["exec", id, STUB_BIN, "--delay", &ms.to_string()]
        .map(String::from)
        .to_vec()
}

impl FaultKind {
    /// Every kind, for the CLI and the report.
    pub const ALL: [FaultKind; 20] = [
        FaultKind::ContainerKill,
        FaultKind::ContainerStop,
        FaultKind::ContainerRestart,
        FaultKind::ContainerPause,
        FaultKind::ContainerRemove,
        FaultKind::BridgeKill,
        FaultKind::EngineRestart,
        FaultKind::EngineCut,
        FaultKind::StoreCorrupt,
        FaultKind::StoreTruncate,
        FaultKind::DiskFull,
        FaultKind::PortSquat,
        FaultKind::RegistrationFlood,
        FaultKind::DuplicateStorm,
        FaultKind::ServiceChurn,
        FaultKind::ServiceBurst,
        FaultKind::NetLoss,
        FaultKind::NetReset,
        FaultKind::NetBlackhole,
        FaultKind::NetLatency,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::ContainerKill => "container-kill",
            FaultKind::ContainerStop => "container-stop",
            FaultKind::ContainerRestart => "container-restart",
            FaultKind::ContainerPause => "container-pause",
            FaultKind::ContainerRemove => "container-remove",
            FaultKind::BridgeKill => "bridge-kill",
            FaultKind::EngineRestart => "engine-restart",
            FaultKind::EngineCut => "engine-cut",
            FaultKind::StoreCorrupt => "store-corrupt",
            FaultKind::StoreTruncate => "store-truncate",
            FaultKind::DiskFull => "disk-full",
            FaultKind::PortSquat => "port-squat",
            FaultKind::RegistrationFlood => "registration-flood",
            FaultKind::DuplicateStorm => "duplicate-storm",
            FaultKind::ServiceChurn => "service-churn",
            FaultKind::ServiceBurst => "service-burst",
            FaultKind::NetLoss => "net-loss",
            FaultKind::NetReset => "net-reset",
            FaultKind::NetBlackhole => "net-blackhole",
            FaultKind::NetLatency => "net-latency",
        }
    }

    /// Parses the kebab-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Container faults act on service containers chosen by label.
    pub fn is_container(self) -> bool {
        matches!(
            self,
            FaultKind::ContainerKill
                | FaultKind::ContainerStop
                | FaultKind::ContainerRestart
                | FaultKind::ContainerPause
                | FaultKind::ContainerRemove
        )
    }

    /// Network faults between the bridge and chosen replicas.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::NetLoss | FaultKind::NetReset | FaultKind::NetBlackhole
        )
    }

    /// The iptables rule (without `-I`/`-D OUTPUT`) a network fault puts on
    /// the bridge's TCP traffic to one replica at `ip:port`; `loss` is the
    /// probability `net-loss` drops a packet with.
    pub fn net_rule(self, ip: &str, port: u16, loss: f64) -> Vec<String> {
        let loss = format!("{loss}");
        let mut r: Vec<String> = ["-d", ip, "-p", "tcp", "--dport", &port.to_string()]
            .map(String::from)
            .to_vec();
        let action: &[&str] = match self {
            FaultKind::NetLoss => &[
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &loss,
                "-j",
                "DROP",
            ],
            FaultKind::NetReset => &["-j", "REJECT", "--reject-with", "tcp-reset"],
            _ => &["-j", "DROP"],
        };
        r.extend(action.iter().map(|a| (*a).to_string()));
        r
    }

    /// Faults that take every service through the bridge down with them.
    pub fn is_global(self) -> bool {
        matches!(
            self,
            FaultKind::BridgeKill
                | FaultKind::EngineRestart
                | FaultKind::StoreCorrupt
                | FaultKind::StoreTruncate
        )
    }

    /// Default time before healing.
    pub fn default_hold_ms(self) -> u64 {
        match self {
            FaultKind::ContainerPause => 3_000,
            FaultKind::ContainerKill | FaultKind::ContainerStop | FaultKind::ContainerRemove => {
                4_000
            }
            FaultKind::EngineCut => 5_000,
            FaultKind::NetLoss
            | FaultKind::NetReset
            | FaultKind::NetBlackhole
            | FaultKind::NetLatency => 5_000,
            FaultKind::DiskFull => 6_000,
            FaultKind::PortSquat => 8_000,
            FaultKind::RegistrationFlood => 4_000,
            _ => 0,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The docker CLI against one engine.
#[derive(Debug, Clone, Default)]
pub struct Docker {
    /// `-H` value; None = the CLI's default (`DOCKER_HOST`).
    pub host: Option<String>,
}

/// A container as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Container {
    /// Name (sorted first, so choices do not depend on ids).
    pub name: String,
    /// Id.
    pub id: String,
    /// `mesh-bridge.service` label.
    pub service: String,
    /// running, exited, paused, ...
    pub state: String,
}

impl Docker {
    /// An engine at `host`.
    pub fn at(host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("docker");
        if let Some(h) = &self.host {
            c.arg("-H").arg(h);
        }
        c.kill_on_drop(true);
        c
    }

    /// Runs `docker <args>` (60 s limit) and returns stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        self.run_timeout(args, Duration::from_secs(60)).await
    }

    /// Runs `docker <args>` with a time limit and returns stdout.
    pub async fn run_timeout(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut c = self.command();
        c.args(args);
        let out = tokio::time::timeout(limit, c.output())
            .await
            .with_context(|| format!("docker {} timed out after {limit:?}", args.join(" ")))?
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The first address of container `id` on its networks.
    pub async fn address_of(&self, id: &str) -> Result<String> {
        let out = self
            .run(&[
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                id,
            ])
            .await?;
        out.split_whitespace()
            .next()
            .map(str::to_string)
            .with_context(|| {
                format!("container {id} has no network address (network mode none or host?)")
            })
    }

    /// Containers (all states) matching every `K=V` (or `K`) label filter.
    pub async fn list(&self, labels: &[String]) -> Result<Vec<Container>> {
        let mut args = vec!["ps".to_string(), "-a".into(), "--no-trunc".into()];
        for l in labels {
            args.push("--filter".into());
            args.push(format!("label={l}"));
        }
        args.push("--format".into());
        args.push(format!(
            "{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.Label \"{SERVICE_LABEL}\"}}}}\t{{{{.State}}}}"
        ));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&argv).await?;
        let mut v: Vec<Container> = out
            .lines()
            .filter_map(|l| {
                let mut p = l.split('\t');
                Some(Container {
                    id: p.next()?.to_string(),
                    name: p.next()?.to_string(),
                    service: p.next().unwrap_or("").to_string(),
                    state: p.next().unwrap_or("").to_string(),
                })
            })
            .collect();
        v.sort();
        Ok(v)
    }
}

/// Turns a scenario target (service name or `K=V`) into label filters.
pub fn target_labels(target: Option<&str>) -> Vec<String> {
    match target {
        None => vec![SERVICE_LABEL.to_string()],
        Some(t) if t.contains('=') => vec![t.to_string()],
        Some(service) => vec![format!("{SERVICE_LABEL}={service}")],
    }
}

/// One docker command line: `pre` followed by the container ids.
fn command_on(pre: &[&str], ids: &[String]) -> Vec<String> {
    pre.iter()
        .map(|s| s.to_string())
        .chain(ids.iter().cloned())
        .collect()
}

/// The docker command lines a container fault runs on `ids`.
pub fn container_commands(kind: FaultKind, ids: &[String]) -> Vec<Vec<String>> {
    if ids.is_empty() {
        return Vec::new();
    }
    let with = |pre: &[&str]| vec![command_on(pre, ids)];
    match kind {
        FaultKind::ContainerKill => with(&["kill", "--signal", "KILL"]),
        FaultKind::ContainerStop => with(&["stop", "--time", "2"]),
        FaultKind::ContainerRestart => with(&["restart", "--time", "2"]),
        FaultKind::ContainerPause => with(&["pause"]),
        FaultKind::ContainerRemove => with(&["rm", "--force"]),
        _ => Vec::new(),
    }
}

/// What heals a container fault after its hold.
pub fn container_heal_commands(kind: FaultKind, ids: &[String]) -> Vec<Vec<String>> {
    if ids.is_empty() {
        return Vec::new();
    }
    let with = |pre: &[&str]| vec![command_on(pre, ids)];
    match kind {
        FaultKind::ContainerKill | FaultKind::ContainerStop => with(&["start"]),
        FaultKind::ContainerPause => with(&["unpause"]),
        _ => Vec::new(),
    }
}

/// Runs command lines against an engine.
pub async fn run_all(docker: &Docker, cmds: &[Vec<String>]) -> Result<()> {
    for c in cmds {
        let argv: Vec<&str> = c.iter().map(String::as_str).collect();
        docker.run(&argv).await?;
    }
    Ok(())
}

/// Length of each run of bytes [`corruption_patches`] overwrites.
pub const CORRUPTION_RUN: u64 = 64;
/// How many runs [`corruption_patches`] overwrites.
pub const CORRUPTION_RUNS: usize = 8;

/// Where `mesh-chaos store-corrupt` damages a store of `len` bytes: up to
/// [`CORRUPTION_RUNS`] `(offset, masks)` runs at offsets drawn from `seed`,
/// sorted by offset and never overlapping. Each byte at `offset + i` is
/// XORed with `masks[i]`, which is never zero, so every byte covered changes.
/// The same `len` and `seed` give the same runs.
pub fn corruption_patches(len: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    if len == 0 {
        return Vec::new();
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let run = CORRUPTION_RUN.min(len);
    // Slots of `run` bytes; pick distinct ones so runs never overlap.
    let slots = len / run;
    let mut starts: Vec<u64> = Vec::new();
    let want = (CORRUPTION_RUNS as u64).min(slots) as usize;
    while starts.len() < want {
        let s = (next() % slots) * run;
        if !starts.contains(&s) {
            starts.push(s);
        }
    }
    starts.sort_unstable();
    starts
        .into_iter()
        .map(|off| {
            let masks = (0..run)
                .map(|_| ((next() >> 24) as u8).max(1))
                .collect::<Vec<u8>>();
            (off, masks)
        })
        .collect()
}

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
        self.outer
            .run(&["kill", "--signal", "KILL", &self.bridge])
            .await
            .map(drop)
    }

    /// SIGTERM the bridge container and wait for it to exit.
    pub async fn stop_bridge(&self) -> Result<()> {
        self.outer
            .run(&["stop", "--time", "6", &self.bridge])
            .await
            .map(drop)
    }

    /// Starts the (stopped) bridge container.
    pub async fn start_bridge(&self) -> Result<()> {
        self.outer.run(&["start", &self.bridge]).await.map(drop)
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

    /// The store file.
    pub fn store_file(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// Overwrites the start of the store with garbage (bridge must be down).
    pub fn corrupt_store(&self, seed: u64) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let path = self.store_file();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut x = seed | 1;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&garbage)?;
        f.sync_all()?;
        for side in ["state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(self.state_dir.join(side));
        }
        Ok(())
    }

    /// Truncates the store to a few bytes (bridge must be down).
    pub fn truncate_store(&self) -> Result<()> {
        let path = self.store_file();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = f.metadata()?.len();
        f.set_len((len / 3).min(700))?;
        f.sync_all()?;
        Ok(())
    }

    /// Files moved aside by the bridge (`state.db.damaged-*`).
    pub fn damaged_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.state_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(".damaged-"))
                    .collect()
            })
            .unwrap_or_default()
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
        self.outer
            .run(&[
                "exec",
                engine,
                "sh",
                "-c",
                "kill -TERM \"$(cat /var/run/docker.pid)\"",
            ])
            .await
            .map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).expect("json");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
    }

    #[test]
    fn network_rules_aim_at_one_replica_with_their_own_action() {
        let rule = |k: FaultKind| k.net_rule("192.0.2.5", 8080, NET_LOSS).join(" ");
        for k in [
            FaultKind::NetLoss,
            FaultKind::NetReset,
            FaultKind::NetBlackhole,
        ] {
            assert!(k.is_network() && !k.is_container() && !k.is_global(), "{k}");
            assert!(
                rule(k).starts_with("-d 192.0.2.5 -p tcp --dport 8080 "),
                "{k}"
            );
        }
        assert!(rule(FaultKind::NetReset).ends_with("-j REJECT --reject-with tcp-reset"));
        assert!(rule(FaultKind::NetBlackhole).ends_with("-j DROP"));
        assert!(rule(FaultKind::NetLoss).contains("--probability 0.3 -j DROP"));
        assert!(!FaultKind::ContainerKill.is_network());
    }

    #[test]
    fn container_commands_name_every_victim() {
        let ids = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            container_commands(FaultKind::ContainerKill, &ids),
            vec![vec!["kill", "--signal", "KILL", "a", "b"]]
        );
        assert_eq!(
            container_heal_commands(FaultKind::ContainerPause, &ids),
            vec![vec!["unpause", "a", "b"]]
        );
        assert!(container_commands(FaultKind::BridgeKill, &ids).is_empty());
        assert!(container_commands(FaultKind::ContainerKill, &[]).is_empty());
    }

    #[test]
    fn corruption_is_seeded_and_changes_every_byte_it_covers() {
        let a = corruption_patches(100_000, 7);
        assert_eq!(a, corruption_patches(100_000, 7));
        assert_ne!(a, corruption_patches(100_000, 8));
        assert_eq!(a.len(), CORRUPTION_RUNS);
        for w in a.windows(2) {
            assert!(w[0].0 + CORRUPTION_RUN <= w[1].0, "runs overlap: {a:?}");
        }
        for (off, masks) in &a {
            assert!(off + masks.len() as u64 <= 100_000);
            assert!(masks.iter().all(|m| *m != 0));
        }
        // Small stores: one run covering what there is; empty: nothing.
        let small = corruption_patches(10, 1);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].0, 0);
        assert_eq!(small[0].1.len(), 10);
        assert!(corruption_patches(0, 1).is_empty());
        assert_eq!(corruption_patches(200, 3).len(), 3);
    }

    #[test]
    fn targets_become_label_filters() {
        assert_eq!(
            target_labels(Some("docs")),
            vec!["mesh-bridge.service=docs"]
        );
        assert_eq!(target_labels(Some("tier=db")), vec!["tier=db"]);
        assert_eq!(target_labels(None), vec!["mesh-bridge.service"]);
    }
}
