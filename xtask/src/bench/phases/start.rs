//! P2 and P3: container start to first answer, and kill -9 to every service
//! answering again on its unchanged port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use mesh_bridge::contract;
use tokio::task::JoinSet;

use crate::bench::infra::{self, Bridge, Proc, RUN_LABEL};
use crate::bench::{Row, ratio};
use mesh_chaos::docker_relay::Relay;

use super::{Ctx, median, pct, sorted};

/// A Docker network of this run, removed on drop (after its containers).
struct Network {
    name: String,
    base: u32,
    hosts: u32,
}

impl Network {
    fn create(run: &str) -> Result<Network> {
        let name = format!("mb-bench-{run}");
        let _ = infra::docker(&["network", "rm", &name]);
        // `--ip` needs a subnet given by the user: try a few /24s.
        let seed: u32 = run.parse().unwrap_or(0);
        let mut created = Err(anyhow::anyhow!("no subnet tried"));
        for k in 0..20 {
            let subnet = format!("10.251.{}.0/24", (seed + k * 37) % 250);
            created = infra::docker(&[
                "network",
                "create",
                "--subnet",
                &subnet,
                "--label",
                &format!("{RUN_LABEL}={run}"),
                &name,
            ]);
            if created.is_ok() {
                break;
            }
        }
        created.context("cannot create the bench network")?;
        let subnet = infra::docker(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            &name,
        ])?;
        let mut net = Network {
            name,
            base: 0,
            hosts: 0,
        };
        let cidr = subnet
            .split_whitespace()
            .find(|s| s.contains('.'))
            .context("network has no IPv4 subnet")?;
        let (ip, len) = cidr.split_once('/').context("bad subnet")?;
        let ip: Ipv4Addr = ip.parse()?;
        let len: u32 = len.parse()?;
        ensure!(len <= 30, "subnet {cidr} too small");
        net.base = u32::from(ip);
        net.hosts = (1u32 << (32 - len)) - 2;
        Ok(net)
    }

    /// The i-th address handed out (gateway .1 and a margin skipped).
    fn ip(&self, i: usize) -> Result<Ipv4Addr> {
        let off = 10 + i as u32;
        ensure!(off < self.hosts, "subnet too small for {i} containers");
        Ok(Ipv4Addr::from(self.base + off))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = infra::docker(&["network", "rm", &self.name]);
    }
}

/// `docker events` for this run's container starts: (id, time ns).
fn start_events(
    run: &str,
    since: SystemTime,
) -> Result<(Proc, tokio::sync::mpsc::UnboundedReceiver<(String, i128)>)> {
    let since = since.duration_since(UNIX_EPOCH)?;
    let mut child = Command::new("docker")
        .args(["events", "--since"])
        .arg(format!("{}.{:09}", since.as_secs(), since.subsec_nanos()))
        .args(["--filter", &format!("label={RUN_LABEL}={run}")])
        .args(["--filter", "type=container", "--filter", "event=start"])
        .args(["--format", "{{.ID}} {{.TimeNano}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().context("no stdout")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let mut it = line.split_whitespace();
            if let (Some(id), Some(ns)) = (it.next(), it.next().and_then(|n| n.parse().ok()))
                && tx.send((id.to_string(), ns)).is_err()
            {
                break;
            }
        }
    });
    Ok((Proc(child), rx))
}

