//! P5: the bridge's RSS and idle CPU with 1,000 services reserved.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::bench::infra::{self, Bridge};
use crate::bench::{Row, ratio};
use mesh_chaos::docker_relay::Relay;

use super::Ctx;
use super::api::{Call, burst, connect_api};

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
