//! `cargo xtask scenario list|run NAME [--seed N] [--duration D] [--engine dind|host]`.
//!
//! Topology (docs/DESIGN.md section 5): a DinD container started with testcontainers
//! (`--privileged` is refused by this engine, so the privileged-equivalent flags
//! of `xtask/images/dind/README.md` are used when it is), the bridge container in
//! the DinD container's network namespace, stub services inside the inner
//! engine, the mesh range and the bridge API published by the DinD container to
//! host loopback. `--engine host` keeps the same code path with the services on
//! the host engine (the bridge then mounts the host's docker socket).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_bridge::contract::images;
use mesh_chaos::faults::{self, Docker, FaultKind, StoreCheck, Target};
use mesh_chaos::invariants::{self, Marks};
use mesh_chaos::metrics::HarnessMetrics;
use mesh_chaos::probe::{self, FaultRecord, PortMap, Recorder};
use mesh_chaos::report;
use mesh_chaos::scenario::{Scenario, dur};
use mesh_chaos::schedule::{self, Planned};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{CgroupnsMode, ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The DinD image (built by `cargo xtask images`) as testcontainers names it: (repository, tag).
fn dind_image() -> (&'static str, &'static str) {
    images::DIND
        .split_once(':')
        .unwrap_or((images::DIND, "latest"))
}

/// The bridge image the scenarios run (`--bridge-image` overrides it).
pub const BRIDGE_IMAGE: &str = images::BRIDGE;
/// The MCP stub image.
pub const STUB_IMAGE: &str = images::STUB;
/// Label value every harness container carries.
pub const TEST_VALUE: &str = "reliability";

/// Which engine runs the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Inside a DinD container (the design's topology).
    Dind,
    /// The host engine itself (fallback; engine faults are skipped).
    Host,
}

/// `scenario` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the scenarios of tests/scenarios.
    List,
    /// Run one scenario.
    Run(RunArgs),
}

/// `scenario run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Scenario name (file stem in tests/scenarios).
    pub name: String,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the duration (humantime, e.g. 20m).
    #[arg(long)]
    pub duration: Option<String>,
    /// Where the services run.
    #[arg(long, value_enum, default_value_t = Engine::Dind)]
    pub engine: Engine,
    /// The bridge image to test (default: the one `cargo xtask images` builds).
    #[arg(long, default_value = BRIDGE_IMAGE)]
    pub bridge_image: String,
}

/// `tests/scenarios`.
pub fn scenario_dir() -> PathBuf {
    workspace().join("tests").join("scenarios")
}

use crate::paths::workspace_root as workspace;

/// `target/reliability`.
pub fn out_root() -> PathBuf {
    crate::paths::target_dir().join("reliability")
}

/// Entry point of `cargo xtask scenario`.
pub fn run(cmd: &Command) -> Result<()> {
    match cmd {
        Command::List => {
            for s in Scenario::load_dir(&scenario_dir())? {
                println!(
                    "{:<18} {:>6} {:>3} services {:>2} faults{}  {}",
                    s.name,
                    s.duration,
                    s.services.len(),
                    s.faults.len(),
                    if s.ci { "  [ci]" } else { "      " },
                    s.description
                );
            }
            Ok(())
        }
        Command::Run(args) => {
            crate::provision::run(&crate::provision::Args { no_images: false })?;
            let rt = runtime()?;
            let out = rt.block_on(run_named(args, &|m| println!("{m}")))?;
            println!("\n{}", std::fs::read_to_string(out.dir.join("summary.md"))?);
            println!("reports in {}", out.dir.display());
            if out.report.verdict != "pass" {
                bail!("scenario {} failed", args.name);
            }
            Ok(())
        }
    }
}

/// A tokio runtime for the harness.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The run directory.
    pub dir: PathBuf,
    /// The report.
    pub report: report::Report,
}

/// Loads `name` and runs it, with cleanup on ctrl-c.
pub async fn run_named(args: &RunArgs, say: &(dyn Fn(&str) + Sync)) -> Result<RunOutput> {
    let path = scenario_dir().join(format!("{}.toml", args.name));
    let mut scn = Scenario::load(&path)?;
    if let Some(d) = &args.duration {
        dur("--duration", d)?;
        scn.duration = d.clone();
    }
    let seed = args.seed.unwrap_or(scn.seed);
    crate::interrupt::check()?;
    crate::owner::sweep_dead(&out_root(), &|m| say(m));
    let run_id = format!("{}-{}-{}", scn.name, seed, std::process::id());
    let mut cleanup = Cleanup::new(&run_id);
    let result = tokio::select! {
        r = run_scenario(&scn, seed, args, &run_id, &mut cleanup, say) => r,
        sig = crate::interrupt::wait() => Err(anyhow::anyhow!("interrupted by {sig}")),
    };
    say("cleaning up");
    cleanup.run().await;
    result
}

/// Everything started, removed at the end whatever happens.
struct Cleanup {
    run_label: String,
    dind: Option<ContainerAsync<GenericImage>>,
    children: Vec<tokio::process::Child>,
    mounts: Vec<PathBuf>,
    networks: Vec<String>,
    done: bool,
}

impl Cleanup {
    fn new(run_id: &str) -> Self {
        Self {
            run_label: format!("mesh-bridge.run={run_id}"),
            dind: None,
            children: Vec::new(),
            mounts: Vec::new(),
            networks: Vec::new(),
            done: false,
        }
    }

    async fn run(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        self.children.clear();
        sweep(&self.run_label);
        if let Some(d) = self.dind.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), d.rm()).await;
        }
        sweep(&self.run_label);
        for n in self.networks.drain(..) {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", &n])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        for m in self.mounts.drain(..) {
            let _ = std::process::Command::new("umount").arg(&m).status();
        }
        self.done = true;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.done {
            sweep(&self.run_label);
            for n in &self.networks {
                let _ = std::process::Command::new("docker")
                    .args(["network", "rm", n])
                    .status();
            }
            for m in &self.mounts {
                let _ = std::process::Command::new("umount").arg(m).status();
            }
        }
    }
}

