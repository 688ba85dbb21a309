//! `mesh-chaos <fault> [flags] [--dry-run]`: the harness's faults against any
//! deployment (docs/DESIGN.md section 4).
//!
//! Container faults pick victims by label (`--label K=V [--count N |
//! --fraction F]`); deployment faults name what they act on: the bridge or
//! engine container, the bridge's state directory, a port, an image to flood
//! with. Docker commands go to the engine of `DOCKER_HOST`, or
//! `--docker-host`. With `--dry-run` every fault prints exactly what it would
//! do and changes nothing (it may still read: `docker ps` / `inspect`, the
//! store's size, whether the state directory is locked).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use mesh_bridge::contract::files;
use mesh_chaos::faults::store::Said;
use mesh_chaos::faults::{self, Docker, FaultKind, SERVICE_LABEL, StoreDamage};
use mesh_chaos::schedule;

/// Label on every container `registration-flood` starts.
const FLOOD_LABEL: &str = "mesh-chaos.flood=1";
/// Limit of one docker call that should return at once (kill, start, inspect, run -d).
const QUICK: Duration = Duration::from_secs(20);
/// Seconds `docker restart` / `stop` give a container before SIGKILL.
const STOP_GRACE_S: u32 = 10;
/// Most containers one flood starts.
const MAX_FLOOD: u32 = 1000;

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
struct Cli {
    /// Print what would be done and change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Engine to act on (default: the docker CLI's, i.e. DOCKER_HOST).
    #[arg(long, global = true, value_name = "HOST")]
    docker_host: Option<String>,
    #[command(subcommand)]
    fault: Fault,
}

