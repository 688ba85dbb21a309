//! P7: MCP `tools/call` round trips in sessions, through the mesh port, to
//! three replicas of the stateful stub, beside two baselines measured on the
//! same replicas in the same run: HAProxy (Debian's package) pinning sessions
//! with a stick table learnt from `Mcp-Session-Id`, and one replica direct.
//!
//! Each session is one keep-alive client connection: `initialize`, then
//! `tools/call echo` in a loop for the measuring window; requests/s over all
//! sessions and the p50/p99 of each round trip, at 1 and 32 sessions. The
//! paths take turns for [`ROUNDS`] rounds and each figure is the median.
//!
//! Then a second bridge and a second HAProxy run under callgrind
//! ([`crate::bench::callgrind`]) for one session's loop: their user-space
//! instructions per request, a count the machine's speed does not move.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use mesh_bridge::contract;
use mesh_chaos::docker_relay::Relay;
use tokio::task::JoinSet;

use crate::bench::callgrind;
use crate::bench::infra::{self, Bridge, PHASE_LABEL, Proc, RUN_LABEL, STUB_IMAGE};
use crate::bench::{Row, ratio};

use super::api::{Sender, connect_api};
use super::{Ctx, pct, sorted};

/// Session counts measured.
const CONCURRENCY: [usize; 2] = [1, 32];
/// Rounds each path is measured in, the paths taking turns: this machine's
/// speed drifts by a tenth from one window to the next, so each figure is
/// the median of its rounds, each taken beside the other paths' rounds.
const ROUNDS: usize = 3;
/// Replicas of the stateful stub.
const REPLICAS: usize = 3;
/// The stub's port in its container.
const STUB_PORT: u16 = 8080;

/// What one load run measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub(super) rps: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
}

impl Load {
    /// Each figure's median over `rounds`.
    fn median(rounds: &[Load]) -> Load {
        let of = |f: fn(&Load) -> f64| super::median(&rounds.iter().map(f).collect::<Vec<_>>());
        Load {
            rps: of(|l| l.rps),
            p50_us: of(|l| l.p50_us),
            p99_us: of(|l| l.p99_us),
        }
    }
}

