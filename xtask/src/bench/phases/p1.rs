//! P1: the pool's allocate + release, from the criterion bench.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, ensure};

use crate::bench::infra::{self};
use crate::bench::{Row, ratio};

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