/// Time from `origin` to the first `initialize` answered as `service` at
/// `addr` (ms). `lookup` (mesh only): the bridge's API, asked every 250 ms
/// for the service's port in case it is not the one expected. Returns the
/// figure, whether the port had to be looked up, and how many attempts ran
/// into the 100 ms attempt timeout (a connection accepted but not answered).
async fn first_answer(
    mut addr: SocketAddr,
    service: &str,
    origin: SystemTime,
    lookup: Option<SocketAddr>,
) -> Result<(f64, bool, u32)> {
    let attempt = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut next_lookup = Instant::now() + Duration::from_millis(250);
    let mut looked_up = false;
    let mut timeouts = 0;
    loop {
        match mesh_chaos::stub::initialize(addr, attempt).await {
            Ok(name) if name == service => {
                let ms = SystemTime::now()
                    .duration_since(origin)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e3);
                return Ok((ms, looked_up, timeouts));
            }
            Err(mesh_chaos::stub::StubError::Transport(mesh_chaos::http::HttpError::Timeout {
                ..
            })) => timeouts += 1,
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("{service} did not answer at {addr} within 15 s");
        }
        if let Some(api) = lookup
            && Instant::now() >= next_lookup
        {
            next_lookup = Instant::now() + Duration::from_millis(250);
            if let Ok(v) = mesh_chaos::http::get_json::<contract::api::ServiceView>(
                api,
                &format!("{}{service}", contract::api::SERVICE_PREFIX),
            )
            .await
                && let Some(p) = v.port
                && p != addr.port()
            {
                addr.set_port(p);
                looked_up = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Until every service answers as itself on its port; ms since `origin`.
/// When each service first answered as itself, ms from `origin` (sorted), and
/// the services that never did within 30 s.
#[derive(Debug)]
struct Answers {
    ms: Vec<f64>,
    failed: Vec<String>,
}

impl Answers {
    /// The last answer: every service answering.
    fn last(&self) -> f64 {
        self.ms.last().copied().unwrap_or(0.0)
    }

    /// First, median and last answer, for the report.
    fn spread(&self) -> String {
        match (self.ms.first(), self.ms.get(self.ms.len() / 2)) {
            (Some(first), Some(p50)) => {
                format!("first {first:.0}, p50 {p50:.0}, last {:.0} ms", self.last())
            }
            _ => "none answered".into(),
        }
    }
}

/// Polls every service's port (each client retries every 10 ms) until it
/// answers MCP initialize as itself.
async fn all_answer(ports: &BTreeMap<String, u16>, origin: Instant) -> Result<Answers> {
    let mut set = JoinSet::new();
    for (svc, port) in ports {
        let svc = svc.clone();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
        set.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(name) =
                    mesh_chaos::stub::initialize(addr, Duration::from_millis(2500)).await
                    && name == svc
                {
                    return (svc, Some(origin.elapsed()));
                }
                if Instant::now() >= deadline {
                    return (svc, None);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    let mut out = Answers {
        ms: Vec::new(),
        failed: Vec::new(),
    };
    while let Some(r) = set.join_next().await {
        match r? {
            (_, Some(d)) => out.ms.push(d.as_secs_f64() * 1e3),
            (svc, None) => out.failed.push(svc),
        }
    }
    out.ms.sort_by(f64::total_cmp);
    Ok(out)
}

/// P2 (starts, one by one) then P3 (kill -9 with `services` serving).
pub async fn p2_p3(ctx: &Ctx, do_p2: bool, do_p3: bool) -> Result<Vec<Row>> {
    let net = Network::create(&ctx.run)?;
    let relay = Relay::start(ctx.filters("p23")).await?;
    let mut rows = Vec::new();
    let mut stubs: Vec<infra::Stub> = Vec::new();
    let result = async {
        let starts = if do_p2 { ctx.starts } else { 0 };
        if do_p2 {
            rows.extend(p2(ctx, &net, &relay, starts, &mut stubs).await?);
        }
        if do_p3 {
            rows.extend(p3(ctx, &net, &relay, &mut stubs).await?);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Remove the containers in bulk before the network goes.
    let ids: Vec<String> = stubs
        .iter_mut()
        .map(|s| std::mem::take(&mut s.id))
        .collect();
    for chunk in ids.chunks(50) {
        let mut a = vec!["rm", "-f"];
        a.extend(chunk.iter().map(String::as_str));
        let _ = infra::docker(&a);
    }
    drop(stubs);
    drop(net);
    result.map(|()| rows)
}

async fn p2(
    ctx: &Ctx,
    net: &Network,
    relay: &Relay,
    starts: usize,
    stubs: &mut Vec<infra::Stub>,
) -> Result<Vec<Row>> {
    let (lo, hi) = infra::free_range(u16::try_from(starts)? + 8)?;
    let mut b = Bridge::start(&ctx.bin, ctx.spec("p2", format!("{lo}-{hi}"), relay))?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let (_events, mut rx) = start_events(&ctx.run, SystemTime::now())?;
    ctx.note(&format!("P2: {starts} container starts, one by one"));
    let mut mesh = Vec::new();
    let mut direct = Vec::new();
    let mut looked_up = 0;
    let mut held_starts = 0;
    let mut held_samples: Vec<String> = Vec::new();
    for i in 0..starts {
        let service = format!("p2-{i:03}");
        let ip = net.ip(stubs.len())?;
        let stub = infra::stub(
            &ctx.run,
            "p23",
            &service,
            &["--network", &net.name, "--ip", &ip.to_string()],
            false,
        )?;
        let id = stub.id.clone();
        stubs.push(stub);
        let starter = std::thread::spawn(move || infra::docker(&["start", &id]));
        let wait = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some((eid, ns)) = rx.recv().await {
                if stubs.last().is_some_and(|s| s.id.starts_with(&eid)) {
                    return Some(ns);
                }
            }
            None
        })
        .await;
        let ns = match wait {
            Ok(Some(ns)) => ns,
            _ => {
                let why = match starter.join() {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "docker start returned".into(),
                };
                bail!("no start event for {service} ({why})")
            }
        };
        let origin = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns)?);
        let predicted = SocketAddr::from((Ipv4Addr::LOCALHOST, lo + i as u16));
        let (m, d) = tokio::join!(
            first_answer(predicted, &service, origin, Some(b.api)),
            first_answer(SocketAddr::from((ip, 8080)), &service, origin, None),
        );
        match starter.join() {
            Ok(r) => {
                r?;
            }
            Err(_) => bail!("docker start thread panicked"),
        }
        let (m, lk, held) = m?;
        let (d, _, _) = d?;
        looked_up += usize::from(lk);
        if held > 0 {
            held_starts += 1;
            held_samples.push(format!("{m:.0}"));
        }
        mesh.push(m);
        direct.push(d);
        if (i + 1) % 25 == 0 {
            ctx.note(&format!(
                "P2: {} starts, mesh p50 {:.1} ms, direct p50 {:.1} ms",
                i + 1,
                median(&mesh),
                median(&direct)
            ));
        }
    }
    let metrics = mesh_chaos::http::get_text(b.api, "/metrics").await.ok();
    let reg = metrics
        .as_deref()
        .map(registration_summary)
        .unwrap_or_default();
    b.kill9();
    let (ms, ds) = (sorted(mesh), sorted(direct));
    let q = if ctx.quick {
        format!(" (quick: {starts} starts instead of 100)")
    } else {
        String::new()
    };
    let what = |p: &str| {
        format!(
            "container start event (docker events TimeNano) to the first MCP initialize answered as the service through its mesh port, {p} over {starts} starts{q}, one container at a time, each created then `docker start`ed with the bridge following Docker through a label-filtering relay; {looked_up} ports had to be looked up in the API (next-fit predicted the rest); {held_starts} starts had a mesh attempt accepted but unanswered for 100 ms (the bridge held it: replica dialled before it listened), their figures (ms): [{}]; bridge's own registration_latency_seconds: {reg}",
            held_samples.join(", ")
        )
    };
    let base = "the same container reached directly on its IP:8080 from the same event (time to first answer)";
    let (m50, d50, m99, d99) = (pct(&ms, 0.5), pct(&ds, 0.5), pct(&ms, 0.99), pct(&ds, 0.99));
    Ok(vec![
        Row {
            id: "P2-p50",
            what: what("p50"),
            value: m50,
            unit: "ms",
            baseline: base.into(),
            baseline_value: d50,
            ratio: ratio(m50, d50),
            goal: "<= 10 ms".into(),
            met: m50 <= 10.0,
        },
        Row {
            id: "P2-p99",
            what: what("p99"),
            value: m99,
            unit: "ms",
            baseline: base.into(),
            baseline_value: d99,
            ratio: ratio(m99, d99),
            goal: "<= 50 ms".into(),
            met: m99 <= 50.0,
        },
    ])
}

fn registration_summary(text: &str) -> String {
    let m = mesh_chaos::http::parse_metrics(text);
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let n = get("mesh_bridge_registration_latency_seconds_count");
    let s = get("mesh_bridge_registration_latency_seconds_sum");
    if n > 0.0 {
        format!("mean {:.1} ms over {n}", s / n * 1e3)
    } else {
        "none observed".into()
    }
}

/// Waits for the machine to settle before a P3 measurement (see
/// [`infra::settle`]), and says how long that took.
async fn settle(ctx: &Ctx) -> Result<()> {
    let (idle, waited) = infra::settle(SETTLED_IDLE, Duration::from_secs(60)).await?;
    let verdict = if idle >= SETTLED_IDLE {
        "settled"
    } else {
        "still busy, measuring anyway"
    };
    ctx.note(&format!(
        "P3: machine {verdict}: {:.0} % idle after {:.1} s",
        idle * 100.0,
        waited.as_secs_f64()
    ));
    Ok(())
}

/// The idle share of the machine's CPU that counts as settled for P3.
const SETTLED_IDLE: f64 = 0.8;

async fn p3(
    ctx: &Ctx,
    net: &Network,
    relay: &Relay,
    stubs: &mut Vec<infra::Stub>,
) -> Result<Vec<Row>> {
    let want = ctx.services;
    if stubs.len() < want {
        ctx.note(&format!(
            "P3: starting {} more containers ({} in all)",
            want - stubs.len(),
            want
        ));
        let first = stubs.len();
        let specs: Vec<(String, Vec<String>)> = (first..want)
            .map(|i| {
                Ok((
                    format!("p3-{i:03}"),
                    vec![
                        "--network".to_string(),
                        net.name.clone(),
                        "--ip".to_string(),
                        net.ip(i)?.to_string(),
                    ],
                ))
            })
            .collect::<Result<_>>()?;
        let run = ctx.run.clone();
        let started =
            tokio::task::spawn_blocking(move || infra::stubs_parallel(&run, "p23", &specs)).await?;
        stubs.extend(started?);
    }
    let (lo, hi) = infra::free_range(u16::try_from(want)? + 16)?;
    settle(ctx).await?;
    ctx.note("P3: cold start (empty state) with every container running");
    let mut b = Bridge::start(&ctx.bin, ctx.spec("p3", format!("{lo}-{hi}"), relay))?;
    let origin = b.spawned_at;
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let Ok(p) = b.ports().await {
            let mine = p
                .into_iter()
                .filter(|(s, _)| stubs.iter().any(|x| &x.service == s))
                .collect::<BTreeMap<_, _>>();
            if mine.len() == stubs.len() {
                break mine;
            }
        }
        ensure!(Instant::now() < deadline, "not every service got a port");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cold = all_answer(&before, origin).await?;
    ensure!(
        cold.failed.is_empty(),
        "cold start: not answering: {:?}",
        cold.failed
    );
    b.wait_ready(Duration::from_secs(10)).await?;
    ctx.note(&format!(
        "P3: cold start {}; kill -9 and restart with {want} services serving",
        cold.spread()
    ));
    settle(ctx).await?;
    b.kill9();
    b.spawn()?;
    let origin = b.spawned_at;
    // Wall clock of the spawn, to line up with the bridge's log timestamps.
    let spawned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let warm = all_answer(&before, origin).await?;
    ctx.note(&format!(
        "P3: restarted (spawned at unix {spawned:.3}), answers {}",
        warm.spread()
    ));
    let failed = warm.failed.clone();
    b.wait_ready(Duration::from_secs(20)).await?;
    let after = b.ports().await?;
    let changed = before
        .iter()
        .filter(|(s, p)| after.get(*s) != Some(*p))
        .count();
    let changed = changed.max(failed.len());
    b.kill9();
    Ok(vec![Row {
        id: "P3",
        what: format!(
            "kill -9 of the bridge with {want} services serving (machine settled first: >= {:.0} % idle over 1 s), restart on the same state: process spawn to every service answering MCP initialize as itself on its unchanged port (clients retry every 10 ms; answers {}); ports changed: {changed} of {want}; not answering: {}",
            SETTLED_IDLE * 100.0,
            warm.spread(),
            failed.len()
        ),
        value: warm.last(),
        unit: "ms",
        baseline: format!(
            "cold start: the same {want} running containers on the settled machine, empty state dir, spawn to every service answering (ports read from the API; answers {})",
            cold.spread()
        ),
        baseline_value: cold.last(),
        ratio: ratio(warm.last(), cold.last()),
        goal: "<= 1000 ms, 0 ports changed".into(),
        met: warm.last() <= 1000.0 && changed == 0 && failed.is_empty(),
    }])
}