/// P7 rows: throughput against HAProxy, added latency against HAProxy's.
pub async fn p7(ctx: &Ctx) -> Result<Vec<Row>> {
    crate::provision::install(
        ctx.t0,
        &[crate::provision::HAPROXY, crate::provision::VALGRIND],
    )?;
    let window = if ctx.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(2)
    };
    ctx.note("P7: three stateful stubs");
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        let name = format!("mb-bench-{}-p7-{i}", ctx.run);
        let labels = [
            format!("{RUN_LABEL}={}", ctx.run),
            format!("{PHASE_LABEL}=p7"),
            format!("{}=p7", contract::labels::SERVICE),
        ];
        let mut args = vec!["run", "-d", "--name", &name, "--no-healthcheck"];
        args.extend(["-e", "MCP_STUB_NAME=p7", "-e", "MCP_STUB_STATEFUL=1"]);
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        args.push(STUB_IMAGE);
        let id = infra::docker(&args)?;
        let (ip, _) = infra::inspect_ip_pid(&id)?;
        replicas.push(SocketAddr::from((ip, STUB_PORT)));
    }
    let relay = Relay::start(ctx.filters("p7")).await?;
    let (lo, hi) = infra::free_range(4)?;
    let mut b = Bridge::start(&ctx.bin, ctx.spec("p7", format!("{lo}-{hi}"), &relay))?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let mesh_port = b.wait_port("p7", Duration::from_secs(15)).await?;
    let mesh = SocketAddr::from((Ipv4Addr::LOCALHOST, mesh_port));
    let haproxy_port = infra::free_port()?;
    let _haproxy = haproxy(haproxy_port, &replicas, &[])?;
    let haproxy = SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy_port));
    for (what, addr) in [
        ("mesh", mesh),
        ("haproxy", haproxy),
        ("direct", replicas[0]),
    ] {
        answers(what, addr, Duration::from_secs(20)).await?;
    }

    let mut rows = Vec::new();
    for c in CONCURRENCY {
        // Warm each path (connections, the stub's session tables), unmeasured.
        for addr in [mesh, haproxy, replicas[0]] {
            load(addr, c, Duration::from_millis(300)).await?;
        }
        ctx.note(&format!(
            "P7: {c} session(s), {ROUNDS} rounds of {window:?} on each path"
        ));
        let paths = [mesh, haproxy, replicas[0]];
        let mut rounds: [Vec<Load>; 3] = Default::default();
        for i in super::rotation(paths.len(), ROUNDS) {
            rounds[i].push(load(paths[i], c, window).await?);
        }
        let [m, h, d] = rounds.map(|r| Load::median(&r));
        ctx.note(&format!(
            "P7 c={c}: mesh {:.0}/s p50 {:.0} us p99 {:.0} us; haproxy {:.0}/s p50 {:.0} us p99 {:.0} us; direct {:.0}/s p50 {:.0} us p99 {:.0} us",
            m.rps, m.p50_us, m.p99_us, h.rps, h.p50_us, h.p99_us, d.rps, d.p50_us, d.p99_us
        ));
        let (tid, lid) = match c {
            1 => ("P7-c1-throughput", "P7-c1-latency-added"),
            _ => ("P7-c32-throughput", "P7-c32-latency-added"),
        };
        let thr = ratio(m.rps, h.rps);
        rows.push(Row {
            id: tid,
            what: format!(
                "MCP tools/call in {c} session(s) through the mesh port, {REPLICAS} stateful stubs, median of {ROUNDS} interleaved rounds (direct to one: {:.0}/s)",
                d.rps
            ),
            value: m.rps,
            unit: "req/s",
            baseline: "HAProxy, stick table on Mcp-Session-Id".into(),
            baseline_value: h.rps,
            ratio: thr,
            goal: ">= 1.0x HAProxy".into(),
            met: thr.is_some_and(|r| r >= 1.0),
        });
        let added = m.p50_us - d.p50_us;
        let h_added = h.p50_us - d.p50_us;
        rows.push(Row {
            id: lid,
            what: format!(
                "added p50 over direct, {c} session(s) (p99 added: mesh {:.0} us, HAProxy {:.0} us)",
                m.p99_us - d.p99_us,
                h.p99_us - d.p99_us
            ),
            value: added,
            unit: "us",
            baseline: "HAProxy's added p50".into(),
            baseline_value: h_added,
            ratio: ratio(added, h_added),
            goal: "<= HAProxy's".into(),
            met: added <= h_added,
        });
    }
    drop(b);
    rows.push(instructions(ctx, &relay, &replicas, window).await?);
    Ok(rows)
}

/// P7-c1-instructions: a second bridge and a second HAProxy, each under
/// callgrind, counted through one session's `tools/call` loop on the same
/// replicas. Unlike the throughput, this count does not move with the
/// machine's speed, so a change of a few percent in the proxy's own work
/// shows (in user space only: the kernel's work is not counted).
async fn instructions(
    ctx: &Ctx,
    relay: &Relay,
    replicas: &[SocketAddr],
    window: Duration,
) -> Result<Row> {
    ctx.note("P7: instructions per request of the bridge and HAProxy, under callgrind");
    let dir = infra::bench_dir();
    let bridge_out = dir.join("p7-bridge.callgrind");
    let haproxy_out = dir.join("p7-haproxy.callgrind");
    let (lo, hi) = infra::free_range(4)?;
    let mut spec = ctx.spec("p7-callgrind", format!("{lo}-{hi}"), relay);
    spec.launcher = callgrind::launcher(&bridge_out);
    let mut b = Bridge::start(&ctx.bin, spec)?;
    b.wait_ready(Duration::from_secs(120)).await?;
    let mesh_port = b.wait_port("p7", Duration::from_secs(60)).await?;
    let haproxy_port = infra::free_port()?;
    let h = haproxy(haproxy_port, replicas, &callgrind::launcher(&haproxy_out))?;
    let bridge_pid = b.pid().context("the bridge under callgrind exited")?;
    let mut per_request = Vec::new();
    for (port, pid, out) in [
        (mesh_port, bridge_pid, &bridge_out),
        (haproxy_port, h.0.id(), &haproxy_out),
    ] {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        answers("a proxy under callgrind", addr, Duration::from_secs(60)).await?;
        tokio::task::block_in_place(|| callgrind::set(pid, true))?;
        let l = load(addr, 1, window).await?;
        tokio::task::block_in_place(|| callgrind::set(pid, false))?;
        let n = tokio::task::block_in_place(|| callgrind::total(pid, out))?;
        // The session's `initialize` was counted too.
        let requests = (l.rps * window.as_secs_f64()).round() + 1.0;
        per_request.push(n as f64 / requests);
    }
    drop(b);
    drop(h);
    let (m, h) = (per_request[0], per_request[1]);
    ctx.note(&format!(
        "P7 instructions per request: mesh {m:.0}, haproxy {h:.0}"
    ));
    let r = ratio(m, h);
    Ok(Row {
        id: "P7-c1-instructions",
        what: "user-space instructions per tools/call through the mesh port, 1 session, \
               counted by callgrind (the same within 0.2% from run to run; the kernel's \
               work is not in it)"
            .into(),
        value: m,
        unit: "instr/req",
        baseline: "HAProxy, the same count".into(),
        baseline_value: h,
        ratio: r,
        goal: "<= HAProxy's (diagnostic)".into(),
        met: r.is_some_and(|r| r <= 1.0),
    })
}