#[derive(Debug, Subcommand)]
enum Fault {
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
struct Pick {
    /// Containers to choose from: label `K=V` (or `K`); repeatable, all must match.
    #[arg(long, required = true)]
    label: Vec<String>,
    /// How many of the matching containers.
    #[arg(long, conflicts_with = "fraction")]
    count: Option<u32>,
    /// Or which fraction of them.
    #[arg(long)]
    fraction: Option<f64>,
}

#[derive(Debug, Args)]
struct ContainerArgs {
    #[command(flatten)]
    pick: Pick,
    /// Repeat every interval (humantime, e.g. 10s); once when left out.
    #[arg(long)]
    interval: Option<String>,
    /// How many rounds with --interval.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Seed of the victim choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Heal after this long (start killed/stopped containers, unpause); 0 = never.
    #[arg(long, default_value = "0s")]
    hold: String,
}

#[derive(Debug, Args)]
struct BridgeKillArgs {
    /// Name (or id) of the bridge's container.
    #[arg(long, value_name = "NAME")]
    bridge_container: String,
    /// Start it again after this long; 0 = leave it down.
    #[arg(long, default_value = "2s", value_parser = parse_dur)]
    hold: Duration,
    /// Longest wait for the container to run again after the start.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct BridgeRestartArgs {
    /// Name (or id) of the bridge's container.
    #[arg(long, value_name = "NAME")]
    bridge_container: String,
    /// Longest wait for the container to run again.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct EngineRestartArgs {
    /// Name (or id) of the container running the engine (the DinD container).
    #[arg(long, value_name = "NAME")]
    engine_container: String,
    /// Only SIGTERM dockerd inside the container (its entrypoint starts a new
    /// one) instead of `docker restart` of the whole container.
    #[arg(long)]
    dockerd_only: bool,
    /// After the restart, wait until the engine at this address answers
    /// (`docker -H HOST version`), e.g. tcp://127.0.0.1:23750.
    #[arg(long, value_name = "HOST")]
    wait_engine: Option<String>,
    /// Longest wait for the container (and --wait-engine) to be back.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// The bridge's state directory (holding state.db and bridge.lock).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
struct StoreCorruptArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Seed of the offsets and bytes overwritten.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct PortSquatArgs {
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind_ip: IpAddr,
    /// How long to hold the port (Ctrl-C releases it early).
    #[arg(long, value_parser = parse_dur)]
    hold: Duration,
}

#[derive(Debug, Args)]
struct FloodArgs {
    /// Image of the flood containers (must be on the engine already).
    #[arg(long)]
    image: String,
    /// Extra label `K=V` for every flood container; repeatable.
    #[arg(long, required = true)]
    label: Vec<String>,
    /// How many containers to start.
    #[arg(long)]
    count: u32,
    /// Remove them after this long (Ctrl-C removes them early); 0 = leave them.
    #[arg(long, default_value = "4s", value_parser = parse_dur)]
    hold: Duration,
}

#[derive(Debug, Args)]
struct VictimArgs {
    #[command(flatten)]
    pick: Pick,
    /// Seed of the victim choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long the fault holds; it is always healed (Ctrl-C heals early).
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    hold: Duration,
}

#[derive(Debug, Args)]
struct NetArgs {
    #[command(flatten)]
    victims: VictimArgs,
    /// The replicas' port the bridge dials (their container port).
    #[arg(long, default_value_t = mesh_chaos::stub::DEFAULT_PORT)]
    port: u16,
    /// A container that shares the bridge's network namespace and has
    /// iptables (in the DinD topology: the DinD container). Left out, iptables
    /// runs on this host, for a bridge on the host's network.
    #[arg(long, value_name = "NAME")]
    netns_container: Option<String>,
    /// Engine of --netns-container (default: --docker-host's).
    #[arg(long, value_name = "HOST", requires = "netns_container")]
    netns_host: Option<String>,
    /// Share of packets net-loss drops.
    #[arg(long, default_value_t = faults::NET_LOSS)]
    probability: f64,
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[command(flatten)]
    victims: VictimArgs,
    /// Delay of every MCP answer (whole milliseconds, at most 60 s).
    #[arg(long, default_value = "400ms", value_parser = parse_dur)]
    delay: Duration,
}

fn parse_dur(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write a duration such as 500ms, 10s, 2m)"))
}

/// The faults this CLI runs, in `--help` order.
const CLI_FAULTS: [&str; 16] = [
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

/// Runs docker commands, or only prints them with --dry-run.
#[derive(Debug)]
struct Ctx {
    docker: Docker,
    dry: bool,
}

impl Ctx {
    /// The command line as it would be typed.
    fn show(&self, args: &[&str]) -> String {
        let mut s = String::from("docker");
        if let Some(h) = &self.docker.host {
            s.push_str(" -H ");
            s.push_str(h);
        }
        for a in args {
            s.push(' ');
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'$|;&<>()".contains(c))
            {
                s.push('\'');
                s.push_str(&a.replace('\'', "'\\''"));
                s.push('\'');
            } else {
                s.push_str(a);
            }
        }
        s
    }

    /// A command that changes something: printed, and run unless dry.
    async fn act(&self, args: &[&str], limit: Duration) -> Result<String> {
        if self.dry {
            println!("  would run: {}", self.show(args));
            return Ok(String::new());
        }
        println!("  run: {}", self.show(args));
        self.docker.run_timeout(args, limit).await
    }

    /// A plan line that is not a docker command.
    fn step(&self, what: &str) {
        if self.dry {
            println!("  would {what}");
        } else {
            println!("  {what}");
        }
    }

    /// `docker inspect` state of a container (read-only, also in dry runs),
    /// with an error that says how to find the right name.
    async fn container_state(&self, name: &str, flag: &str) -> Result<String> {
        match self
            .docker
            .run_timeout(
                &[
                    "inspect",
                    "--type",
                    "container",
                    "--format",
                    "{{.State.Status}}",
                    name,
                ],
                QUICK,
            )
            .await
        {
            Ok(s) => Ok(s.trim().to_string()),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains("No such") || msg.contains("no such") {
                    bail!(
                        "no container {name:?} on the engine ({}); check {flag} against `docker ps -a`",
                        self.engine_name()
                    )
                }
                Err(e).with_context(|| {
                    format!(
                        "cannot inspect container {name:?}: is the engine ({}) reachable? \
                         set DOCKER_HOST or --docker-host",
                        self.engine_name()
                    )
                })
            }
        }
    }

    fn engine_name(&self) -> String {
        match &self.docker.host {
            Some(h) => h.clone(),
            None => match std::env::var("DOCKER_HOST") {
                Ok(h) if !h.is_empty() => format!("DOCKER_HOST={h}"),
                _ => "the docker CLI's default".into(),
            },
        }
    }

    /// Waits (at most `limit`) until the container runs again.
    async fn wait_running(&self, name: &str, flag: &str, limit: Duration) -> Result<()> {
        if self.dry {
            println!(
                "  would wait up to {} for {name} to be running",
                humantime::format_duration(limit)
            );
            return Ok(());
        }
        let start = Instant::now();
        loop {
            let state = self.container_state(name, flag).await?;
            if state == "running" {
                println!(
                    "  {name} is running after {} ms",
                    start.elapsed().as_millis()
                );
                return Ok(());
            }
            if start.elapsed() >= limit {
                bail!(
                    "{name} is still {state:?} {} after the start; see `docker logs {name}` \
                     (or raise --timeout)",
                    humantime::format_duration(limit)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Sleeps `d`, or less on Ctrl-C; true when interrupted.
async fn hold_for(d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = tokio::signal::ctrl_c() => {
            println!("  interrupted: healing now");
            true
        }
    }
}

fn header(ctx: &Ctx, fault: impl std::fmt::Display, what: &str) {
    println!("{}{fault}: {what}", if ctx.dry { "dry run: " } else { "" });
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        docker: Docker {
            host: cli.docker_host.clone(),
        },
        dry: cli.dry_run,
    };
    match cli.fault {
        Fault::ContainerKill(a) => containers(&ctx, FaultKind::ContainerKill, a).await,
        Fault::ContainerStop(a) => containers(&ctx, FaultKind::ContainerStop, a).await,
        Fault::ContainerRestart(a) => containers(&ctx, FaultKind::ContainerRestart, a).await,
        Fault::ContainerPause(a) => containers(&ctx, FaultKind::ContainerPause, a).await,
        Fault::ContainerRemove(a) => containers(&ctx, FaultKind::ContainerRemove, a).await,
        Fault::BridgeKill(a) => bridge_kill(&ctx, a).await,
        Fault::BridgeRestart(a) => bridge_restart(&ctx, a).await,
        Fault::EngineRestart(a) => engine_restart(&ctx, a).await,
        Fault::StoreCorrupt(a) => store_damage(
            &ctx,
            &a.store.state_dir,
            StoreDamage::Corrupt { seed: a.seed },
        ),
        Fault::StoreTruncate(a) => store_damage(&ctx, &a.state_dir, StoreDamage::Truncate),
        Fault::PortSquat(a) => port_squat(&ctx, a).await,
        Fault::RegistrationFlood(a) => flood(&ctx, a).await,
        Fault::NetLoss(a) => net(&ctx, FaultKind::NetLoss, a).await,
        Fault::NetReset(a) => net(&ctx, FaultKind::NetReset, a).await,
        Fault::NetBlackhole(a) => net(&ctx, FaultKind::NetBlackhole, a).await,
        Fault::NetLatency(a) => latency(&ctx, a).await,
        Fault::Other(argv) => {
            let name = argv.first().map(String::as_str).unwrap_or("");
            let list = CLI_FAULTS.join(", ");
            match FaultKind::parse(name) {
                Some(k) => bail!(
                    "fault {k} runs only in scenarios (cargo xtask scenario run); \
                     on the command line use one of: {list}"
                ),
                None => bail!("unknown fault {name:?}; use one of: {list} (see mesh-chaos --help)"),
            }
        }
    }
}

/// The five container faults, by label, count or fraction, seeded.
async fn containers(ctx: &Ctx, kind: FaultKind, cli: ContainerArgs) -> Result<()> {
    if let Some(f) = cli.pick.fraction {
        ensure!(f > 0.0 && f <= 1.0, "--fraction must be in (0, 1]");
    }
    let interval = match &cli.interval {
        Some(i) => Some(mesh_chaos::scenario::dur("--interval", i)?),
        None => None,
    };
    let hold = mesh_chaos::scenario::dur("--hold", &cli.hold)?;
    let rounds = if interval.is_some() {
        cli.rounds.clamp(1, 10_000)
    } else {
        1
    };
    let docker = &ctx.docker;
    let mut seeds = rand_seeds(cli.seed, rounds);
    for round in 0..rounds {
        let containers = docker.list(&cli.pick.label).await?;
        let running: Vec<_> = containers
            .into_iter()
            .filter(|c| c.state == "running" || kind == FaultKind::ContainerRemove)
            .collect();
        let victims = schedule::pick(&running, cli.pick.count, cli.pick.fraction, seeds.remove(0));
        let ids: Vec<String> = victims.iter().map(|c| c.id.clone()).collect();
        let names: Vec<&str> = victims.iter().map(|c| c.name.as_str()).collect();
        let cmds = faults::container_commands(kind, &ids);
        let heal = faults::container_heal_commands(kind, &ids);
        println!(
            "round {}: {} {} of {} matching [{}]",
            round + 1,
            kind,
            victims.len(),
            running.len(),
            names.join(", ")
        );
        for c in &cmds {
            println!(
                "  {}docker {}",
                if ctx.dry { "would run: " } else { "" },
                c.join(" ")
            );
        }
        if !hold.is_zero() {
            for c in &heal {
                println!(
                    "  {}after {}: docker {}",
                    if ctx.dry { "would run " } else { "" },
                    humantime::format_duration(hold),
                    c.join(" ")
                );
            }
        }
        if !ctx.dry {
            faults::run_all(docker, &cmds).await?;
            if !hold.is_zero() && !heal.is_empty() {
                hold_for(hold).await;
                faults::run_all(docker, &heal).await?;
            }
        }
        if round + 1 < rounds
            && let Some(i) = interval
        {
            if ctx.dry {
                println!("  would wait {}", humantime::format_duration(i));
            } else {
                tokio::time::sleep(i.saturating_sub(hold).max(Duration::from_millis(1))).await;
            }
        }
    }
    Ok(())
}

/// The running replicas a network fault hits, chosen as the scenarios do.
async fn victims(ctx: &Ctx, a: &VictimArgs) -> Result<Vec<faults::Container>> {
    if let Some(f) = a.pick.fraction {
        ensure!(f > 0.0 && f <= 1.0, "--fraction must be in (0, 1]");
    }
    ensure!(
        !a.hold.is_zero(),
        "--hold must be longer than 0 (e.g. --hold 10s): the fault is healed when it ends"
    );
    let running: Vec<_> = ctx
        .docker
        .list(&a.pick.label)
        .await?
        .into_iter()
        .filter(|c| c.state == "running")
        .collect();
    ensure!(
        !running.is_empty(),
        "no running container matches {:?} on the engine ({}); check --label against `docker ps`",
        a.pick.label,
        ctx.engine_name()
    );
    Ok(schedule::pick(
        &running,
        a.pick.count,
        a.pick.fraction,
        a.seed,
    ))
}

/// Where a network fault's iptables rules go.
struct Netns {
    /// `docker exec` target and its engine, or None for this host.
    container: Option<(Docker, String)>,
}

impl Netns {
    /// The iptables command line itself.
    fn iptables(op: &str, rule: &[String]) -> Vec<String> {
        let mut v: Vec<String> = ["iptables", op, "OUTPUT"].map(String::from).to_vec();
        v.extend(rule.iter().cloned());
        v
    }

    /// The whole command line as it would be typed.
    fn show(&self, op: &str, rule: &[String]) -> String {
        let ipt = Self::iptables(op, rule).join(" ");
        match &self.container {
            Some((d, name)) => match &d.host {
                Some(h) => format!("docker -H {h} exec {name} {ipt}"),
                None => format!("docker exec {name} {ipt}"),
            },
            None => ipt,
        }
    }

    async fn run(&self, op: &str, rule: &[String]) -> Result<()> {
        println!("  run: {}", self.show(op, rule));
        let ipt = Self::iptables(op, rule);
        match &self.container {
            Some((d, name)) => {
                let mut args = vec!["exec", name.as_str()];
                args.extend(ipt.iter().map(String::as_str));
                d.run_timeout(&args, QUICK).await.map(drop)
            }
            None => {
                let out = tokio::process::Command::new(&ipt[0])
                    .args(&ipt[1..])
                    .output()
                    .await
                    .context(
                        "cannot run iptables on this host (is it installed? are we root?); \
                         or pass --netns-container",
                    )?;
                ensure!(
                    out.status.success(),
                    "{} failed: {}",
                    ipt.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            }
        }
    }
}

/// net-loss, net-reset, net-blackhole: an iptables OUTPUT rule in the
/// bridge's network namespace per chosen replica, deleted after the hold
/// (also when adding a later rule failed, or on Ctrl-C).
async fn net(ctx: &Ctx, kind: FaultKind, a: NetArgs) -> Result<()> {
    ensure!(
        a.probability > 0.0 && a.probability <= 1.0,
        "--probability must be in (0, 1]"
    );
    let chosen = victims(ctx, &a.victims).await?;
    let hold = humantime::format_duration(a.victims.hold);
    header(
        ctx,
        kind,
        &format!(
            "{} replica(s) for {hold}: {}",
            chosen.len(),
            chosen
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let ns = Netns {
        container: a.netns_container.clone().map(|n| {
            let host = a.netns_host.clone().or_else(|| ctx.docker.host.clone());
            (Docker { host }, n)
        }),
    };
    let mut rules = Vec::new();
    for c in &chosen {
        let ip = ctx.docker.address_of(&c.id).await?;
        rules.push(kind.net_rule(&ip, a.port, a.probability));
    }
    if ctx.dry {
        for r in &rules {
            println!("  would run: {}", ns.show("-I", r));
        }
        println!("  would wait {hold}, then delete each rule:");
        for r in &rules {
            println!("  would run: {}", ns.show("-D", r));
        }
        return Ok(());
    }
    let mut added = Vec::new();
    let mut failure = None;
    for r in &rules {
        match ns.run("-I", r).await {
            Ok(()) => added.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        hold_for(a.victims.hold).await;
    }
    let mut heal_failed = Vec::new();
    for r in added {
        if let Err(e) = ns.run("-D", r).await {
            heal_failed.push(format!("{e:#}"));
        }
    }
    if !heal_failed.is_empty() {
        bail!(
            "could not delete {} rule(s); delete them by hand (`iptables -D OUTPUT ...` as printed above): {}",
            heal_failed.len(),
            heal_failed.join("; ")
        );
    }
    match failure {
        Some(e) => Err(e.context("adding a rule failed; the rules added before it were deleted")),
        None => Ok(()),
    }
}

/// net-latency: the mcp-stub's delay mode on each chosen replica, ended after the hold.
async fn latency(ctx: &Ctx, a: LatencyArgs) -> Result<()> {
    let ms = u64::try_from(a.delay.as_millis()).unwrap_or(u64::MAX);
    ensure!(
        ms > 0 && ms <= mesh_chaos::stub::MAX_DELAY_MS,
        "--delay must be between 1ms and {}ms",
        mesh_chaos::stub::MAX_DELAY_MS
    );
    let chosen = victims(ctx, &a.victims).await?;
    let hold = humantime::format_duration(a.victims.hold);
    header(
        ctx,
        FaultKind::NetLatency,
        &format!("{ms} ms on {} replica(s) for {hold}", chosen.len()),
    );
    let mut set = Vec::new();
    let mut failure = None;
    for c in &chosen {
        let argv = faults::delay_command(&c.id, ms);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        match ctx.act(&args, QUICK).await {
            Ok(_) => set.push(c),
            Err(e) => {
                failure = Some(e.context(format!(
                    "{} has no mcp-stub delay mode (net-latency needs the mcp-stub image)",
                    c.name
                )));
                break;
            }
        }
    }
    if failure.is_none() {
        if ctx.dry {
            println!("  would wait {hold}");
        } else {
            hold_for(a.victims.hold).await;
        }
    }
    for c in set {
        let argv = faults::delay_command(&c.id, 0);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        ctx.act(&args, QUICK).await?;
    }
    failure.map_or(Ok(()), Err)
}

/// One victim seed a round, from the run's seed.
fn rand_seeds(seed: u64, rounds: u32) -> Vec<u64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..rounds).map(|_| rng.random()).collect()
}

async fn bridge_kill(ctx: &Ctx, a: BridgeKillArgs) -> Result<()> {
    let name = a.bridge_container.as_str();
    let flag = "--bridge-container";
    header(ctx, FaultKind::BridgeKill, &format!("kill -9 {name}"));
    let state = ctx.container_state(name, flag).await?;
    ensure!(
        state == "running",
        "bridge container {name} is {state}, not running: nothing to kill \
         (start it with `docker start {name}`)"
    );
    ctx.act(&["kill", "--signal", "KILL", name], QUICK).await?;
    if a.hold.is_zero() {
        println!(
            "  hold 0: {name} stays down; start it with `{}`",
            ctx.show(&["start", name])
        );
        return Ok(());
    }
    if ctx.dry {
        println!("  would wait {}", humantime::format_duration(a.hold));
    } else {
        println!(
            "  holding {name} down for {}",
            humantime::format_duration(a.hold)
        );
        hold_for(a.hold).await;
    }
    ctx.act(&["start", name], QUICK).await?;
    ctx.wait_running(name, flag, a.timeout).await
}

async fn bridge_restart(ctx: &Ctx, a: BridgeRestartArgs) -> Result<()> {
    let name = a.bridge_container.as_str();
    let flag = "--bridge-container";
    header(
        ctx,
        "bridge-restart",
        &format!("restart {name} (SIGTERM, then start)"),
    );
    ctx.container_state(name, flag).await?;
    let grace = STOP_GRACE_S.to_string();
    ctx.act(
        &["restart", "--time", &grace, name],
        QUICK + Duration::from_secs(STOP_GRACE_S.into()),
    )
    .await?;
    ctx.wait_running(name, flag, a.timeout).await
}

async fn engine_restart(ctx: &Ctx, a: EngineRestartArgs) -> Result<()> {
    let name = a.engine_container.as_str();
    let flag = "--engine-container";
    let how = if a.dockerd_only {
        format!("SIGTERM dockerd inside {name}")
    } else {
        format!("restart the engine container {name}")
    };
    header(ctx, FaultKind::EngineRestart, &how);
    let state = ctx.container_state(name, flag).await?;
    if a.dockerd_only {
        ensure!(
            state == "running",
            "engine container {name} is {state}, not running: no dockerd to restart \
             (start it with `docker start {name}`, or drop --dockerd-only)"
        );
        ctx.act(
            &[
                "exec",
                name,
                "sh",
                "-c",
                "kill -TERM \"$(cat /var/run/docker.pid)\"",
            ],
            QUICK,
        )
        .await
        .with_context(|| {
            format!("is {name} a DinD container with dockerd's pid in /var/run/docker.pid?")
        })?;
    } else {
        let grace = STOP_GRACE_S.to_string();
        ctx.act(
            &["restart", "--time", &grace, name],
            QUICK + Duration::from_secs(STOP_GRACE_S.into()),
        )
        .await?;
    }
    let start = Instant::now();
    ctx.wait_running(name, flag, a.timeout).await?;
    if let Some(host) = &a.wait_engine {
        let inner = Docker::at(host.clone());
        if ctx.dry {
            println!(
                "  would wait up to {} for `docker -H {host} version` to answer",
                humantime::format_duration(a.timeout)
            );
            return Ok(());
        }
        // dockerd may still be the old one for a moment after a SIGTERM.
        tokio::time::sleep(Duration::from_millis(500)).await;
        loop {
            let left = a.timeout.saturating_sub(start.elapsed());
            let last = match inner
                .run_timeout(
                    &["version", "--format", "{{.Server.Version}}"],
                    left.min(QUICK),
                )
                .await
            {
                Ok(v) => {
                    println!(
                        "  engine {host} answers (version {}) after {} ms",
                        v.trim(),
                        start.elapsed().as_millis()
                    );
                    return Ok(());
                }
                Err(e) => e,
            };
            if start.elapsed() >= a.timeout {
                return Err(last).with_context(|| {
                    format!(
                        "the engine at {host} did not answer within {}; see `docker logs {name}` \
                         (or raise --timeout)",
                        humantime::format_duration(a.timeout)
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// `store-corrupt` / `store-truncate`: [`faults::store::damage`], its
/// findings and steps printed (steps as "would ..." in a dry run).
fn store_damage(ctx: &Ctx, dir: &Path, how: StoreDamage) -> Result<()> {
    let (kind, what) = match how {
        StoreDamage::Corrupt { seed } => (FaultKind::StoreCorrupt, format!("damage (seed {seed})")),
        StoreDamage::Truncate => (FaultKind::StoreTruncate, "cut inside its first page".into()),
    };
    header(
        ctx,
        kind,
        &format!("{what} {}", dir.join(files::STORE).display()),
    );
    faults::store::damage(dir, how, ctx.dry, &mut |said| match said {
        Said::Found(f) => println!("  {f}"),
        Said::Does(d) => ctx.step(&d),
    })
}

async fn port_squat(ctx: &Ctx, a: PortSquatArgs) -> Result<()> {
    ensure!(a.port != 0, "--port must be a port number in 1..=65535");
    ensure!(
        !a.hold.is_zero(),
        "--hold must be longer than 0 (e.g. --hold 30s): the port is released when it ends"
    );
    let addr = SocketAddr::new(a.bind_ip, a.port);
    let hold = humantime::format_duration(a.hold);
    header(
        ctx,
        FaultKind::PortSquat,
        &format!("listen on {addr} for {hold}"),
    );
    if ctx.dry {
        println!("  would listen on {addr} (accepting and closing connections) for {hold}");
        println!("  would release {addr}");
        return Ok(());
    }
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{addr} is already in use (another listener holds it); pick a free port of the range"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "cannot listen on {addr} ({e}): --bind-ip {} is not an address of this host",
            a.bind_ip
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {addr} ({e}); ports below 1024 need privileges"
        ),
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    println!(
        "  listening on {addr} for {hold} (pid {})",
        std::process::id()
    );
    let mut accepted = 0u64;
    let deadline = tokio::time::sleep(a.hold);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => {
                println!("  interrupted");
                break;
            }
            r = listener.accept() => {
                if let Ok((conn, _)) = r {
                    accepted += 1;
                    drop(conn);
                }
            }
        }
    }
    drop(listener);
    println!("  released {addr} ({accepted} connections accepted and closed)");
    Ok(())
}

async fn flood(ctx: &Ctx, a: FloodArgs) -> Result<()> {
    ensure!(
        (1..=MAX_FLOOD).contains(&a.count),
        "--count must be in 1..={MAX_FLOOD}"
    );
    for l in &a.label {
        ensure!(
            l.split_once('=').is_some_and(|(k, _)| !k.is_empty()),
            "--label {l:?} is not K=V (e.g. --label mesh-bridge.test=flood)"
        );
    }
    header(
        ctx,
        FaultKind::RegistrationFlood,
        &format!("start {} containers of {}", a.count, a.image),
    );
    match ctx
        .docker
        .run_timeout(
            &["image", "inspect", "--format", "{{.Id}}", &a.image],
            QUICK,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if format!("{e:#}").contains("No such") => bail!(
            "image {} is not on the engine ({}); pull or build it first (docker pull {})",
            a.image,
            ctx.engine_name(),
            a.image
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "is the engine ({}) reachable? set DOCKER_HOST or --docker-host",
                    ctx.engine_name()
                )
            });
        }
    }
    let mut started: Vec<String> = Vec::new();
    for i in 1..=a.count {
        let service = format!("{SERVICE_LABEL}=flood-{i}");
        let mut args = vec!["run", "-d", "--label", &service];
        for l in &a.label {
            args.extend(["--label", l.as_str()]);
        }
        args.extend(["--label", FLOOD_LABEL, &a.image]);
        match ctx.act(&args, QUICK).await {
            Ok(id) => {
                if !ctx.dry {
                    started.push(id.trim().to_string());
                }
            }
            Err(e) => {
                if !started.is_empty() {
                    eprintln!(
                        "mesh-chaos: flood container {i} failed; removing the {} started",
                        started.len()
                    );
                    let mut rm = vec!["rm", "--force"];
                    rm.extend(started.iter().map(String::as_str));
                    if let Err(e2) = ctx.act(&rm, QUICK * 3).await {
                        eprintln!("mesh-chaos: cleanup failed too: {e2:#}");
                    }
                }
                return Err(e).context(format!("starting flood container {i} of {}", a.count));
            }
        }
    }
    let cleanup = format!(
        "{} $({})",
        ctx.show(&["rm", "--force"]),
        ctx.show(&["ps", "-aq", "--filter", &format!("label={FLOOD_LABEL}")])
    );
    if a.hold.is_zero() {
        println!("  hold 0: the flood containers stay; remove them with: {cleanup}");
        return Ok(());
    }
    if ctx.dry {
        println!("  would wait {}", humantime::format_duration(a.hold));
        println!(
            "  would run: {}",
            ctx.show(&["rm", "--force", "<the containers started>"])
        );
        return Ok(());
    }
    println!(
        "  started {}; holding for {}",
        started.len(),
        humantime::format_duration(a.hold)
    );
    hold_for(a.hold).await;
    let mut rm = vec!["rm", "--force"];
    rm.extend(started.iter().map(String::as_str));
    ctx.act(&rm, QUICK * 3)
        .await
        .with_context(|| format!("removing the flood containers; remove them with: {cleanup}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-chaos: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
