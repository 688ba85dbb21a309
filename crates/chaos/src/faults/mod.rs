//! Faults, one meaning each, shared by `mesh-chaos` (the CLI) and the
//! scenario runner (`cargo xtask scenario`), which only schedules and
//! records them. One module per family:
//! - [`docker`]: the docker CLI against one engine (`docker -H <host>`);
//! - [`container`]: container faults on victims chosen by label;
//! - [`network`]: iptables rules between the bridge and replicas, and the
//!   stub's delay mode for `net-latency`;
//! - [`store`]: damage to the bridge's store (`store-corrupt`, `store-truncate`);
//! - [`deploy`]: the deployment faults' docker command lines;
//! - [`target`]: the deployment the deployment faults act on (bridge kill,
//!   engine restart or cut, squats, reservations).

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod container;
pub mod deploy;
pub mod docker;
pub mod network;
pub mod store;
pub mod target;

pub use container::{container_commands, container_heal_commands, run_all, target_labels};
pub use docker::{Container, Docker};
pub use mesh_bridge::contract::labels::SERVICE as SERVICE_LABEL;
pub use network::{NET_LATENCY_MS, NET_LOSS, STUB_BIN, delay_command};
pub use store::StoreDamage;
pub use target::{StoreCheck, Target};

/// Label of every container the harness starts.
pub const TEST_LABEL: &str = "mesh-bridge.test";

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
}
