//! The scenario model (`tests/scenarios/*.toml`): services with replicas, a
//! fault list, a duration and the thresholds the verdict is judged against.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::faults::FaultKind;
use crate::session::{SessionKind, SessionTarget};

/// One scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name (also the file stem).
    pub name: String,
    /// One line for `scenario list`.
    #[serde(default)]
    pub description: String,
    /// How long faults are injected and probes run (humantime, e.g. "60s").
    pub duration: String,
    /// Quiet time after the last fault before the final checks.
    #[serde(default = "default_settle")]
    pub settle: String,
    /// Default seed when `--seed` is not given.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Part of the short CI suite (`cargo xtask reliability`).
    #[serde(default)]
    pub ci: bool,
    /// The bridge's flags for this scenario.
    #[serde(default)]
    pub bridge: BridgeSpec,
    /// The MCP services started inside the engine.
    pub services: Vec<ServiceSpec>,
    /// Faults, expanded into a seeded schedule.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Pass marks.
    pub thresholds: Thresholds,
    /// Alerts of dashboards/prometheus/rules.yml that the run's Prometheus
    /// must have fired (checked through its API after the run).
    #[serde(default)]
    pub expect_alerts: Vec<String>,
}

fn default_settle() -> String {
    "8s".into()
}
fn default_seed() -> u64 {
    1
}

/// Bridge flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    /// `--ports`.
    #[serde(default = "default_ports")]
    pub ports: String,
    /// `--grace`.
    #[serde(default = "default_grace")]
    pub grace: String,
    /// `--resync`.
    #[serde(default = "default_resync")]
    pub resync: String,
    /// `--leak-cycles`.
    #[serde(default = "default_leak")]
    pub leak_cycles: u32,
    /// `--hold`.
    #[serde(default = "default_hold")]
    pub hold: String,
}

fn default_ports() -> String {
    "11100-11131".into()
}
fn default_grace() -> String {
    "4s".into()
}
fn default_resync() -> String {
    "2s".into()
}
fn default_leak() -> u32 {
    3
}
fn default_hold() -> String {
    "2s".into()
}

impl Default for BridgeSpec {
    fn default() -> Self {
        Self {
            ports: default_ports(),
            grace: default_grace(),
            resync: default_resync(),
            leak_cycles: default_leak(),
            hold: default_hold(),
        }
    }
}

impl BridgeSpec {
    /// The inclusive port ranges.
    pub fn ranges(&self) -> Result<Vec<(u16, u16)>> {
        parse_ranges(&self.ports)
    }
    /// Every port of the ranges.
    pub fn all_ports(&self) -> Result<Vec<u16>> {
        Ok(self
            .ranges()?
            .into_iter()
            .flat_map(|(a, b)| a..=b)
            .collect())
    }
}

/// `11100-11131[,12000-12009]`.
pub fn parse_ranges(s: &str) -> Result<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u16 = a
            .trim()
            .parse()
            .with_context(|| format!("bad port in {part:?}"))?;
        let b: u16 = b
            .trim()
            .parse()
            .with_context(|| format!("bad port in {part:?}"))?;
        ensure!(a <= b && a > 0, "bad range {part:?}");
        out.push((a, b));
    }
    ensure!(!out.is_empty(), "no port range in {s:?}");
    Ok(out)
}

/// A service: `replicas` containers labelled `mesh-bridge.service=name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name (label value and the stub's `serverInfo.name`).
    pub name: String,
    /// Containers behind the service.
    #[serde(default = "one")]
    pub replicas: u32,
    /// How its servers speak MCP, and so how the harness probes it.
    #[serde(default)]
    pub transport: ServiceTransport,
    /// Which MCP server its containers run.
    #[serde(default)]
    pub server: ServerKind,
    /// Also drive it with the official MCP SDK client, every few seconds.
    #[serde(default)]
    pub sdk_client: bool,
}

/// How a scenario's service speaks MCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceTransport {
    /// Streamable HTTP without sessions (the stub's default mode): probed
    /// with one-shot `initialize` and `ping`.
    #[default]
    Stateless,
    /// Streamable HTTP with sessions (`MCP_STUB_STATEFUL=1`), as the SDKs'
    /// servers: probed by session probes.
    Stateful,
    /// A stdio server (`docker run -d -i`, `mesh-bridge.transport=stdio`):
    /// probed by session probes through the bridge's stdio transport.
    Stdio,
}

