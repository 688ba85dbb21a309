//! The measurements. Each returns its report rows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use super::infra::{self, Bridge, BridgeSpec, PHASE_LABEL, Proc, RUN_LABEL, TOKEN, progress};
use super::relay::Relay;
use super::{Row, ratio, sink};

/// What every phase needs.
#[derive(Debug)]
pub struct Ctx {
    /// When the bench started.
    pub t0: Instant,
    /// The release bridge binary (a copy).
    pub bin: PathBuf,
    /// Run label value.
    pub run: String,
    /// Quick mode.
    pub quick: bool,
    /// P2 starts.
    pub starts: usize,
    /// P3 services.
    pub services: usize,
}

impl Ctx {
    fn note(&self, msg: &str) {
        progress(self.t0, msg);
    }

    fn filters(&self, phase: &str) -> Vec<String> {
        vec![
            format!("{RUN_LABEL}={}", self.run),
            format!("{PHASE_LABEL}={phase}"),
        ]
    }

    fn spec(&self, name: &str, ports: String, relay: &Relay) -> BridgeSpec {
        BridgeSpec {
            name: name.to_string(),
            ports,
            resync: "30s".into(),
            docker_host: relay.url(),
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> f64 {
    pct(&sorted(v.to_vec()), 0.5)
}

// ----------------------------------------------------------------- P1 ----

/// `cargo bench -p mesh-bridge --bench pool`, then criterion's estimate.
pub fn p1(quick: bool) -> Result<Vec<Row>> {
    let root = infra::workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let started = SystemTime::now();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["bench", "-p", "mesh-bridge", "--bench", "pool", "--"])
        .current_dir(&root)
        .stdin(Stdio::null());
    if quick {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    }
    let st = cmd.status().context("cannot run cargo bench")?;
    ensure!(st.success(), "cargo bench failed ({st})");
    let (full_id, estimates) = find_estimates(&target.join("criterion"), started)?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&estimates)?)?;
    let (stat, ns) = ["slope", "mean"]
        .iter()
        .find_map(|k| Some((*k, v.get(*k)?.get("point_estimate")?.as_f64()?)))
        .context("no estimate in criterion's estimates.json")?;
    let docker_ns = 650.0;
    // One iteration is a reserve plus a release: two operations.
    let pair_ns = ns;
    let ns = pair_ns / 2.0;
    Ok(vec![Row {
        id: "P1",
        what: format!(
            "`{full_id}` (crates/bridge/benches/pool.rs): ns per operation = half of one reserve + release pair ({pair_ns:.1} ns) on 1024-65535 with 90% reserved, criterion {stat} point estimate{}, read from {}",
            if quick {
                " (quick: 1 s warm-up, 3 s measurement)"
            } else {
                ""
            },
            estimates.display()
        ),
        value: ns,
        unit: "ns",
        baseline: "Docker's port allocator, ~650 ns per port (a constant from the issue, not measured here)".into(),
        baseline_value: docker_ns,
        ratio: ratio(ns, docker_ns),
        goal: "<= 50 ns".into(),
        met: ns <= 50.0,
    }])
}

fn find_estimates(dir: &Path, since: SystemTime) -> Result<(String, PathBuf)> {
    let mut stack = vec![dir.to_path_buf()];
    let mut found = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("new/benchmark.json")
                && let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(id) = v.get("full_id").and_then(|x| x.as_str())
                && id.starts_with("pool/")
                && id.contains("allocate+release")
            {
                let est = p.with_file_name("estimates.json");
                let fresh = std::fs::metadata(&est)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since);
                if fresh {
                    found.push((id.to_string(), est));
                }
            }
        }
    }
    found
        .pop()
        .with_context(|| format!("no fresh pool estimates.json under {}", dir.display()))
}

// ---------------------------------------------------------- API burst ----

type Sender = SendRequest<Full<Bytes>>;

async fn connect_api(addr: SocketAddr, n: usize) -> Result<Vec<Sender>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        out.push(send);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Call {
    GetPool,
    Reserve,
}

