//! The official MCP SDK client in a scenario: for each service with
//! `sdk_client = true`, the bridge's SDK test client
//! (`crates/bridge/tests/sdk/client.py`, on the SDK `cargo xtask provision`
//! installs) runs every [`EVERY`] against the service's mesh port, a few
//! sessions of calls each; its report is recorded as an
//! [`SdkRun`](mesh_chaos::session::SdkRun) for I8.

use super::*;
use mesh_chaos::session::{SdkRun, SessionTarget};

/// Time between the starts of two runs against one service.
pub(super) const EVERY: Duration = Duration::from_secs(8);
/// Sessions and calls per session of one run.
const SESSIONS: u32 = 2;
const CALLS: u32 = 3;
/// Longest one run may take before it counts as failed.
const LIMIT: Duration = Duration::from_secs(60);

/// The client script, in the repository.
fn client_py() -> PathBuf {
    crate::paths::workspace_root().join("crates/bridge/tests/sdk/client.py")
}

/// Runs the SDK client against every target until `stop` fires.
pub(super) async fn run_sdk_clients(
    rec: Recorder,
    targets: Vec<SessionTarget>,
    ports: PortMap,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        set.spawn(one_service(
            rec.clone(),
            t,
            ports.clone(),
            start,
            stop.clone(),
        ));
    }
    while set.join_next().await.is_some() {}
}

async fn one_service(
    rec: Recorder,
    target: SessionTarget,
    ports: PortMap,
    start: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: a day of runs.
    for _ in 0..(86_400 / EVERY.as_secs()) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let Some(addr) = rec.port_of(&target.service).and_then(|p| ports.addr(p)) else {
            continue;
        };
        let t_ms = start.elapsed().as_millis() as u64;
        let run = tokio::select! {
            r = run_once(&target, addr) => r,
            // A run cut short by the end of the run is not recorded.
            _ = stop.changed() => break,
        };
        let end_ms = start.elapsed().as_millis() as u64;
        let rec_run = match run {
            Ok((sessions, failed, calls)) => SdkRun {
                t_ms,
                end_ms,
                service: target.service.clone(),
                sessions,
                failed,
                calls,
                error: None,
            },
            Err(e) => SdkRun {
                t_ms,
                end_ms,
                service: target.service.clone(),
                sessions: 0,
                failed: 0,
                calls: 0,
                error: Some(format!("{e:#}")),
            },
        };
        rec.with(|h| h.sdk_runs.push(rec_run));
    }
}

/// One run of the client: (sessions, failed sessions, calls answered).
async fn run_once(target: &SessionTarget, addr: SocketAddr) -> Result<(u64, u64, u64)> {
    let url = format!("http://{addr}/mcp");
    let child = tokio::process::Command::new("python3")
        .arg(client_py())
        .arg(&url)
        .args(["--sessions", &SESSIONS.to_string()])
        .args(["--calls", &CALLS.to_string()])
        .args(["--tool", &target.tool])
        .args(["--arguments", &target.arguments.to_string()])
        .env("PYTHONPATH", crate::mcp_python::sdk_dir())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, child)
        .await
        .with_context(|| format!("the SDK client took longer than {LIMIT:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).with_context(|| {
        format!(
            "the SDK client printed no report (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )
    })?;
    let failed = report["failed"].as_array().map_or(0, Vec::len) as u64;
    Ok((
        report["sessions"].as_u64().unwrap_or(0),
        failed,
        report["calls"].as_u64().unwrap_or(0),
    ))
}
