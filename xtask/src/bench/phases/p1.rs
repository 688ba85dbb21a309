//! P1: the pool's allocate + release, from the criterion bench.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, ensure};

use crate::bench::{Row, ratio};

/// `cargo bench -p mesh-bridge --bench pool`, then criterion's estimate.
pub fn p1(quick: bool) -> Result<Vec<Row>> {
    let started = SystemTime::now();
    // The shared release build (the bench profile inherits release).
    let mut cmd = crate::release::cargo("bench");
    cmd.args(["-p", "mesh-bridge", "--bench", "pool", "--"]);
    if quick {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    }
    let st = crate::interrupt::status(&mut cmd)?;
    ensure!(st.success(), "cargo bench failed ({st})");
    // Criterion writes beside the workspace's target directory, not the
    // build's `--target-dir`.
    let (full_id, estimates) =
        find_estimates(&crate::paths::target_dir().join("criterion"), started)?;
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
        baseline: "Docker's port allocator, ~650 ns per port (a constant, not measured here)"
            .into(),
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
