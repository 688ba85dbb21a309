//! What undoes a fault after its hold ([`Heal`]), with bounded retries.

use super::*;

/// How to undo a fault after its hold.
pub(super) enum Heal {
    Docker {
        inner: bool,
        cmds: Vec<Vec<String>>,
    },
    Replace {
        names: Vec<(String, String)>,
    },
    Uncut,
    Unfill(PathBuf, Vec<String>),
    Unsquat {
        squatters: Vec<String>,
        late: Vec<String>,
        late_services: Vec<String>,
    },
    RemoveInner {
        names: Vec<String>,
    },
    /// iptables rules of a network fault to delete.
    Unnet {
        rules: Vec<Vec<String>>,
    },
    /// End the stub delay mode of these containers (`net-latency`).
    Undelay {
        ids: Vec<String>,
    },
}

impl Heal {
    pub(super) async fn run(self, topo: &Topo, probe_list: &Arc<Mutex<Vec<String>>>) -> Result<()> {
        let t = &topo.target;
        match self {
            Heal::Docker { inner, cmds } => {
                let docker = if inner { &t.inner } else { &t.outer };
                // One container at a time, so a container another fault removed
                // meanwhile does not keep the others down.
                let mut errors = Vec::new();
                for c in cmds {
                    let (verb, ids) = c.split_at(1);
                    for id in ids {
                        let argv = [verb[0].as_str(), id.as_str()];
                        if let Err(e) = with_retry(|| docker.run(&argv)).await {
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    bail!("{}", errors.join("; "))
                }
            }
            Heal::Replace { names } => {
                for (name, service) in names {
                    // A `docker run` that failed on the client's side (a
                    // timeout under load) may still have created the
                    // container: its name in use on a retry means it is there.
                    let mut retry = false;
                    with_retry(|| {
                        let again = std::mem::replace(&mut retry, true);
                        let (name, service) = (&name, &service);
                        async move {
                            match topo.start_stub(name, service).await {
                                Err(e)
                                    if again && format!("{e:#}").contains("is already in use") =>
                                {
                                    Ok(())
                                }
                                r => r,
                            }
                        }
                    })
                    .await?;
                }
                Ok(())
            }
            Heal::Uncut => t.cut_engine(false).await,
            Heal::Unfill(path, late) => {
                let _ = std::fs::remove_file(&path);
                remove_inner(t, &late).await
            }
            Heal::Unsquat {
                squatters,
                late,
                late_services,
            } => {
                if let Ok(mut g) = probe_list.lock() {
                    g.retain(|s| !late_services.contains(s));
                }
                remove_inner(t, &late).await?;
                t.remove_outer(&squatters).await
            }
            Heal::RemoveInner { names } => remove_inner(t, &names).await,
            Heal::Undelay { ids } => {
                for id in ids {
                    let argv = faults::delay_command(&id, 0);
                    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                    with_retry(|| t.inner.run(&args)).await?;
                }
                Ok(())
            }
            Heal::Unnet { rules } => {
                for r in &rules {
                    with_retry(|| t.net_rule(false, r)).await?;
                }
                Ok(())
            }
        }
    }
}

/// Retries a heal while the engine is away (an engine restart or cut may
/// overlap it): up to 30 attempts, 2 s apart. A container that no longer
/// exists (another fault removed it) is not retried.
pub(super) async fn with_retry<F, Fut, T>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = None;
    for _ in 0..30 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("No such container") || text.contains("is already in use") {
                    return Err(e);
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

pub(super) async fn remove_inner(t: &Target, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    with_retry(|| t.inner.run(&args)).await.map(drop)
}