/// `total` requests spread over the connections (each sequential on its own);
/// returns the wall time, the connections back and the status counts.
async fn burst(
    addr: SocketAddr,
    conns: Vec<Sender>,
    total: usize,
    call: Call,
    prefix: &str,
) -> Result<(Duration, Vec<Sender>, BTreeMap<u16, usize>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let prefix: Arc<str> = Arc::from(prefix);
    let host = addr.to_string();
    let t = Instant::now();
    let mut set = JoinSet::new();
    for mut s in conns {
        let next = Arc::clone(&next);
        let prefix = Arc::clone(&prefix);
        let host = host.clone();
        set.spawn(async move {
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let req = match call {
                    Call::GetPool => Request::get("/v1/pool")
                        .header("host", &host)
                        .body(Full::new(Bytes::new()))?,
                    Call::Reserve => Request::post("/v1/reservations")
                        .header("host", &host)
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(Full::new(Bytes::from(format!(
                            "{{\"service\":\"{prefix}-{i:05}\"}}"
                        ))))?,
                };
                s.ready().await?;
                let resp = s.send_request(req).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                *statuses.entry(status).or_default() += 1;
            }
            Ok::<_, anyhow::Error>((s, statuses))
        });
    }
    let mut back = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = set.join_next().await {
            let (s, st) = r??;
            back.push(s);
            for (k, v) in st {
                *statuses.entry(k).or_default() += v;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    let elapsed = t.elapsed();
    match all {
        Ok(r) => r?,
        Err(_) => bail!("the burst did not finish within 120 s"),
    }
    Ok((elapsed, back, statuses))
}

// ----------------------------------------------------------------- P6 ----

/// 10,000 reservations through the API in a burst.
pub async fn p6(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = 10_000;
    let clients = 64;
    ctx.note("P6: bridge for the API burst");
    let relay = Relay::start(ctx.filters("none")).await?;
    let mut b = Bridge::start(&ctx.bin, ctx.spec("p6", "40000-59999".into(), &relay))?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let conns = connect_api(b.api, clients).await?;
    // Warm both paths a little (connections, allocator), unmeasured.
    let (_, conns, _) = burst(b.api, conns, 256, Call::GetPool, "warm").await?;
    ctx.note(&format!(
        "P6: baseline {n} GET /v1/pool over {clients} connections"
    ));
    let (get_t, conns, get_st) = burst(b.api, conns, n, Call::GetPool, "").await?;
    ensure!(
        get_st.get(&200) == Some(&n),
        "GET /v1/pool statuses: {get_st:?}"
    );
    ctx.note(&format!(
        "P6: {n} POST /v1/reservations over {clients} connections"
    ));
    let (post_t, conns, post_st) = burst(b.api, conns, n, Call::Reserve, "burst").await?;
    drop(conns);
    ensure!(
        post_st.get(&201) == Some(&n),
        "POST /v1/reservations statuses: {post_st:?} (see {})",
        b.log_hint()
    );
    let pool = mesh_chaos::http::get_json(b.api, "/v1/pool").await?;
    let in_use = pool.get("in_use").and_then(|v| v.as_u64()).unwrap_or(0);
    let metrics = mesh_chaos::http::get_text(b.api, "/metrics").await?;
    let m = mesh_chaos::http::parse_metrics(&metrics);
    let txs = m
        .get("mesh_bridge_store_write_duration_seconds_count")
        .copied()
        .unwrap_or(0.0);
    let tx_secs = m
        .get("mesh_bridge_store_write_duration_seconds_sum")
        .copied()
        .unwrap_or(0.0);
    // Durable when answered: kill -9 at once, then read the store.
    b.kill9();
    let out = Command::new(&ctx.bin)
        .args(["state", "export", "--state-dir"])
        .arg(&b.state_dir)
        .output()?;
    ensure!(
        out.status.success(),
        "state export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let stored = export
        .get("reservations")
        .and_then(|r| r.as_array())
        .map_or(0, |a| a.len());
    let ms = post_t.as_secs_f64() * 1e3;
    let base = get_t.as_secs_f64() * 1e3;
    Ok(vec![Row {
        id: "P6",
        what: format!(
            "{n} POST /v1/reservations (distinct services, no port given) from {clients} concurrent keep-alive HTTP/1.1 connections, wall time to the last answer; all {n} answered 201; pool in_use {in_use}; after kill -9 right after the last answer `state export` holds {stored} reservations (durable when answered); the bridge wrote {txs} store transactions taking {:.0} ms in all (store_write_duration_seconds)",
            tx_secs * 1e3
        ),
        value: ms,
        unit: "ms",
        baseline: format!(
            "{n} GET /v1/pool on the same {clients} connections, same bridge (pure HTTP cost)"
        ),
        baseline_value: base,
        ratio: ratio(ms, base),
        goal: "<= 1000 ms".into(),
        met: ms <= 1000.0 && stored == n && in_use as usize == n,
    }])
}

// ----------------------------------------------------------------- P5 ----

/// RSS and idle CPU with 1,000 services reserved.
pub async fn p5(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = 1000;
    let window = if ctx.quick { 10 } else { 30 };
    ctx.note("P5: an empty bridge and one with 1000 reservations");
    let relay = Relay::start(ctx.filters("none")).await?;
    let mut empty = Bridge::start(&ctx.bin, ctx.spec("p5-empty", "40000-41999".into(), &relay))?;
    let mut full = Bridge::start(&ctx.bin, ctx.spec("p5-1000", "42000-43999".into(), &relay))?;
    empty.wait_ready(Duration::from_secs(30)).await?;
    full.wait_ready(Duration::from_secs(30)).await?;
    let conns = connect_api(full.api, 16).await?;
    let (_, conns, st) = burst(full.api, conns, n, Call::Reserve, "idle").await?;
    drop(conns);
    ensure!(st.get(&201) == Some(&n), "reservations: {st:?}");
    // Let connections close and allocator caches settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pe, pf) = (
        empty.pid().context("empty bridge gone")?,
        full.pid().context("bridge gone")?,
    );
    let tck = infra::clk_tck() as f64;
    let (e0, f0, w0) = (infra::cpu_ticks(pe)?, infra::cpu_ticks(pf)?, Instant::now());
    ctx.note(&format!("P5: idle for {window} s"));
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (e1, f1, secs) = (
        infra::cpu_ticks(pe)?,
        infra::cpu_ticks(pf)?,
        w0.elapsed().as_secs_f64(),
    );
    let rss_e = infra::rss_kib(pe)? as f64 / 1024.0;
    let rss_f = infra::rss_kib(pf)? as f64 / 1024.0;
    let cpu_e = (e1 - e0) as f64 / tck / secs * 100.0;
    let cpu_f = (f1 - f0) as f64 / tck / secs * 100.0;
    let quick = if ctx.quick {
        format!(" (quick: {window} s instead of 30 s)")
    } else {
        String::new()
    };
    Ok(vec![
        Row {
            id: "P5-rss",
            what: format!(
                "VmRSS (/proc/PID/status) of the bridge holding {n} reservations made through the API, idle, after the idle window"
            ),
            value: rss_f,
            unit: "MiB",
            baseline: "the same binary with 0 services, started alongside".into(),
            baseline_value: rss_e,
            ratio: ratio(rss_f, rss_e),
            goal: "<= 32 MiB".into(),
            met: rss_f <= 32.0,
        },
        Row {
            id: "P5-idle-cpu",
            what: format!(
                "utime+stime (/proc/PID/stat) over {secs:.1} s idle{quick}, as % of one core, with {n} reservations (--resync 30s, the default)"
            ),
            value: cpu_f,
            unit: "%",
            baseline: "the same binary with 0 services, same window".into(),
            baseline_value: cpu_e,
            ratio: ratio(cpu_f, cpu_e),
            goal: "<= 1 %".into(),
            met: cpu_f <= 1.0,
        },
    ])
}

// ----------------------------------------------------------------- P4 ----

fn docker_proxy_path() -> Result<PathBuf> {
    ["/usr/sbin/docker-proxy", "/usr/bin/docker-proxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("docker-proxy not found: apt-get install docker.io")
}

/// A copy of this executable that other builds cannot replace mid-run.
fn own_exe() -> Result<PathBuf> {
    let dir = infra::bench_dir().join("bin");
    std::fs::create_dir_all(&dir)?;
    let dst = dir.join("xtask-sink");
    let tmp = dir.join(format!("xtask-sink.{}", std::process::id()));
    std::fs::copy("/proc/self/exe", &tmp)?;
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

/// Bulk throughput and small request/response latency.
pub async fn p4(ctx: &Ctx) -> Result<Vec<Row>> {
    let (bytes, rounds, pings) = if ctx.quick {
        (256u64 << 20, 3, 2000)
    } else {
        (1u64 << 30, 5, 5000)
    };
    let port = 9000u16;
    ctx.note("P4: target container, sink in its network namespace");
    let stub = infra::stub(
        &ctx.run,
        "p4",
        "bulk",
        &["--label", &format!("mesh-bridge.port={port}")],
        true,
    )?;
    let (ip, pid) = infra::inspect_ip_pid(&stub.id)?;
    let exe = own_exe()?;
    let _sink = Proc(
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "--"])
            .arg(&exe)
            .args(["bench", "--serve-sink", &format!("0.0.0.0:{port}")])
            .stdin(Stdio::null())
            .spawn()
            .context("nsenter")?,
    );
    let direct = SocketAddr::from((ip, port));
    tokio::task::spawn_blocking(move || sink::wait_echo(direct, Duration::from_secs(10))).await??;

    let dp_port = infra::free_range(1)?.0;
    // docker-proxy reports readiness on fd 3 and then closes it; without an
    // fd 3 its listener gets that number and is closed. `exec` keeps the pid.
    let _dp = Proc(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {} -proto tcp -host-ip 127.0.0.1 -host-port {dp_port} -container-ip {ip} -container-port {port} 3>/dev/null",
                docker_proxy_path()?.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("docker-proxy")?,
    );
    let proxied = SocketAddr::from((Ipv4Addr::LOCALHOST, dp_port));
    tokio::task::spawn_blocking(move || sink::wait_echo(proxied, Duration::from_secs(10)))
        .await??;

    let relay = Relay::start(ctx.filters("p4")).await?;
    let (lo, hi) = infra::free_range(4)?;
    let mut b = Bridge::start(&ctx.bin, ctx.spec("p4", format!("{lo}-{hi}"), &relay))?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mesh_port = loop {
        if let Some(p) = b.ports().await?.get("bulk") {
            break *p;
        }
        ensure!(Instant::now() < deadline, "no port for `bulk`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mesh = SocketAddr::from((Ipv4Addr::LOCALHOST, mesh_port));
    tokio::task::spawn_blocking(move || sink::wait_echo(mesh, Duration::from_secs(10))).await??;

    ctx.note(&format!(
        "P4: {rounds} rounds x {} MiB upload on each path",
        bytes >> 20
    ));
    let paths = [
        ("direct", direct),
        ("mesh", mesh),
        ("docker-proxy", proxied),
    ];
    let (tput, lat) = tokio::task::spawn_blocking(move || {
        let mut tput: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in 0..rounds {
            for k in 0..paths.len() {
                let (name, addr) = paths[(r + k) % paths.len()];
                tput.entry(name)
                    .or_default()
                    .push(sink::upload(addr, bytes)?);
            }
        }
        let mut lat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in 0..rounds {
            for k in 0..paths.len() {
                let (name, addr) = paths[(r + k) % paths.len()];
                lat.entry(name)
                    .or_default()
                    .extend(sink::ping_pong(addr, 64, 200, pings)?);
            }
        }
        Ok::<_, anyhow::Error>((tput, lat))
    })
    .await??;
    let t = |k: &str| median(tput.get(k).map_or(&[][..], Vec::as_slice));
    let l = |k: &str| pct(&sorted(lat.get(k).cloned().unwrap_or_default()), 0.5);
    let (t_direct, t_mesh, t_dp) = (t("direct"), t("mesh"), t("docker-proxy"));
    let (l_direct, l_mesh, l_dp) = (l("direct"), l("mesh"), l("docker-proxy"));
    let added = l_mesh - l_direct;
    let dp_added = l_dp - l_direct;
    let vs_dp = if added > 0.0 {
        dp_added / added
    } else {
        f64::INFINITY
    };
    let size = format!("{} MiB", if bytes >= 1 << 30 { 1024 } else { bytes >> 20 });
    let q = if ctx.quick { " (quick)" } else { "" };
    let tputs = |k: &str| {
        tput.get(k)
            .map(|v| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default()
    };
    Ok(vec![
        Row {
            id: "P4-throughput-vs-direct",
            what: format!(
                "one TCP stream uploading {size}{q} to a sink in the target container's netns, through the mesh port; median of {rounds} interleaved rounds (MiB/s per round: mesh {}, direct {}, docker-proxy {})",
                tputs("mesh"),
                tputs("direct"),
                tputs("docker-proxy")
            ),
            value: t_mesh,
            unit: "MiB/s",
            baseline: "the same upload straight to the container's IP".into(),
            baseline_value: t_direct,
            ratio: ratio(t_mesh, t_direct),
            goal: "ratio >= 0.9".into(),
            met: ratio(t_mesh, t_direct).is_some_and(|r| r >= 0.9),
        },
        Row {
            id: "P4-throughput-vs-docker-proxy",
            what: format!(
                "as above: mesh MiB/s against docker-proxy ({}) run by hand in front of the same container and port",
                docker_proxy_path()?.display()
            ),
            value: t_mesh,
            unit: "MiB/s",
            baseline: "docker-proxy -proto tcp -host-ip 127.0.0.1 ... same upload".into(),
            baseline_value: t_dp,
            ratio: ratio(t_mesh, t_dp),
            goal: "ratio >= 1.0".into(),
            met: ratio(t_mesh, t_dp).is_some_and(|r| r >= 1.0),
        },
        Row {
            id: "P4-latency-added",
            what: format!(
                "p50 round trip of 64 B request/response on one open connection ({rounds} x {pings} each path{q}), mesh p50 {l_mesh:.1} us minus direct p50 {l_direct:.1} us"
            ),
            value: added,
            unit: "us",
            baseline: "direct p50 round trip (us); ratio = mesh p50 / direct p50".into(),
            baseline_value: l_direct,
            ratio: ratio(l_mesh, l_direct),
            goal: "<= 50 us".into(),
            met: added <= 50.0,
        },
        Row {
            id: "P4-latency-vs-docker-proxy",
            what: format!(
                "docker-proxy's added p50 ({l_dp:.1} - {l_direct:.1} us) divided by ours ({added:.1} us)"
            ),
            value: vs_dp,
            unit: "x",
            baseline: "docker-proxy added p50 latency (us)".into(),
            baseline_value: dp_added,
            ratio: Some(vs_dp),
            goal: ">= 1.0".into(),
            met: vs_dp >= 1.0,
        },
    ])
}

// -------------------------------------------------------------- P2/P3 ----

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
            Err(mesh_chaos::stub::StubError::Timeout { .. }) => timeouts += 1,
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("{service} did not answer at {addr} within 15 s");
        }
        if let Some(api) = lookup
            && Instant::now() >= next_lookup
        {
            next_lookup = Instant::now() + Duration::from_millis(250);
            if let Ok(v) = mesh_chaos::http::get_json(api, &format!("/v1/services/{service}")).await
                && let Some(p) = v.get("port").and_then(|p| p.as_u64())
                && p as u16 != addr.port()
            {
                addr.set_port(p as u16);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 50.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&[3.0], 0.99), 3.0);
    }
}
