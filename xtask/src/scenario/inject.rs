//! Injecting one planned fault: the scenario runner only schedules and
//! records; the faults themselves are `mesh_chaos::faults`.

use super::*;

/// The running service replicas of a fault's target, and the seeded victims
/// among them (the network faults, which pass stdio services by: the bridge
/// reaches those through the engine, not the network).
pub(super) async fn replica_victims(
    topo: &Topo,
    p: &Planned,
) -> Result<(Vec<faults::Container>, Vec<faults::Container>)> {
    let running: Vec<_> = topo
        .containers(p.target.as_deref())
        .await?
        .into_iter()
        .filter(|c| c.state == "running" && !c.service.is_empty() && !topo.is_stdio(&c.service))
        .collect();
    let victims = schedule::pick(&running, p.count, p.fraction, p.pick);
    Ok((running, victims))
}

/// Injects one planned fault; returns its record and how to heal it.
pub(super) async fn inject(
    topo: &Topo,
    p: &Planned,
    seq: usize,
    t_ms: u64,
    rec: &Recorder,
    probe_list: &Arc<Mutex<Vec<String>>>,
    start: Instant,
) -> Result<(FaultRecord, Option<Heal>)> {
    let t = &topo.target;
    let probed = rec.with(|h| h.probed.clone());
    let mut record = FaultRecord {
        t_ms,
        kind: p.kind,
        target: String::new(),
        services: Vec::new(),
        until_ms: t_ms,
        may_move: Vec::new(),
        error: None,
        no_failures: Vec::new(),
        latency_ms: None,
    };
    let now = || start.elapsed().as_millis() as u64;
    let heal = match p.kind {
        k if k.is_container() => {
            let all = topo.containers(p.target.as_deref()).await?;
            let cands: Vec<_> = all.into_iter().filter(|c| c.state == "running").collect();
            let victims = schedule::pick(&cands, p.count, p.fraction, p.pick);
            let ids: Vec<String> = victims.iter().map(|c| c.id.clone()).collect();
            record.target = victims
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            record.services = victims.iter().map(|c| c.service.clone()).collect();
            record.services.dedup();
            faults::run_all(&t.inner, &faults::container_commands(k, &ids)).await?;
            if k == FaultKind::ContainerRemove {
                Some(Heal::Replace {
                    names: victims
                        .iter()
                        .map(|c| (format!("{}-x{seq}", c.service), c.service.clone()))
                        .collect(),
                })
            } else {
                let cmds = faults::container_heal_commands(k, &ids);
                (!cmds.is_empty()).then_some(Heal::Docker { inner: true, cmds })
            }
        }
        FaultKind::BridgeKill => {
            t.kill_bridge().await?;
            let (ok, detail) = t.check_store().await;
            // What the store holds now, for I6's completeness check.
            let exported = if ok {
                t.export_store().await.ok()
            } else {
                None
            };
            rec.with(|h| {
                h.store_checks.push(StoreCheck {
                    t_ms: now(),
                    ok,
                    detail,
                    damaged_on_purpose: false,
                    exported,
                })
            });
            t.start_bridge().await?;
            // No run ids in targets: the same seed gives the same fault list.
            record.target = "bridge (kill -9, state check, start)".into();
            record.services = probed.clone();
            record.until_ms = now();
            None
        }
        FaultKind::StoreCorrupt | FaultKind::StoreTruncate => {
            t.stop_bridge().await?;
            let before = t.damaged_files().len();
            t.damage_store(if p.kind == FaultKind::StoreCorrupt {
                faults::StoreDamage::Corrupt { seed: p.pick }
            } else {
                faults::StoreDamage::Truncate
            })?;
            let (ok, detail) = t.check_store().await;
            rec.with(|h| {
                h.store_checks.push(StoreCheck {
                    t_ms: now(),
                    ok,
                    detail: detail.clone(),
                    damaged_on_purpose: true,
                    exported: None,
                })
            });
            t.start_bridge().await?;
            // The bridge must move the damaged store aside, never delete it.
            let moved = mesh_chaos::wait::until_every_async(
                "the damaged store to be moved aside",
                Duration::from_secs(15),
                Duration::from_millis(200),
                || {
                    let n = t.damaged_files().len();
                    async move {
                        if n > before {
                            Ok(())
                        } else {
                            Err(format!("{n} damaged files"))
                        }
                    }
                },
            )
            .await;
            if moved.is_err() {
                record.error = Some(format!(
                    "damaged store was not moved aside within 15s (state check said: {detail})"
                ));
            }
            record.target = format!(
                "state.db ({}), bridge restarted",
                if ok {
                    "check still ok!"
                } else {
                    "check failed as expected"
                }
            );
            record.services = probed.clone();
            record.may_move = vec!["*".into()];
            record.until_ms = now();
            None
        }
        FaultKind::EngineRestart => {
            t.restart_engine().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            wait_engine(&t.inner, Duration::from_secs(90)).await?;
            record.target = "dockerd in the DinD container".into();
            record.services = probed.clone();
            record.until_ms = now();
            None
        }
        FaultKind::EngineCut => {
            t.cut_engine(true).await?;
            record.target = "tcp :2375 (REJECT)".into();
            Some(Heal::Uncut)
        }
        FaultKind::DiskFull => {
            use std::io::Write;
            let path = t.state_dir.join("filler");
            let mut f = std::fs::File::create(&path)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut written = 0usize;
            while written < 64 * 1024 * 1024 {
                if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
                    break;
                }
                written += chunk.len();
            }
            let _ = f.sync_all();
            // New services while the disk is full: the store cannot write.
            let n = p.count.unwrap_or(1).min(4);
            let mut late = Vec::new();
            for i in 0..n {
                let svc = format!("late-disk-{seq}-{i}");
                topo.start_stub(&svc, &svc).await?;
                late.push(svc);
            }
            record.target = format!(
                "state dir filled ({} KiB), {} new services",
                written / 1024,
                late.len()
            );
            Some(Heal::Unfill(path, late))
        }
        FaultKind::PortSquat => {
            let snap = probe::snapshot(t.api, 0).await;
            let held: std::collections::BTreeSet<u16> =
                snap.services.iter().filter_map(|s| s.port).collect();
            let all = topo
                .ports
                .map
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<u16>>();
            let max_held = held.iter().max().copied().unwrap_or(0);
            let mut free: Vec<u16> = all
                .iter()
                .copied()
                .filter(|p| !held.contains(p) && *p > max_held)
                .collect();
            free.extend(
                all.iter()
                    .copied()
                    .filter(|p| !held.contains(p) && *p <= max_held),
            );
            let n = p.count.unwrap_or(2) as usize;
            let mut squatters = Vec::new();
            let mut squatted = Vec::new();
            for port in free.into_iter().take(n) {
                squatters.push(t.squat(port, &format!("{seq}")).await?);
                squatted.push(port);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // A new service must skip the squatted ports.
            let svc = format!("late-squat-{seq}");
            topo.start_stub(&svc, &svc).await?;
            if let Ok(mut g) = probe_list.lock() {
                g.push(svc.clone());
            }
            record.target = format!("ports {squatted:?} squatted; new service {svc}");
            record.services = vec![svc.clone()];
            Some(Heal::Unsquat {
                squatters,
                late: vec![svc.clone()],
                late_services: vec![svc],
            })
        }
        FaultKind::RegistrationFlood => {
            let snap = probe::snapshot(t.api, 0).await;
            let free = snap.pool_field(|p| p.free).unwrap_or(0);
            let over = u64::from(p.count.unwrap_or(3));
            let n = (free + over).min(64);
            let mut names = Vec::new();
            for i in 0..n {
                let svc = format!("flood-{seq}-{i}");
                topo.start_stub(&svc, &svc).await?;
                names.push(svc);
            }
            let overflow = n.saturating_sub(free);
            rec.with(|h| {
                h.expect.exhaustion_events = h.expect.exhaustion_events.map(|n| n + overflow);
            });
            record.target = format!(
                "{} new services for {free} free ports ({overflow} left without one)",
                names.len()
            );
            Some(Heal::RemoveInner { names })
        }
        k if k.is_network() => {
            let (running, victims) = replica_victims(topo, p).await?;
            let mut rules = Vec::new();
            for v in &victims {
                let ip = t.replica_ip(&v.id).await?;
                let rule = k.net_rule(&ip, mesh_chaos::stub::DEFAULT_PORT, faults::NET_LOSS);
                t.net_rule(true, &rule).await?;
                rules.push(rule);
            }
            record.target = victims
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            // What a client sees (docs/DESIGN.md section 4.1): a reset or a
            // black hole on some of a service's replicas fails over to the
            // others within the forwarder's connect timeout, so that service
            // stays judged for availability; loss, or every replica hit, puts
            // it under fault. So does a hit replica of a service with
            // sessions: a session stays on its replica (I8 judges it).
            for v in &victims {
                let hit = victims.iter().filter(|x| x.service == v.service).count();
                let all = running.iter().filter(|x| x.service == v.service).count();
                let list = if k == FaultKind::NetLoss || hit == all || topo.has_sessions(&v.service)
                {
                    &mut record.services
                } else {
                    &mut record.no_failures
                };
                if !list.contains(&v.service) {
                    list.push(v.service.clone());
                }
            }
            Some(Heal::Unnet { rules })
        }
        FaultKind::NetLatency => {
            // The stub's delay mode (no netem here): answers come later, below
            // the probes' timeout, so clients see no failure (I4 checks both).
            let (_, victims) = replica_victims(topo, p).await?;
            let mut ids = Vec::new();
            for v in &victims {
                let cmd = faults::delay_command(&v.id, faults::NET_LATENCY_MS);
                faults::run_all(&t.inner, &[cmd]).await?;
                ids.push(v.id.clone());
                if !record.no_failures.contains(&v.service) {
                    record.no_failures.push(v.service.clone());
                }
            }
            record.target = victims
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            record.latency_ms = Some(faults::NET_LATENCY_MS);
            Some(Heal::Undelay { ids })
        }
        FaultKind::ServiceChurn => {
            // Whole services leave for good and new names arrive: with more
            // churn than the range has ports, an allocator that never reuses
            // a freed port runs dry.
            let live = rec.with(|h| h.live.clone());
            let gone = schedule::pick(&live, p.count, p.fraction, p.pick);
            for svc in &gone {
                let names: Vec<String> = topo
                    .containers(Some(svc))
                    .await?
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                remove_inner(t, &names).await?;
            }
            let new: Vec<String> = (0..gone.len())
                .map(|i| format!("churn-{seq}-{i}"))
                .collect();
            // With a hold, the new names start when it ends (e.g. only after
            // an engine cut, so no new container takes a vanished one's
            // address while the bridge cannot see either).
            let later = p.hold_ms > 0;
            if !later {
                for svc in &new {
                    topo.start_stub(svc, svc).await?;
                }
            }
            if let Ok(mut g) = probe_list.lock() {
                g.retain(|s| !gone.contains(s));
                g.extend(new.iter().cloned());
            }
            rec.with(|h| {
                for list in [&mut h.live, &mut h.probed] {
                    list.retain(|s| !gone.contains(s));
                    list.extend(new.iter().cloned());
                }
            });
            record.target = format!("removed {}; new {}", gone.join(","), new.join(","));
            record.services = gone.iter().chain(&new).cloned().collect();
            record.until_ms = now();
            later.then(|| Heal::Replace {
                names: new.iter().map(|n| (n.clone(), n.clone())).collect(),
            })
        }
        FaultKind::ServiceBurst => {
            // Many new services in the same instant: every `docker run` is
            // started before any is waited for.
            let n = p.count.unwrap_or(6) as usize;
            let new: Vec<String> = (0..n).map(|i| format!("burst-{seq}-{i}")).collect();
            let mut runs = tokio::task::JoinSet::new();
            for svc in &new {
                let args = topo.stub_args(svc, svc);
                let engine = t.inner.clone();
                runs.spawn(async move {
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    engine.run(&argv).await.map(drop)
                });
            }
            let mut failed = Vec::new();
            while let Some(r) = runs.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed.push(format!("{e:#}")),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if let Ok(mut g) = probe_list.lock() {
                g.extend(new.iter().cloned());
            }
            rec.with(|h| {
                h.live.extend(new.iter().cloned());
                h.probed.extend(new.iter().cloned());
            });
            if !failed.is_empty() {
                record.error = Some(format!(
                    "{} of {n} starts failed: {}",
                    failed.len(),
                    failed[0]
                ));
            }
            record.target = format!(
                "{n} new services at once ({}..)",
                new.first().map_or("", String::as_str)
            );
            record.services = new;
            record.until_ms = now();
            None
        }
        FaultKind::DuplicateStorm => {
            let n = p.count.unwrap_or(3);
            let mut sent = 0u64;
            let mut refused = 0u64;
            for s in &probed {
                for _ in 0..n {
                    match t.reserve(s).await {
                        // 200: already held (a duplicate); 201 would be a new reservation.
                        Ok((200, _)) => sent += 1,
                        _ => refused += 1,
                    }
                }
            }
            rec.with(|h| {
                if let Some(d) = h.expect.duplicates.as_mut() {
                    *d += sent;
                }
            });
            record.target = format!(
                "{sent} re-registrations of {} live services ({refused} refused)",
                probed.len()
            );
            if refused > 0 {
                record.error = Some(format!("{refused} re-registrations refused by the API"));
            }
            None
        }
        k => bail!("fault {k} is not implemented by the scenario runner"),
    };
    Ok((record, heal))
}
