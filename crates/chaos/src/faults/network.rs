//! Network faults between the bridge and chosen replicas: iptables rules in
//! the bridge's network namespace (this kernel has no netem), and the
//! stub's delay mode for `net-latency`.

use super::FaultKind;

/// Share of packets `net-loss` drops in scenarios.
pub const NET_LOSS: f64 = 0.3;

/// Latency `net-latency` adds in scenarios: well below the probes' timeout,
/// so clients see slower answers and no failure.
pub const NET_LATENCY_MS: u64 = 400;

/// The stub's binary inside its image (`xtask/images/mcp-stub/Dockerfile`).
pub use mesh_bridge::contract::images::STUB_BIN;

/// `docker exec` arguments that set the delay of the stub in container `id`
/// (0 ends it).
pub fn delay_command(id: &str, ms: u64) -> Vec<String> {
    ["exec", id, STUB_BIN, "--delay", &ms.to_string()]
        .map(String::from)
        .to_vec()
}

impl FaultKind {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