/// HAProxy in front of the replicas, sessions pinned by its stick table.
/// `launcher` runs it (empty: directly), as [`infra::BridgeSpec::launcher`].
fn haproxy(port: u16, replicas: &[SocketAddr], launcher: &[String]) -> Result<Proc> {
    let dir = infra::bench_dir();
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join(format!("p7-haproxy-{port}.cfg"));
    let mut text = format!(
        "global\n  maxconn 4096\n  nbthread 2\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
         frontend mcp\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
         backend replicas\n  balance roundrobin\n\
         \x20 stick-table type string len 128 size 100k expire 30m\n\
         \x20 stick store-response res.hdr({session})\n\
         \x20 stick match req.hdr({session})\n",
        session = contract::mcp::SESSION_HEADER
    );
    for (i, r) in replicas.iter().enumerate() {
        text.push_str(&format!("  server r{i} {r}\n"));
    }
    std::fs::write(&cfg, text)?;
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()?;
    ensure!(
        check.status.success(),
        "haproxy -c -f {}: {}",
        cfg.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let child = infra::launched(launcher, "haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy")?;
    Ok(Proc(child))
}

/// Waits up to `limit` for `addr` (`what`) to open a session.
async fn answers(what: &str, addr: SocketAddr, limit: Duration) -> Result<()> {
    mesh_chaos::wait::until_async(
        &format!("{what} ({addr}) to answer"),
        limit,
        || async move { session(addr).await.map(drop).map_err(|e| format!("{e:#}")) },
    )
    .await?;
    Ok(())
}

/// `initialize` on a fresh keep-alive connection: the connection and the session id.
pub(super) async fn session(addr: SocketAddr) -> Result<(Sender, String)> {
    let mut s = connect_api(addr, 1).await?.pop().context("a connection")?;
    let init = mesh_chaos::stub::initialize_request().to_string();
    let resp = s.send_request(post(addr, None, Bytes::from(init))?).await?;
    let status = resp.status();
    let id = resp
        .headers()
        .get(contract::mcp::SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    resp.into_body().collect().await?;
    match id {
        Some(id) if status == 200 => Ok((s, id)),
        _ => bail!("initialize through {addr}: HTTP {status}, session {id:?}"),
    }
}

fn post(addr: SocketAddr, session: Option<&str>, body: Bytes) -> Result<Request<Full<Bytes>>> {
    let mut r = Request::post("/mcp")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        r = r.header(contract::mcp::SESSION_HEADER, s);
    }
    Ok(r.body(Full::new(body))?)
}

/// `sessions` sessions calling `tools/call echo` back to back for `window`.
pub(super) async fn load(addr: SocketAddr, sessions: usize, window: Duration) -> Result<Load> {
    const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"p7"}}}"#;
    let mut set = JoinSet::new();
    let start = Instant::now() + Duration::from_millis(50);
    for _ in 0..sessions {
        let (mut s, id) = session(addr).await?;
        set.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let end = start + window;
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                s.ready().await?;
                let resp = s
                    .send_request(post(addr, Some(&id), Bytes::from_static(CALL.as_bytes()))?)
                    .await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                ensure!(status == 200, "tools/call through {addr}: HTTP {status}");
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    let n = all.len() as f64;
    let all = sorted(all);
    Ok(Load {
        rps: n / window.as_secs_f64(),
        p50_us: pct(&all, 0.5),
        p99_us: pct(&all, 0.99),
    })
}