/// `docker rm -f` of every host container with the run's label.
fn sweep(label: &str) {
    let Ok(out) = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-fv"])
            .args(&ids)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Fails unless the image exists locally (so nothing is ever pulled).
async fn require_image(docker: &Docker, image: &str) -> Result<()> {
    docker
        .run(&["image", "inspect", "--format", "{{.Id}}", image])
        .await
        .map(drop)
        .with_context(|| {
            format!("{image} is missing locally; run `cargo xtask images` (no registry is used)")
        })
}

fn free_local_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The loop around the DinD entrypoint: a dockerd that exits (engine-restart
/// fault) is started again; the container ends when /tmp/stop exists.
const DIND_LOOP: &str =
    "while :; do /usr/local/bin/dind-entrypoint; [ -e /tmp/stop ] && exit 0; sleep 0.3; done";

/// Starts the DinD container through testcontainers; `--privileged` first,
/// then the privileged-equivalent flags if the engine refuses it.
async fn start_dind(
    ports: &[u16],
    labels: &[(String, String)],
    say: &(dyn Fn(&str) + Sync),
) -> Result<(ContainerAsync<GenericImage>, String)> {
    let mut last_err = String::new();
    for privileged in [true, false] {
        let (repo, tag) = dind_image();
        let mut img = GenericImage::new(repo, tag)
            .with_entrypoint("/usr/bin/tini")
            .with_wait_for(WaitFor::Nothing)
            .with_exposed_port(ContainerPort::Tcp(2375))
            .with_exposed_port(ContainerPort::Tcp(9464));
        for p in ports {
            img = img.with_exposed_port(ContainerPort::Tcp(*p));
        }
        let mut all: Vec<u16> = vec![2375, 9464];
        all.extend_from_slice(ports);
        let mut req = img
            .with_cmd(["--", "/bin/sh", "-c", DIND_LOOP])
            .with_cgroupns_mode(CgroupnsMode::Private)
            .with_startup_timeout(Duration::from_secs(60))
            .with_env_var("DIND_SHUTDOWN_TIMEOUT", "2");
        for (k, v) in labels {
            req = req.with_label(k.clone(), v.clone());
        }
        if privileged {
            req = req.with_privileged(true);
        } else {
            req = req
                .with_cap_add("ALL")
                .with_cap_drop("SYS_RESOURCE")
                .with_security_opt("seccomp=unconfined")
                .with_security_opt("apparmor=unconfined");
        }
        let req = req.with_host_config_modifier(move |hc: &mut HostConfig| {
            let mut b = HashMap::new();
            for p in &all {
                b.insert(
                    format!("{p}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                );
            }
            hc.port_bindings = Some(b);
            if !privileged {
                // The API form of the CLI's `--security-opt systempaths=unconfined`.
                hc.masked_paths = Some(Vec::new());
                hc.readonly_paths = Some(Vec::new());
            }
        });
        match req.start().await {
            Ok(c) => {
                let how = if privileged {
                    "--privileged".to_string()
                } else {
                    "privileged-equivalent flags (--cap-add ALL --cap-drop SYS_RESOURCE, seccomp/apparmor/systempaths unconfined)".to_string()
                };
                return Ok((c, how));
            }
            Err(e) => {
                last_err = format!("{e:#}");
                say(&format!(
                    "DinD start with privileged={privileged} refused: {last_err}"
                ));
                sweep(&format!("{}={}", labels[1].0, labels[1].1));
            }
        }
    }
    bail!("the DinD container could not be started: {last_err}")
}

/// Polls until `docker info` answers on `docker` (bounded).
async fn wait_engine(docker: &Docker, limit: Duration) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if docker
            .run_timeout(
                &["info", "--format", "{{.ServerVersion}}"],
                Duration::from_secs(5),
            )
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("engine {:?} did not answer within {limit:?}", docker.host)
}

/// The running topology.
struct Topo {
    target: Target,
    ports: PortMap,
    engine: Engine,
    labels: Vec<String>,
}

impl Topo {
    /// This run's service containers on the inner engine that match a
    /// fault's target (a service, a `K=V` label, or every service).
    async fn containers(&self, target: Option<&str>) -> Result<Vec<faults::Container>> {
        let mut filters = faults::target_labels(target);
        filters.extend(self.labels.iter().cloned());
        self.target.inner.list(&filters).await
    }

    /// Starts `name` as a stub container of `service` on the service engine.
    async fn start_stub(&self, name: &str, service: &str) -> Result<()> {
        let args = self.stub_args(name, service);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.target.inner.run(&argv).await.map(drop)
    }

    /// `docker run` arguments of one stub replica of `service`.
    fn stub_args(&self, name: &str, service: &str) -> Vec<String> {
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name.into()];
        for l in &self.labels {
            args.push("--label".into());
            args.push(l.clone());
        }
        args.extend(
            [
                "--label",
                &format!("{}={service}", faults::SERVICE_LABEL),
                "-e",
                &format!("MCP_STUB_NAME={service}"),
                "--restart",
                "unless-stopped",
            ]
            .map(String::from),
        );
        if self.engine == Engine::Host {
            args.extend(["--network".to_string(), self.target.bridge_netns_net()]);
        }
        args.push(STUB_IMAGE.into());
        args
    }
}

trait NetExt {
    fn bridge_netns_net(&self) -> String;
}
impl NetExt for Target {
    /// Host topology: the network the services and the bridge's netns holder share.
    fn bridge_netns_net(&self) -> String {
        format!("{}-net", self.bridge)
    }
}

async fn run_scenario(
    scn: &Scenario,
    seed: u64,
    args: &RunArgs,
    run_id: &str,
    cleanup: &mut Cleanup,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RunOutput> {
    let t_setup = Instant::now();
    let dir = out_root().join(format!("{}-{}", scn.name, seed));
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let plan = schedule::build(scn, seed)?;
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_string_pretty(&plan)?,
    )?;
    let mesh_ports = scn.bridge.all_ports()?;
    let host = Docker::default();
    let engine = args.engine;
    let bridge_image = args.bridge_image.as_str();
    for img in [bridge_image, STUB_IMAGE] {
        require_image(&host, img).await?;
    }
    let label_pairs = vec![
        (faults::TEST_LABEL.to_string(), TEST_VALUE.to_string()),
        ("mesh-bridge.run".to_string(), run_id.to_string()),
        (crate::owner::LABEL.to_string(), crate::owner::me()),
    ];
    let labels: Vec<String> = label_pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let bridge_name = format!("mb-bridge-{run_id}");
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir)?;
    if scn.faults.iter().any(|f| f.kind == FaultKind::DiskFull) {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs"])
            .arg(&state_dir)
            .status()?;
        if st.success() {
            cleanup.mounts.push(state_dir.clone());
            say("state dir on a 2 MiB tmpfs (disk-full fault)");
        } else {
            say(
                "could not mount a tmpfs for the state dir; disk-full will fill the real disk's quota-less dir (bounded to 64 MiB)",
            );
        }
    }
    let token = format!(
        "chaos-{:016x}{:08x}",
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        std::process::id()
    );
    std::fs::write(dir.join("token"), &token)?;

    // --- engine and bridge ---------------------------------------------------
    let (inner, netns, engine_name, port_map, api, how) = match engine {
        Engine::Dind => {
            require_image(&host, images::DIND).await?;
            say(&format!(
                "starting DinD ({} mesh ports published to 127.0.0.1)",
                mesh_ports.len()
            ));
            let (c, how) = start_dind(&mesh_ports, &label_pairs, say).await?;
            let id = c.id().to_string();
            let ports = c.ports().await?;
            cleanup.dind = Some(c);
            let hp = |p: u16| ports.map_to_host_port_ipv4(ContainerPort::Tcp(p));
            let engine_port = hp(2375).context("2375 not published")?;
            let api_port = hp(9464).context("9464 not published")?;
            let mut map = HashMap::new();
            for p in &mesh_ports {
                map.insert(*p, hp(*p).with_context(|| format!("{p} not published"))?);
            }
            let inner = Docker::at(format!("tcp://127.0.0.1:{engine_port}"));
            wait_engine(&inner, Duration::from_secs(90)).await?;
            say(&format!(
                "inner engine up on tcp://127.0.0.1:{engine_port} after {:.1}s ({how})",
                t_setup.elapsed().as_secs_f64()
            ));
            let t = Instant::now();
            let load = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker save {STUB_IMAGE} | docker -H tcp://127.0.0.1:{engine_port} load -q"
                ))
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(180), load).await??;
            if !out.status.success() {
                bail!(
                    "loading {STUB_IMAGE} into the inner engine: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            say(&format!(
                "{STUB_IMAGE} loaded into the inner engine in {:.1}s",
                t.elapsed().as_secs_f64()
            ));
            (
                inner,
                format!("container:{id}"),
                Some(id),
                PortMap { map },
                SocketAddr::from(([127, 0, 0, 1], api_port)),
                how,
            )
        }
        Engine::Host => {
            // A netns holder (a stub) publishes the ports; the bridge joins it
            // and watches the host engine through its socket.
            let net = format!("{bridge_name}-net");
            let mut args = vec!["network", "create"];
            for l in &labels {
                args.extend(["--label", l.as_str()]);
            }
            args.push(&net);
            host.run(&args).await?;
            cleanup.networks.push(net.clone());
            let holder = format!("{bridge_name}-ns");
            let mut args: Vec<String> =
                vec!["run".into(), "-d".into(), "--name".into(), holder.clone()];
            for l in &labels {
                args.push("--label".into());
                args.push(l.clone());
            }
            args.extend([
                "--network".into(),
                net.clone(),
                "-e".into(),
                "MCP_STUB_PORT=1".into(),
            ]);
            args.extend(["-p".into(), "127.0.0.1::9464".into()]);
            for p in &mesh_ports {
                args.push("-p".into());
                args.push(format!("127.0.0.1::{p}"));
            }
            args.push(STUB_IMAGE.into());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            host.run(&argv).await?;
            let mut map = HashMap::new();
            let mut api_port = 0;
            let out = host.run(&["port", &holder]).await?;
            for line in out.lines() {
                // "11100/tcp -> 127.0.0.1:49153"
                let Some((c, h)) = line.split_once(" -> ") else {
                    continue;
                };
                let c: u16 = c.trim_end_matches("/tcp").parse().unwrap_or(0);
                let h: u16 = h
                    .rsplit(':')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                if c == 9464 {
                    api_port = h;
                } else {
                    map.insert(c, h);
                }
            }
            (
                host.clone(),
                format!("container:{holder}"),
                None,
                PortMap { map },
                SocketAddr::from(([127, 0, 0, 1], api_port)),
                "host engine (no DinD)".to_string(),
            )
        }
    };
    let target = Target {
        outer: host.clone(),
        inner: inner.clone(),
        bridge: bridge_name.clone(),
        engine: engine_name.clone(),
        state_dir: state_dir.clone(),
        bridge_image: bridge_image.into(),
        stub_image: STUB_IMAGE.into(),
        api,
        token: token.clone(),
        labels: labels.clone(),
        bridge_netns: netns.clone(),
    };
    let topo = Topo {
        target: target.clone(),
        ports: port_map.clone(),
        engine,
        labels: labels.clone(),
    };

    // Services first, then the bridge: its first resync finds them.
    let t = Instant::now();
    for s in &scn.services {
        for r in 0..s.replicas {
            topo.start_stub(&format!("{}-{r}", s.name), &s.name).await?;
        }
    }
    say(&format!(
        "{} stub containers started in {:.1}s",
        scn.containers(),
        t.elapsed().as_secs_f64()
    ));

    let docker_host = match engine {
        Engine::Dind => "tcp://127.0.0.1:2375".to_string(),
        Engine::Host => "unix:///var/run/docker.sock".to_string(),
    };
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        bridge_name.clone(),
    ];
    for l in &labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    args.extend(
        [
            "--network",
            &netns,
            "-v",
            &format!("{}:/state", state_dir.display()),
            "-v",
            &format!("{}:/run/mesh-token:ro", dir.join("token").display()),
            "-e",
            "MESH_BRIDGE_LOG=info",
        ]
        .map(String::from),
    );
    if engine == Engine::Host {
        args.extend([
            "-v".into(),
            "/var/run/docker.sock:/var/run/docker.sock".into(),
        ]);
    }
    args.extend(
        [
            bridge_image,
            "run",
            "--docker-host",
            &docker_host,
            "--ports",
            &scn.bridge.ports,
            "--grace",
            &scn.bridge.grace,
            "--resync",
            &scn.bridge.resync,
            "--leak-cycles",
            &scn.bridge.leak_cycles.to_string(),
            "--hold",
            &scn.bridge.hold,
            "--api-token-file",
            "/run/mesh-token",
            "--state-dir",
            "/state",
            "--listen",
            "0.0.0.0:9464",
            "--bind-ip",
            "0.0.0.0",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    host.run(&argv).await?;

    // Ready, and every service serving.
    let want: Vec<String> = scn.services.iter().map(|s| s.name.clone()).collect();
    let t = Instant::now();
    loop {
        let snap = probe::snapshot(api, 0).await;
        let serving = want
            .iter()
            .filter(|w| {
                snap.services.iter().any(|s| {
                    &s.name == *w && s.port.is_some() && s.state == probe::ServiceState::Serving
                })
            })
            .count();
        if serving == want.len() {
            break;
        }
        if t.elapsed() > Duration::from_secs(90) {
            let logs = host
                .run(&["logs", "--tail", "20", &bridge_name])
                .await
                .unwrap_or_default();
            bail!(
                "only {serving}/{} services serving after 90s; bridge log tail:\n{logs}",
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    say(&format!(
        "bridge ready, {} services serving; setup took {:.1}s",
        want.len(),
        t_setup.elapsed().as_secs_f64()
    ));

    // --- harness metrics and Prometheus ---------------------------------------
    let hm = HarnessMetrics::new()?;
    let (maddr, mtask) = hm.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut prometheus_addr = None;
    if let Some((child, addr)) = start_prometheus(&dir, api, maddr, say)? {
        cleanup.children.push(child);
        prometheus_addr = Some(addr);
    }

    // --- the run ---------------------------------------------------------------
    let rec = Recorder::default();
    let start = Instant::now();
    let total = scn.duration()?;
    let settle = scn.settle()?;
    rec.with(|h| {
        h.probed = want.clone();
        h.live = want.clone();
        h.grace_ms = dur("grace", &scn.bridge.grace).map_or(0, |d| d.as_millis() as u64);
        h.settle_from_ms = total.as_millis() as u64;
        let flood = scn
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::RegistrationFlood);
        h.expect.exhaustion = Some(flood);
        if scn
            .faults
            .iter()
            .all(|f| f.kind == FaultKind::DuplicateStorm)
        {
            h.expect.duplicates = Some(0);
        }
    });
    let probe_list = Arc::new(Mutex::new(want.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(probe::run_poller(
        rec.clone(),
        api,
        start,
        Duration::from_millis(500),
        stop_rx.clone(),
    ));
    // Let the poller learn the ports before the probes start.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let probes = tokio::spawn(probe::run_probes(
        rec.clone(),
        probe_list.clone(),
        port_map.clone(),
        start,
        Duration::from_millis(250),
        hm.clone(),
        stop_rx.clone(),
    ));

    let mut heals = tokio::task::JoinSet::new();
    // Faults with a heal scheduled, until it has run (see below).
    let unhealed: Arc<Mutex<std::collections::BTreeSet<usize>>> = Arc::default();
    let topo = Arc::new(topo);
    let mut last_report = Instant::now();
    for (i, p) in plan.iter().enumerate() {
        let at = start + Duration::from_millis(p.t_ms);
        while Instant::now() < at {
            tokio::time::sleep((at - Instant::now()).min(Duration::from_secs(5))).await;
            if last_report.elapsed() >= Duration::from_secs(10) {
                progress(&rec, start, total, say);
                last_report = Instant::now();
            }
        }
        let t_ms = start.elapsed().as_millis() as u64;
        hm.fault(p.kind.as_str());
        let r = inject(&topo, p, i, t_ms, &rec, &probe_list, start).await;
        let (rec_idx, heal) = match r {
            Ok((record, heal)) => {
                say(&format!(
                    "t={:>6.1}s {} -> {}",
                    t_ms as f64 / 1000.0,
                    p.kind,
                    record.target
                ));
                let idx = rec.with(|h| {
                    h.faults.push(record);
                    h.faults.len() - 1
                });
                (idx, heal)
            }
            Err(e) => {
                say(&format!(
                    "t={:>6.1}s {} FAILED: {e:#}",
                    t_ms as f64 / 1000.0,
                    p.kind
                ));
                rec.with(|h| {
                    h.faults.push(FaultRecord {
                        t_ms,
                        kind: p.kind,
                        target: p.target.clone().unwrap_or_default(),
                        services: Vec::new(),
                        until_ms: t_ms,
                        may_move: Vec::new(),
                        error: Some(format!("{e:#}")),
                        no_failures: Vec::new(),
                        latency_ms: None,
                    })
                });
                continue;
            }
        };
        if let Some(heal) = heal {
            let topo = topo.clone();
            let rec = rec.clone();
            let hold = Duration::from_millis(p.hold_ms);
            let probe_list = probe_list.clone();
            let unhealed = unhealed.clone();
            if let Ok(mut u) = unhealed.lock() {
                u.insert(rec_idx);
            }
            heals.spawn(async move {
                tokio::time::sleep(hold).await;
                let err = heal.run(&topo, &probe_list).await.err();
                if let Ok(mut u) = unhealed.lock() {
                    u.remove(&rec_idx);
                }
                let t = start.elapsed().as_millis() as u64;
                rec.with(|h| {
                    if let Some(f) = h.faults.get_mut(rec_idx) {
                        f.until_ms = t;
                        if let Some(e) = err {
                            f.error = Some(format!("heal: {e:#}"));
                        }
                    }
                });
            });
        }
    }
    // Wait out the duration, then heal everything, then settle.
    while start.elapsed() < total {
        tokio::time::sleep((total.saturating_sub(start.elapsed())).min(Duration::from_secs(5)))
            .await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            progress(&rec, start, total, say);
            last_report = Instant::now();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while heals.join_next().await.is_some() {}
    })
    .await;
    heals.abort_all();
    // A heal that never finished leaves its fault in place: say so in the
    // record instead of showing a fault that ended the moment it began.
    let left: Vec<usize> = unhealed
        .lock()
        .map(|u| u.iter().copied().collect())
        .unwrap_or_default();
    rec.with(|h| {
        for i in left {
            if let Some(f) = h.faults.get_mut(i) {
                f.error = Some("heal did not finish within 60 s of the run's end".into());
            }
        }
    });
    rec.with(|h| h.settle_from_ms = h.settle_from_ms.max(start.elapsed().as_millis() as u64));
    say(&format!(
        "faults done; settling {}",
        humantime::format_duration(settle)
    ));
    tokio::time::sleep(settle).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), probes).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), poller).await;
    // Docker's truth (running containers per service) next to the final
    // snapshot, for I9.
    let truth = match target.inner.list(&labels).await {
        Ok(cs) => {
            let mut m = std::collections::BTreeMap::new();
            for c in cs.iter().filter(|c| !c.service.is_empty()) {
                *m.entry(c.service.clone()).or_insert(0usize) += usize::from(c.state == "running");
            }
            Some(m)
        }
        Err(e) => {
            say(&format!(
                "could not list the services' containers at the end: {e:#}"
            ));
            None
        }
    };
    let fin = probe::snapshot(api, start.elapsed().as_millis() as u64).await;
    rec.with(|h| {
        h.truth = truth;
        h.snapshots.push(fin);
        h.end_ms = start.elapsed().as_millis() as u64;
    });
    let h = rec.history();
    let (verdicts, fig) = invariants::check(
        &h,
        Marks {
            availability: scn.thresholds.availability,
            recovery_ms: scn.thresholds.recovery_ms,
        },
    );
    let mut verdicts = verdicts;
    for alert in &scn.expect_alerts {
        verdicts.push(alert_fired(prometheus_addr, alert, say).await);
    }
    for v in verdicts.iter().filter(|v| !v.held) {
        hm.violation(&v.id);
    }
    let r = report::build(
        &scn.name,
        seed,
        &how_short(engine),
        &h,
        &verdicts,
        &fig,
        h.end_ms,
    );
    report::write_all(&dir, &r, &h)?;
    // Bridge log for the record.
    if let Ok(out) = tokio::process::Command::new("docker")
        .args(["logs", "--tail", "400", &bridge_name])
        .output()
        .await
    {
        let mut log = out.stdout;
        log.extend_from_slice(&out.stderr);
        let _ = std::fs::write(dir.join("bridge.log"), log);
    }
    std::fs::write(
        dir.join("topology.txt"),
        format!("engine: {how}\napi: {api}\nharness metrics: {maddr}\n"),
    )?;
    // One more Prometheus scrape of the final counters.
    if !cleanup.children.is_empty() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    mtask.abort();
    Ok(RunOutput { dir, report: r })
}

