//! P4: bulk throughput and small-message latency through a mesh port, against
//! a direct connection and docker-proxy.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bench::infra::{self, Bridge, Proc};
use crate::bench::{Row, ratio, sink};
use mesh_bridge::contract::{self, labels::Transport};
use mesh_chaos::docker_relay::Relay;

use super::{Ctx, median, pct, sorted};

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
        &[
            "--label",
            &format!("{}={port}", contract::labels::PORT),
            "--label",
            &format!("{}={}", contract::labels::TRANSPORT, Transport::Tcp),
        ],
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
    let mesh_port = b.wait_port("bulk", Duration::from_secs(15)).await?;
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
        let tput = interleaved(&paths, rounds, |addr| Ok(vec![sink::upload(addr, bytes)?]))?;
        let lat = interleaved(&paths, rounds, |addr| sink::ping_pong(addr, 64, 200, pings))?;
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

/// Runs `measure` `rounds` times on each path, rotating which path goes first
/// each round so drift on the machine falls on all paths alike; collects each
/// path's figures under its name.
fn interleaved<'a>(
    paths: &[(&'a str, SocketAddr)],
    rounds: usize,
    mut measure: impl FnMut(SocketAddr) -> Result<Vec<f64>>,
) -> Result<BTreeMap<&'a str, Vec<f64>>> {
    let mut out: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in super::rotation(paths.len(), rounds) {
        let (name, addr) = paths[i];
        out.entry(name).or_default().extend(measure(addr)?);
    }
    Ok(out)
}
