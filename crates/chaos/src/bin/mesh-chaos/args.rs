//! The command line: one subcommand per fault, with its flags.

use crate::*;

/// Label on every container `registration-flood` starts.
pub(crate) const FLOOD_LABEL: &str = "mesh-chaos.flood=1";
/// Limit of one docker call that should return at once (kill, start, inspect, run -d).
pub(crate) const QUICK: Duration = Duration::from_secs(20);
/// Limit of a `docker restart`: its stop grace, then the start.
pub(crate) const RESTART: Duration =
    Duration::from_secs(QUICK.as_secs() + mesh_chaos::faults::deploy::STOP_GRACE_S as u64);
/// Most containers one flood starts.
pub(crate) const MAX_FLOOD: u32 = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-chaos",
    version,
    about = "Inject faults into a mesh-bridge deployment",
    long_about = "Inject faults into a mesh-bridge deployment (docs/DESIGN.md section 4).\n\n\
        Every fault takes --dry-run: it prints exactly what it would do and changes nothing.\n\
        Docker commands go to the engine of DOCKER_HOST, or --docker-host.",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// Print what would be done and change nothing.
    #[arg(long, global = true)]
    pub(crate) dry_run: bool,
    /// Engine to act on (default: the docker CLI's, i.e. DOCKER_HOST).
    #[arg(long, global = true, value_name = "HOST")]
    pub(crate) docker_host: Option<String>,
    #[command(subcommand)]
    pub(crate) fault: Fault,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Fault {
    /// SIGKILL containers chosen by label (started again after --hold).
    ContainerKill(ContainerArgs),
    /// `docker stop` containers chosen by label (started again after --hold).
    ContainerStop(ContainerArgs),
    /// `docker restart` containers chosen by label.
    ContainerRestart(ContainerArgs),
    /// `docker pause` containers chosen by label (unpaused after --hold).
    ContainerPause(ContainerArgs),
    /// `docker rm --force` containers chosen by label.
    ContainerRemove(ContainerArgs),
    /// kill -9 the bridge container, start it again after --hold.
    BridgeKill(BridgeKillArgs),
    /// Restart the bridge container gracefully (SIGTERM, then start).
    BridgeRestart(BridgeRestartArgs),
    /// Restart the engine the bridge talks to (its DinD container, or only dockerd in it).
    EngineRestart(EngineRestartArgs),
    /// Overwrite bytes of the store at seeded offsets (only while the bridge is down).
    StoreCorrupt(StoreCorruptArgs),
    /// Cut the store to half its length (only while the bridge is down).
    StoreTruncate(StoreArgs),
    /// Listen on a port (a foreign listener in the bridge's range) for --hold.
    PortSquat(PortSquatArgs),
    /// Start --count labelled service containers at once, remove them after --hold.
    RegistrationFlood(FloodArgs),
    /// Drop a share of the bridge's packets to chosen replicas for --hold (iptables).
    NetLoss(NetArgs),
    /// Answer the bridge's connections to chosen replicas with a TCP reset for --hold.
    NetReset(NetArgs),
    /// Drop every packet the bridge sends to chosen replicas for --hold (a black hole).
    NetBlackhole(NetArgs),
    /// Delay every MCP answer of chosen mcp-stub replicas for --hold (its delay mode).
    NetLatency(LatencyArgs),
    /// Anything else: refused with the list of faults.
    #[command(external_subcommand)]
    Other(Vec<String>),
}

/// Which containers a fault picks (each round).
#[derive(Debug, Args)]
pub(crate) struct Pick {
    /// Containers to choose from: label `K=V` (or `K`); repeatable, all must match.
    #[arg(long, required = true)]
    pub(crate) label: Vec<String>,
    /// How many of the matching containers.
    #[arg(long, conflicts_with = "fraction")]
    pub(crate) count: Option<u32>,
    /// Or which fraction of them.
    #[arg(long)]
    pub(crate) fraction: Option<f64>,
}

#[derive(Debug, Args)]
pub(crate) struct ContainerArgs {
    #[command(flatten)]
    pub(crate) pick: Pick,
    /// Repeat every interval (humantime, e.g. 10s); once when left out.
    #[arg(long)]
    pub(crate) interval: Option<String>,
    /// How many rounds with --interval.
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: u32,
    /// Seed of the victim choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Heal after this long (start killed/stopped containers, unpause); 0 = never.
    #[arg(long, default_value = "0s")]
    pub(crate) hold: String,
}