fn how_short(e: Engine) -> String {
    match e {
        Engine::Dind => "dind".into(),
        Engine::Host => "host".into(),
    }
}

fn progress(rec: &Recorder, start: Instant, total: Duration, say: &(dyn Fn(&str) + Sync)) {
    let (n, ok, f, in_use) = rec.with(|h| {
        let recent: Vec<_> = h.samples.iter().rev().take(200).collect();
        (
            recent.len(),
            recent
                .iter()
                .filter(|s| s.outcome == probe::Outcome::Ok)
                .count(),
            h.faults.len(),
            h.snapshots.last().and_then(|s| s.pool_field(|p| p.in_use)),
        )
    });
    say(&format!(
        "  .. {:>5.0}s/{:.0}s  faults {f}  recent probes ok {ok}/{n}  ports in use {}",
        start.elapsed().as_secs_f64(),
        total.as_secs_f64(),
        in_use.map_or("?".into(), |x| x.to_string())
    ));
}

/// Whether the run's Prometheus fired `alert` (a rule of
/// dashboards/prometheus/rules.yml), asked through its HTTP API; polls for up
/// to 20 s so the last evaluation can land.
async fn alert_fired(
    prometheus: Option<SocketAddr>,
    alert: &str,
    say: &(dyn Fn(&str) + Sync),
) -> invariants::Verdict {
    let title = format!("Prometheus fired the alert {alert}");
    let id = format!("alert:{alert}");
    let Some(addr) = prometheus else {
        return invariants::Verdict {
            id,
            title,
            held: false,
            detail: "no Prometheus ran (install Debian's `prometheus`)".into(),
        };
    };
    let query = format!("max_over_time(ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}[1h])");
    let path = format!(
        "/api/v1/query?query={}",
        mesh_chaos::docker_query::encode(&query)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match mesh_chaos::http::get_json::<serde_json::Value>(addr, &path).await {
            Ok(v) => {
                let n = v["data"]["result"].as_array().map_or(0, Vec::len);
                if n > 0 {
                    say(&format!("prometheus: {alert} fired"));
                    return invariants::Verdict {
                        id,
                        title,
                        held: true,
                        detail: format!("{n} firing series seen through /api/v1/query"),
                    };
                }
                "no firing series".to_string()
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return invariants::Verdict {
                id,
                title,
                held: false,
                detail: format!("not fired within the run + 20 s: {last}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts Debian's prometheus (if installed) scraping the bridge and the
/// harness, with the project's alert rules loaded. Returns it and its address.
fn start_prometheus(
    dir: &Path,
    api: SocketAddr,
    harness: SocketAddr,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Option<(tokio::process::Child, SocketAddr)>> {
    let Ok(bin) = which("prometheus") else {
        say("prometheus not installed; running without it");
        return Ok(None);
    };
    let port = free_local_port()?;
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards/prometheus/rules.yml")
        .canonicalize()
        .context("dashboards/prometheus/rules.yml is missing")?;
    let cfg = format!(
        "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: mesh-bridge\n    static_configs:\n      - targets: ['{api}']\n  - job_name: mesh-chaos\n    static_configs:\n      - targets: ['{harness}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), cfg)?;
    let data = dir.join("prometheus");
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = tokio::process::Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    say(&format!(
        "prometheus on 127.0.0.1:{port}, data in {}",
        data.display()
    ));
    Ok(Some((child, SocketAddr::from(([127, 0, 0, 1], port)))))
}

fn which(name: &str) -> Result<PathBuf> {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not on PATH")
}

/// How to undo a fault after its hold.
enum Heal {
    Docker {
        inner: bool,
        cmds: Vec<Vec<String>>,
    },
    Replace {
        names: Vec<(String, String)>,
    },
    Uncut,
    Unfill(PathBuf, Vec<String>),
    Unsquat {
        squatters: Vec<String>,
        late: Vec<String>,
        late_services: Vec<String>,
    },
    RemoveInner {
        names: Vec<String>,
    },
    /// iptables rules of a network fault to delete.
    Unnet {
        rules: Vec<Vec<String>>,
    },
    /// End the stub delay mode of these containers (`net-latency`).
    Undelay {
        ids: Vec<String>,
    },
}

impl Heal {
    async fn run(self, topo: &Topo, probe_list: &Arc<Mutex<Vec<String>>>) -> Result<()> {
        let t = &topo.target;
        match self {
            Heal::Docker { inner, cmds } => {
                let docker = if inner { &t.inner } else { &t.outer };
                // One container at a time, so a container another fault removed
                // meanwhile does not keep the others down.
                let mut errors = Vec::new();
                for c in cmds {
                    let (verb, ids) = c.split_at(1);
                    for id in ids {
                        let argv = [verb[0].as_str(), id.as_str()];
                        if let Err(e) = with_retry(|| docker.run(&argv)).await {
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    bail!("{}", errors.join("; "))
                }
            }
            Heal::Replace { names } => {
                for (name, service) in names {
                    with_retry(|| topo.start_stub(&name, &service)).await?;
                }
                Ok(())
            }
            Heal::Uncut => t.cut_engine(false).await,
            Heal::Unfill(path, late) => {
                let _ = std::fs::remove_file(&path);
                remove_inner(t, &late).await
            }
            Heal::Unsquat {
                squatters,
                late,
                late_services,
            } => {
                if let Ok(mut g) = probe_list.lock() {
                    g.retain(|s| !late_services.contains(s));
                }
                remove_inner(t, &late).await?;
                t.remove_outer(&squatters).await
            }
            Heal::RemoveInner { names } => remove_inner(t, &names).await,
            Heal::Undelay { ids } => {
                for id in ids {
                    let argv = faults::delay_command(&id, 0);
                    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                    with_retry(|| t.inner.run(&args)).await?;
                }
                Ok(())
            }
            Heal::Unnet { rules } => {
                for r in &rules {
                    with_retry(|| t.net_rule(false, r)).await?;
                }
                Ok(())
            }
        }
    }
}

/// Retries a heal while the engine is away (an engine restart or cut may
/// overlap it): up to 30 attempts, 2 s apart. A container that no longer
/// exists (another fault removed it) is not retried.
async fn with_retry<F, Fut, T>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = None;
    for _ in 0..30 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("No such container") || text.contains("is already in use") {
                    return Err(e);
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

async fn remove_inner(t: &Target, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    with_retry(|| t.inner.run(&args)).await.map(drop)
}

/// The running service replicas of a fault's target, and the seeded victims
/// among them (the network faults).
async fn replica_victims(
    topo: &Topo,
    p: &Planned,
) -> Result<(Vec<faults::Container>, Vec<faults::Container>)> {
    let running: Vec<_> = topo
        .containers(p.target.as_deref())
        .await?
        .into_iter()
        .filter(|c| c.state == "running" && !c.service.is_empty())
        .collect();
    let victims = schedule::pick(&running, p.count, p.fraction, p.pick);
    Ok((running, victims))
}

/// Injects one planned fault; returns its record and how to heal it.
async fn inject(
    topo: &Topo,
    p: &Planned,
    seq: usize,
    t_ms: u64,
    rec: &Recorder,
    probe_list: &Arc<Mutex<Vec<String>>>,
    start: Instant,
) -> Result<(FaultRecord, Option<Heal>)> {
    let t = &topo.target;
    let probed = rec.with(|h| h.probed.clone());
    let mut record = FaultRecord {
        t_ms,
        kind: p.kind,
        target: String::new(),
        services: Vec::new(),
        until_ms: t_ms,
        may_move: Vec::new(),
        error: None,
        no_failures: Vec::new(),
        latency_ms: None,
    };
    let now = || start.elapsed().as_millis() as u64;
    let heal = match p.kind {
        k if k.is_container() => {
            let all = topo.containers(p.target.as_deref()).await?;
            let cands: Vec<_> = all.into_iter().filter(|c| c.state == "running").collect();
            let victims = schedule::pick(&cands, p.count, p.fraction, p.pick);
            let ids: Vec<String> = victims.iter().map(|c| c.id.clone()).collect();
            record.target = victims
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            record.services = victims.iter().map(|c| c.service.clone()).collect();
            record.services.dedup();
            faults::run_all(&t.inner, &faults::container_commands(k, &ids)).await?;
            if k == FaultKind::ContainerRemove {
                Some(Heal::Replace {
                    names: victims
                        .iter()
                        .map(|c| (format!("{}-x{seq}", c.service), c.service.clone()))
                        .collect(),
                })
            } else {
                let cmds = faults::container_heal_commands(k, &ids);
                (!cmds.is_empty()).then_some(Heal::Docker { inner: true, cmds })
            }
        }
        FaultKind::BridgeKill => {
            t.kill_bridge().await?;
            let (ok, detail) = t.check_store().await;
            // What the store holds now, for I6's completeness check.
            let exported = if ok {
                t.export_store().await.ok()
            } else {
                None
            };
            rec.with(|h| {
                h.store_checks.push(StoreCheck {
                    t_ms: now(),
                    ok,
                    detail,
                    damaged_on_purpose: false,
                    exported,
                })
            });
            t.start_bridge().await?;
            // No run ids in targets: the same seed gives the same fault list.
            record.target = "bridge (kill -9, state check, start)".into();
            record.services = probed.clone();
            record.until_ms = now();
            None
        }
        FaultKind::StoreCorrupt | FaultKind::StoreTruncate => {
            t.stop_bridge().await?;
            let before = t.damaged_files().len();
            t.damage_store(if p.kind == FaultKind::StoreCorrupt {
                faults::StoreDamage::Corrupt { seed: p.pick }
            } else {
                faults::StoreDamage::Truncate
            })?;
            let (ok, detail) = t.check_store().await;
            rec.with(|h| {
                h.store_checks.push(StoreCheck {
                    t_ms: now(),
                    ok,
                    detail: detail.clone(),
                    damaged_on_purpose: true,
                    exported: None,
                })
            });
            t.start_bridge().await?;
            // The bridge must move the damaged store aside, never delete it.
            let tw = Instant::now();
            while t.damaged_files().len() <= before && tw.elapsed() < Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if t.damaged_files().len() <= before {
                record.error = Some(format!(
                    "damaged store was not moved aside within 15s (state check said: {detail})"
                ));
            }
            record.target = format!(
                "state.db ({}), bridge restarted",
                if ok {
                    "check still ok!"
                } else {
                    "check failed as expected"
                }
            );
            record.services = probed.clone();
            record.may_move = vec!["*".into()];
            record.until_ms = now();
            None
        }
        FaultKind::EngineRestart => {
            t.restart_engine().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            wait_engine(&t.inner, Duration::from_secs(90)).await?;
            record.target = "dockerd in the DinD container".into();
            record.services = probed.clone();
            record.until_ms = now();
            None
        }
        FaultKind::EngineCut => {
            t.cut_engine(true).await?;
            record.target = "tcp :2375 (REJECT)".into();
            Some(Heal::Uncut)
        }
        FaultKind::DiskFull => {
            use std::io::Write;
            let path = t.state_dir.join("filler");
            let mut f = std::fs::File::create(&path)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut written = 0usize;
            while written < 64 * 1024 * 1024 {
                if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
                    break;
                }
                written += chunk.len();
            }
            let _ = f.sync_all();
            // New services while the disk is full: the store cannot write.
            let n = p.count.unwrap_or(1).min(4);
            let mut late = Vec::new();
            for i in 0..n {
                let svc = format!("late-disk-{seq}-{i}");
                topo.start_stub(&svc, &svc).await?;
                late.push(svc);
            }
            record.target = format!(
                "state dir filled ({} KiB), {} new services",
                written / 1024,
                late.len()
            );
            Some(Heal::Unfill(path, late))
        }
        FaultKind::PortSquat => {
            let snap = probe::snapshot(t.api, 0).await;
            let held: std::collections::BTreeSet<u16> =
                snap.services.iter().filter_map(|s| s.port).collect();
            let all = topo
                .ports
                .map
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<u16>>();
            let max_held = held.iter().max().copied().unwrap_or(0);
            let mut free: Vec<u16> = all
                .iter()
                .copied()
                .filter(|p| !held.contains(p) && *p > max_held)
                .collect();
            free.extend(
                all.iter()
                    .copied()
                    .filter(|p| !held.contains(p) && *p <= max_held),
            );
            let n = p.count.unwrap_or(2) as usize;
            let mut squatters = Vec::new();
            let mut squatted = Vec::new();
            for port in free.into_iter().take(n) {
                squatters.push(t.squat(port, &format!("{seq}")).await?);
                squatted.push(port);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // A new service must skip the squatted ports.
            let svc = format!("late-squat-{seq}");
            topo.start_stub(&svc, &svc).await?;
            if let Ok(mut g) = probe_list.lock() {
                g.push(svc.clone());
            }
            record.target = format!("ports {squatted:?} squatted; new service {svc}");
            record.services = vec![svc.clone()];
            Some(Heal::Unsquat {
                squatters,
                late: vec![svc.clone()],
                late_services: vec![svc],
            })
        }
        FaultKind::RegistrationFlood => {
            let snap = probe::snapshot(t.api, 0).await;
            let free = snap.pool_field(|p| p.free).unwrap_or(0);
            let over = u64::from(p.count.unwrap_or(3));
            let n = (free + over).min(64);
            let mut names = Vec::new();
            for i in 0..n {
                let svc = format!("flood-{seq}-{i}");
                topo.start_stub(&svc, &svc).await?;
                names.push(svc);
            }
            let overflow = n.saturating_sub(free);
            rec.with(|h| {
                h.expect.exhaustion_events =
                    Some(h.expect.exhaustion_events.unwrap_or(0) + overflow);
            });
            record.target = format!(
                "{} new services for {free} free ports ({overflow} left without one)",
                names.len()
            );
            Some(Heal::RemoveInner { names })
        }
        k if k.is_network() => {
            let (running, victims) = replica_victims(topo, p).await?;
            let mut rules = Vec::new();
            for v in &victims {
                let ip = t.replica_ip(&v.id).await?;
                let rule = k.net_rule(&ip, mesh_chaos::stub::DEFAULT_PORT, faults::NET_LOSS);
                t.net_rule(true, &rule).await?;
                rules.push(rule);
            }
            record.target = victims
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            // What a client sees (docs/DESIGN.md section 4.1): a reset or a
            // black hole on some of a service's replicas fails over to the
            // others within the forwarder's connect timeout, so that service
            // stays judged for availability; loss, or every replica hit, puts
            // it under fault.
            for v in &victims {
                let hit = victims.iter().filter(|x| x.service == v.service).count();
                let all = running.iter().filter(|x| x.service == v.service).count();
                let list = if k == FaultKind::NetLoss || hit == all {
                    &mut record.services
                } else {
                    &mut record.no_failures
                };
                if !list.contains(&v.service) {
                    list.push(v.service.clone());
                }
            }
            Some(Heal::Unnet { rules })
        }
        FaultKind::NetLatency => {
            // The stub's delay mode (no netem here): answers come later, below
            // the probes' timeout, so clients see no failure (I4 checks both).
            let (_, victims) = replica_victims(topo, p).await?;
            let mut ids = Vec::new();
            for v in &victims {
                let cmd = faults::delay_command(&v.id, faults::NET_LATENCY_MS);
                faults::run_all(&t.inner, &[cmd]).await?;
                ids.push(v.id.clone());
                if !record.no_failures.contains(&v.service) {
                    record.no_failures.push(v.service.clone());
                }
            }
            record.target = victims
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            record.latency_ms = Some(faults::NET_LATENCY_MS);
            Some(Heal::Undelay { ids })
        }
        FaultKind::ServiceChurn => {
            // Whole services leave for good and new names arrive: with more
            // churn than the range has ports, an allocator that never reuses
            // a freed port runs dry.
            let live = rec.with(|h| h.live.clone());
            let gone = schedule::pick(&live, p.count, p.fraction, p.pick);
            for svc in &gone {
                let names: Vec<String> = topo
                    .containers(Some(svc))
                    .await?
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                remove_inner(t, &names).await?;
            }
            let new: Vec<String> = (0..gone.len())
                .map(|i| format!("churn-{seq}-{i}"))
                .collect();
            // With a hold, the new names start when it ends (e.g. only after
            // an engine cut, so no new container takes a vanished one's
            // address while the bridge cannot see either).
            let later = p.hold_ms > 0;
            if !later {
                for svc in &new {
                    topo.start_stub(svc, svc).await?;
                }
            }
            if let Ok(mut g) = probe_list.lock() {
                g.retain(|s| !gone.contains(s));
                g.extend(new.iter().cloned());
            }
            rec.with(|h| {
                for list in [&mut h.live, &mut h.probed] {
                    list.retain(|s| !gone.contains(s));
                    list.extend(new.iter().cloned());
                }
            });
            record.target = format!("removed {}; new {}", gone.join(","), new.join(","));
            record.services = gone.iter().chain(&new).cloned().collect();
            record.until_ms = now();
            later.then(|| Heal::Replace {
                names: new.iter().map(|n| (n.clone(), n.clone())).collect(),
            })
        }
        FaultKind::ServiceBurst => {
            // Many new services in the same instant: every `docker run` is
            // started before any is waited for.
            let n = p.count.unwrap_or(6) as usize;
            let new: Vec<String> = (0..n).map(|i| format!("burst-{seq}-{i}")).collect();
            let mut runs = tokio::task::JoinSet::new();
            for svc in &new {
                let args = topo.stub_args(svc, svc);
                let engine = t.inner.clone();
                runs.spawn(async move {
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    engine.run(&argv).await.map(drop)
                });
            }
            let mut failed = Vec::new();
            while let Some(r) = runs.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed.push(format!("{e:#}")),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if let Ok(mut g) = probe_list.lock() {
                g.extend(new.iter().cloned());
            }
            rec.with(|h| {
                h.live.extend(new.iter().cloned());
                h.probed.extend(new.iter().cloned());
            });
            if !failed.is_empty() {
                record.error = Some(format!(
                    "{} of {n} starts failed: {}",
                    failed.len(),
                    failed[0]
                ));
            }
            record.target = format!(
                "{n} new services at once ({}..)",
                new.first().map_or("", String::as_str)
            );
            record.services = new;
            record.until_ms = now();
            None
        }
        FaultKind::DuplicateStorm => {
            let n = p.count.unwrap_or(3);
            let mut sent = 0u64;
            let mut refused = 0u64;
            for s in &probed {
                for _ in 0..n {
                    match t.reserve(s).await {
                        // 200: already held (a duplicate); 201 would be a new reservation.
                        Ok((200, _)) => sent += 1,
                        _ => refused += 1,
                    }
                }
            }
            rec.with(|h| {
                if let Some(d) = h.expect.duplicates.as_mut() {
                    *d += sent;
                }
            });
            record.target = format!(
                "{sent} re-registrations of {} live services ({refused} refused)",
                probed.len()
            );
            if refused > 0 {
                record.error = Some(format!("{refused} re-registrations refused by the API"));
            }
            None
        }
        k => bail!("fault {k} is not implemented by the scenario runner"),
    };
    Ok((record, heal))
}