/// Which MCP server a scenario's service runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// `mcp-stub` (every transport).
    #[default]
    Stub,
    /// The reference server `mcp-server-time` from PyPI, in the mcp-python
    /// image (stdio only).
    McpServerTime,
}

/// `serverInfo.name` of `mcp-server-time`.
pub const MCP_SERVER_TIME_NAME: &str = "mcp-time";

impl ServiceSpec {
    /// How the session probes reach it; `None` for a stateless service.
    pub fn session_target(&self) -> Option<SessionTarget> {
        let kind = match self.transport {
            ServiceTransport::Stateless => return None,
            ServiceTransport::Stateful => SessionKind::Http,
            ServiceTransport::Stdio => SessionKind::Stdio,
        };
        Some(match self.server {
            ServerKind::Stub => SessionTarget::stub(&self.name, kind),
            ServerKind::McpServerTime => SessionTarget {
                service: self.name.clone(),
                kind,
                server: MCP_SERVER_TIME_NAME.into(),
                tool: "get_current_time".into(),
                arguments: serde_json::json!({"timezone": "UTC"}),
            },
        })
    }
}

fn one() -> u32 {
    1
}

/// A fault entry: what, against what, how much, when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The fault.
    pub kind: FaultKind,
    /// Which containers: a service name, or `K=V` label; default every service.
    #[serde(default)]
    pub target: Option<String>,
    /// How many containers (or ports, registrations).
    #[serde(default)]
    pub count: Option<u32>,
    /// Or which fraction of the matching containers.
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Repeat every `interval` (humantime) ...
    #[serde(default)]
    pub interval: Option<String>,
    /// ... at random times instead of a fixed cadence (same number of faults).
    #[serde(default)]
    pub random: bool,
    /// Or at these offsets from the start (humantime each).
    #[serde(default)]
    pub at: Vec<String>,
    /// First injection offset for interval faults (default = interval).
    #[serde(default)]
    pub start: Option<String>,
    /// How long the fault lasts before it is healed (pause, cut, squat, ...).
    #[serde(default)]
    pub hold: Option<String>,
}

/// Pass marks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Minimum availability of services not under fault (0..=1).
    pub availability: f64,
    /// Maximum recovery time after a bridge restart, in ms.
    #[serde(default = "default_recovery")]
    pub recovery_ms: u64,
}

fn default_recovery() -> u64 {
    10_000
}

/// Parses a humantime duration with the key in the error.
pub fn dur(key: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .with_context(|| format!("{key} = {s:?} is not a duration (e.g. \"30s\", \"2m\")"))
}