#[derive(Debug, Args)]
pub(crate) struct BridgeKillArgs {
    /// Name (or id) of the bridge's container.
    #[arg(long, value_name = "NAME")]
    pub(crate) bridge_container: String,
    /// Start it again after this long; 0 = leave it down.
    #[arg(long, default_value = "2s", value_parser = parse_dur)]
    pub(crate) hold: Duration,
    /// Longest wait for the container to run again after the start.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct BridgeRestartArgs {
    /// Name (or id) of the bridge's container.
    #[arg(long, value_name = "NAME")]
    pub(crate) bridge_container: String,
    /// Longest wait for the container to run again.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct EngineRestartArgs {
    /// Name (or id) of the container running the engine (the DinD container).
    #[arg(long, value_name = "NAME")]
    pub(crate) engine_container: String,
    /// Only SIGTERM dockerd inside the container (its entrypoint starts a new
    /// one) instead of `docker restart` of the whole container.
    #[arg(long)]
    pub(crate) dockerd_only: bool,
    /// After the restart, wait until the engine at this address answers
    /// (`docker -H HOST version`), e.g. tcp://127.0.0.1:23750.
    #[arg(long, value_name = "HOST")]
    pub(crate) wait_engine: Option<String>,
    /// Longest wait for the container (and --wait-engine) to be back.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The bridge's state directory (holding state.db and bridge.lock).
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct StoreCorruptArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Seed of the offsets and bytes overwritten.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

#[derive(Debug, Args)]
pub(crate) struct PortSquatArgs {
    /// Port to listen on.
    #[arg(long)]
    pub(crate) port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub(crate) bind_ip: IpAddr,
    /// How long to hold the port (Ctrl-C releases it early).
    #[arg(long, value_parser = parse_dur)]
    pub(crate) hold: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct FloodArgs {
    /// Image of the flood containers (must be on the engine already).
    #[arg(long)]
    pub(crate) image: String,
    /// Extra label `K=V` for every flood container; repeatable.
    #[arg(long, required = true)]
    pub(crate) label: Vec<String>,
    /// How many containers to start.
    #[arg(long)]
    pub(crate) count: u32,
    /// Remove them after this long (Ctrl-C removes them early); 0 = leave them.
    #[arg(long, default_value = "4s", value_parser = parse_dur)]
    pub(crate) hold: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct VictimArgs {
    #[command(flatten)]
    pub(crate) pick: Pick,
    /// Seed of the victim choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// How long the fault holds; it is always healed (Ctrl-C heals early).
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    pub(crate) hold: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct NetArgs {
    #[command(flatten)]
    pub(crate) victims: VictimArgs,
    /// The replicas' port the bridge dials (their container port).
    #[arg(long, default_value_t = mesh_chaos::stub::DEFAULT_PORT)]
    pub(crate) port: u16,
    /// A container that shares the bridge's network namespace and has
    /// iptables (in the DinD topology: the DinD container). Left out, iptables
    /// runs on this host, for a bridge on the host's network.
    #[arg(long, value_name = "NAME")]
    pub(crate) netns_container: Option<String>,
    /// Engine of --netns-container (default: --docker-host's).
    #[arg(long, value_name = "HOST", requires = "netns_container")]
    pub(crate) netns_host: Option<String>,
    /// Share of packets net-loss drops.
    #[arg(long, default_value_t = faults::NET_LOSS)]
    pub(crate) probability: f64,
}

#[derive(Debug, Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    pub(crate) victims: VictimArgs,
    /// Delay of every MCP answer (whole milliseconds, at most 60 s).
    #[arg(long, default_value = "400ms", value_parser = parse_dur)]
    pub(crate) delay: Duration,
}

pub(crate) fn parse_dur(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write a duration such as 500ms, 10s, 2m)"))
}

/// The faults this CLI runs, in `--help` order.
pub(crate) const CLI_FAULTS: [&str; 16] = [
    "container-kill",
    "container-stop",
    "container-restart",
    "container-pause",
    "container-remove",
    "bridge-kill",
    "bridge-restart",
    "engine-restart",
    "store-corrupt",
    "store-truncate",
    "port-squat",
    "registration-flood",
    "net-loss",
    "net-reset",
    "net-blackhole",
    "net-latency",
];
