//! The run's Prometheus (scraping the bridge and the harness, with the
//! alert rules) and the alert checks of `expect_alerts`.

use super::*;

/// Whether the run's Prometheus fired `alert` (a rule of
/// dashboards/prometheus/rules.yml), asked through its HTTP API; polls for up
/// to 20 s so the last evaluation can land.
pub(super) async fn alert_fired(
    prometheus: Option<SocketAddr>,
    alert: &str,
    say: &(dyn Fn(&str) + Sync),
) -> invariants::Verdict {
    let title = format!("Prometheus fired the alert {alert}");
    let id = format!("alert:{alert}");
    let Some(addr) = prometheus else {
        return invariants::Verdict {
            id,
            title,
            held: false,
            detail: "no Prometheus ran (install Debian's `prometheus`)".into(),
        };
    };
    let query = format!("max_over_time(ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}[1h])");
    let path = format!(
        "/api/v1/query?query={}",
        mesh_chaos::docker_query::encode(&query)
    );
    let check = || async {
        let v = mesh_chaos::http::get_json::<serde_json::Value>(addr, &path)
            .await
            .map_err(|e| e.to_string())?;
        match v["data"]["result"].as_array().map_or(0, Vec::len) {
            0 => Err("no firing series".to_string()),
            n => Ok(n),
        }
    };
    let every = Duration::from_millis(500);
    match mesh_chaos::wait::until_every_async(alert, Duration::from_secs(20), every, check).await {
        Ok(n) => {
            say(&format!("prometheus: {alert} fired"));
            invariants::Verdict {
                id,
                title,
                held: true,
                detail: format!("{n} firing series seen through /api/v1/query"),
            }
        }
        Err(e) => invariants::Verdict {
            id,
            title,
            held: false,
            detail: format!("not fired within the run + 20 s: {}", e.last),
        },
    }
}

/// Starts Debian's prometheus (if installed) scraping the bridge and the
/// harness, with the project's alert rules loaded. Returns it and its address.
pub(super) fn start_prometheus(
    dir: &Path,
    api: SocketAddr,
    harness: SocketAddr,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Option<(tokio::process::Child, SocketAddr)>> {
    let Ok(bin) = which("prometheus") else {
        say("prometheus not installed; running without it");
        return Ok(None);
    };
    let port = free_local_port()?;
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards/prometheus/rules.yml")
        .canonicalize()
        .context("dashboards/prometheus/rules.yml is missing")?;
    let cfg = format!(
        "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: mesh-bridge\n    static_configs:\n      - targets: ['{api}']\n  - job_name: mesh-chaos\n    static_configs:\n      - targets: ['{harness}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), cfg)?;
    let data = dir.join("prometheus");
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = tokio::process::Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    say(&format!(
        "prometheus on 127.0.0.1:{port}, data in {}",
        data.display()
    ));
    Ok(Some((child, SocketAddr::from(([127, 0, 0, 1], port)))))
}

pub(super) fn which(name: &str) -> Result<PathBuf> {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not on PATH")
}
