//! P8: MCP `tools/call` round trips to a stdio server (the stub in
//! `--stdio` mode, one process), through the mesh port, beside `mcp-proxy`
//! (PyPI's stdio to streamable HTTP bridge, pinned with the SDK) in front of
//! the same image, started the way it is meant to be: `mcp-proxy -- docker
//! run -i ... --stdio`. Requests/s and p50/p99 at 1 and 16 sessions, each
//! session on one keep-alive connection, calling back to back.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_bridge::contract;
use mesh_chaos::docker_relay::Relay;

use crate::bench::infra::{self, Bridge, PHASE_LABEL, Proc, RUN_LABEL, STUB_IMAGE};
use crate::bench::{Row, ratio};

use super::Ctx;
use super::p7::{Load, load, session};

/// Session counts measured.
const CONCURRENCY: [usize; 2] = [1, 16];

/// P8 rows: throughput and p99 against mcp-proxy's.
pub async fn p8(ctx: &Ctx) -> Result<Vec<Row>> {
    let sdk = crate::mcp_python::ensure_sdk(ctx.t0)?;
    let window = if ctx.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let labels = [
        format!("{RUN_LABEL}={}", ctx.run),
        format!("{PHASE_LABEL}=p8"),
    ];
    ctx.note("P8: a stdio stub behind the bridge, another behind mcp-proxy");
    let name = format!("mb-bench-{}-p8", ctx.run);
    let service = format!("{}=p8", contract::labels::SERVICE);
    let transport = format!("{}=stdio", contract::labels::TRANSPORT);
    let mut args = vec!["run", "-d", "-i", "--name", &name, "--no-healthcheck"];
    args.extend(["--network", "none", "-e", "MCP_STUB_NAME=p8"]);
    for l in labels.iter().chain([&service, &transport]) {
        args.extend(["--label", l.as_str()]);
    }
    args.extend([STUB_IMAGE, "--stdio"]);
    infra::docker(&args)?;
    let relay = Relay::start(ctx.filters("p8")).await?;
    let (lo, hi) = infra::free_range(4)?;
    let mut b = Bridge::start(&ctx.bin, ctx.spec("p8", format!("{lo}-{hi}"), &relay))?;
    b.wait_ready(Duration::from_secs(30)).await?;
    let mesh_port = b.wait_port("p8", Duration::from_secs(15)).await?;
    let mesh = SocketAddr::from((Ipv4Addr::LOCALHOST, mesh_port));
    let proxy_port = infra::free_port()?;
    let _proxy = mcp_proxy(&sdk, proxy_port, &labels)?;
    let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, proxy_port));
    for (what, addr) in [("mesh", mesh), ("mcp-proxy", proxy)] {
        mesh_chaos::wait::until_async(
            &format!("{what} to answer"),
            Duration::from_secs(30),
            || async move { session(addr).await.map(drop).map_err(|e| format!("{e:#}")) },
        )
        .await?;
    }
    let mut rows = Vec::new();
    for c in CONCURRENCY {
        for addr in [mesh, proxy] {
            load(addr, c, Duration::from_millis(300)).await?;
        }
        ctx.note(&format!("P8: {c} session(s), {window:?} on each path"));
        let m = load(mesh, c, window).await?;
        let p = load(proxy, c, window).await?;
        ctx.note(&format!(
            "P8 c={c}: mesh {:.0}/s p50 {:.0} us p99 {:.0} us; mcp-proxy {:.0}/s p50 {:.0} us p99 {:.0} us",
            m.rps, m.p50_us, m.p99_us, p.rps, p.p50_us, p.p99_us
        ));
        rows.extend(rows_for(c, m, p));
    }
    drop(b);
    Ok(rows)
}

fn rows_for(c: usize, m: Load, p: Load) -> [Row; 2] {
    let (tid, lid) = match c {
        1 => ("P8-c1-throughput", "P8-c1-p99"),
        _ => ("P8-c16-throughput", "P8-c16-p99"),
    };
    let thr = ratio(m.rps, p.rps);
    [
        Row {
            id: tid,
            what: format!(
                "MCP tools/call in {c} session(s) to one stdio server through the mesh port (p50 {:.0} us; mcp-proxy's {:.0} us)",
                m.p50_us, p.p50_us
            ),
            value: m.rps,
            unit: "req/s",
            baseline: "mcp-proxy in front of the same image".into(),
            baseline_value: p.rps,
            ratio: thr,
            goal: ">= 3.0x mcp-proxy".into(),
            met: thr.is_some_and(|r| r >= 3.0),
        },
        Row {
            id: lid,
            what: format!("p99 of those round trips, {c} session(s)"),
            value: m.p99_us,
            unit: "us",
            baseline: "mcp-proxy's p99".into(),
            baseline_value: p.p99_us,
            ratio: ratio(m.p99_us, p.p99_us),
            goal: "< mcp-proxy's".into(),
            met: m.p99_us < p.p99_us,
        },
    ]
}

/// mcp-proxy serving streamable HTTP on 127.0.0.1:`port` for a stdio stub
/// it starts itself with `docker run -i --rm` (labelled for clean-up).
fn mcp_proxy(sdk: &std::path::Path, port: u16, labels: &[String]) -> Result<Proc> {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", sdk)
        .args([
            "-m",
            "mcp_proxy",
            "--host",
            "127.0.0.1",
            "--log-level",
            "WARNING",
        ])
        .arg("--port")
        .arg(port.to_string())
        .args(["--", "docker", "run", "-i", "--rm", "--network", "none"]);
    for l in labels {
        cmd.args(["--label", l]);
    }
    cmd.args([
        "-e",
        "MCP_STUB_NAME=p8",
        "--no-healthcheck",
        STUB_IMAGE,
        "--stdio",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Ok(Proc(cmd.spawn().context("starting mcp-proxy")?))
}
