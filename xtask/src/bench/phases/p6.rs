//! P6: 10,000 reservations through the API in a burst, durable when answered.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use mesh_bridge::contract;

use crate::bench::infra::Bridge;
use crate::bench::{Row, ratio};
use mesh_chaos::docker_relay::Relay;

use super::Ctx;
use super::api::{Call, burst, connect_api};

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
    let pool: contract::api::PoolView =
        mesh_chaos::http::get_json(b.api, contract::api::POOL).await?;
    let in_use = pool.in_use as u64;
    let metrics = mesh_chaos::http::get_text(b.api, contract::api::METRICS).await?;
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