impl Scenario {
    /// Parses and validates TOML.
    pub fn parse(text: &str) -> Result<Self> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Reads one file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Every `*.toml` of a directory, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for p in paths {
            out.push(Self::load(&p)?);
        }
        Ok(out)
    }

    /// The duration.
    pub fn duration(&self) -> Result<Duration> {
        dur("duration", &self.duration)
    }

    /// The settle time.
    pub fn settle(&self) -> Result<Duration> {
        dur("settle", &self.settle)
    }

    /// Checks everything up front, naming the key.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "name = {:?}: use [a-z0-9_-]",
            self.name
        );
        let d = self.duration()?;
        ensure!(d >= Duration::from_secs(1), "duration must be >= 1s");
        self.settle()?;
        self.bridge.ranges()?;
        for k in [
            ("bridge.grace", &self.bridge.grace),
            ("bridge.resync", &self.bridge.resync),
            ("bridge.hold", &self.bridge.hold),
        ] {
            dur(k.0, k.1)?;
        }
        ensure!(!self.services.is_empty(), "services: at least one service");
        let mut names = std::collections::BTreeSet::new();
        for s in &self.services {
            ensure!(
                names.insert(s.name.clone()),
                "services: {} listed twice",
                s.name
            );
            ensure!(
                s.replicas >= 1 && s.replicas <= 16,
                "services.{}.replicas must be 1-16",
                s.name
            );
            ensure!(
                s.server == ServerKind::Stub || s.transport == ServiceTransport::Stdio,
                "services.{}: server = \"mcp-server-time\" needs transport = \"stdio\" (it is a stdio server)",
                s.name
            );
            ensure!(
                !s.sdk_client || s.transport != ServiceTransport::Stateless,
                "services.{}: sdk_client needs transport = \"stateful\" or \"stdio\" (the SDK client keeps sessions)",
                s.name
            );
        }
        ensure!(
            (0.0..=1.0).contains(&self.thresholds.availability),
            "thresholds.availability must be within 0..1"
        );
        for (i, f) in self.faults.iter().enumerate() {
            if f.count.is_some() && f.fraction.is_some() {
                bail!("faults[{i}]: give count or fraction, not both");
            }
            if let Some(fr) = f.fraction {
                ensure!(
                    fr > 0.0 && fr <= 1.0,
                    "faults[{i}].fraction must be in (0, 1]"
                );
            }
            if f.interval.is_none() && f.at.is_empty() {
                bail!("faults[{i}] ({}): give interval or at", f.kind);
            }
            if let Some(iv) = &f.interval {
                ensure!(
                    dur("interval", iv)? >= Duration::from_millis(100),
                    "faults[{i}].interval must be >= 100ms"
                );
            }
            for a in &f.at {
                ensure!(dur("at", a)? < d, "faults[{i}].at {a} is past the duration");
            }
            if let Some(h) = &f.hold {
                dur("hold", h)?;
            }
            if let Some(s) = &f.start {
                dur("start", s)?;
            }
        }
        Ok(())
    }

    /// Total containers the scenario starts.
    pub fn containers(&self) -> u32 {
        self.services.iter().map(|s| s.replicas).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
name = "t"
duration = "30s"
[[services]]
name = "docs"
replicas = 2
[[faults]]
kind = "container-kill"
target = "docs"
count = 1
interval = "5s"
[thresholds]
availability = 0.99
recovery_ms = 5000
"#;

    #[test]
    fn parses_and_defaults() {
        let s = Scenario::parse(TEXT).expect("parse");
        assert_eq!(s.seed, 1);
        assert_eq!(s.containers(), 2);
        assert_eq!(s.faults[0].kind, FaultKind::ContainerKill);
        assert_eq!(s.bridge.all_ports().expect("ports").len(), 32);
    }

    #[test]
    fn session_services_parse_and_bad_combinations_are_refused() {
        let text = TEXT.replace(
            "replicas = 2",
            "replicas = 2\ntransport = \"stdio\"\nserver = \"mcp-server-time\"\nsdk_client = true",
        );
        let s = Scenario::parse(&text).expect("parse");
        let t = s.services[0].session_target().expect("a session service");
        assert_eq!(
            (t.kind, t.server.as_str()),
            (SessionKind::Stdio, MCP_SERVER_TIME_NAME)
        );
        let stateful = Scenario::parse(
            &TEXT.replace("replicas = 2", "replicas = 2\ntransport = \"stateful\""),
        )
        .expect("parse");
        assert_eq!(
            stateful.services[0]
                .session_target()
                .expect("sessions")
                .tool,
            "whoami"
        );
        assert!(
            Scenario::parse(TEXT).expect("parse").services[0]
                .session_target()
                .is_none()
        );
        let e = Scenario::parse(&text.replace("\"stdio\"", "\"stateful\"")).unwrap_err();
        assert!(
            format!("{e:#}").contains("needs transport = \"stdio\""),
            "{e:#}"
        );
        let e = Scenario::parse(&TEXT.replace("replicas = 2", "replicas = 2\nsdk_client = true"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("sdk_client"), "{e:#}");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Scenario::parse(&TEXT.replace("0.99", "1.5")).is_err());
        assert!(Scenario::parse(&TEXT.replace("count = 1", "count = 1\nfraction = 0.5")).is_err());
        assert!(Scenario::parse(&TEXT.replace("interval = \"5s\"", "")).is_err());
        assert!(Scenario::parse(&TEXT.replace("container-kill", "nuke")).is_err());
    }
}
