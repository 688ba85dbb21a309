//! One scenario run from start to verdicts: topology up, probes and
//! poller, the seeded schedule, heals, settle, Docker's truth, report.

use super::*;

pub(super) async fn run_scenario(
    scn: &Scenario,
    seed: u64,
    args: &RunArgs,
    run_id: &str,
    cleanup: &mut Cleanup,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RunOutput> {
    let t_setup = Instant::now();
    let dir = out_root().join(format!("{}-{}", scn.name, seed));
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let plan = schedule::build(scn, seed)?;
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_string_pretty(&plan)?,
    )?;
    let mesh_ports = scn.bridge.all_ports()?;
    let host = Docker::default();
    let engine = args.engine;
    let bridge_image = args.bridge_image.as_str();
    // The images the services run, loaded into a DinD engine.
    let mut service_images = vec![STUB_IMAGE];
    if scn
        .services
        .iter()
        .any(|s| s.server == ServerKind::McpServerTime)
    {
        service_images.push(images::MCP_PYTHON);
    }
    for img in std::iter::once(bridge_image).chain(service_images.iter().copied()) {
        require_image(&host, img).await?;
    }
    let label_pairs = vec![
        (faults::TEST_LABEL.to_string(), TEST_VALUE.to_string()),
        ("mesh-bridge.run".to_string(), run_id.to_string()),
        (crate::owner::LABEL.to_string(), crate::owner::me()),
    ];
    let labels: Vec<String> = label_pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let bridge_name = format!("mb-bridge-{run_id}");
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir)?;
    if scn.faults.iter().any(|f| f.kind == FaultKind::DiskFull) {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs"])
            .arg(&state_dir)
            .status()?;
        if st.success() {
            cleanup.mounts.push(state_dir.clone());
            say("state dir on a 2 MiB tmpfs (disk-full fault)");
        } else {
            say(
                "could not mount a tmpfs for the state dir; disk-full will fill the real disk's quota-less dir (bounded to 64 MiB)",
            );
        }
    }
    let token = format!(
        "chaos-{:016x}{:08x}",
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        std::process::id()
    );
    mesh_bridge::token::write(&dir.join("token"), &token)?;

    // --- engine and bridge ---------------------------------------------------
    let (inner, netns, engine_name, port_map, api, how) = match engine {
        Engine::Dind => {
            require_image(&host, images::DIND).await?;
            say(&format!(
                "starting DinD ({} mesh ports published to 127.0.0.1)",
                mesh_ports.len()
            ));
            let (c, how) = start_dind(&mesh_ports, &label_pairs, say).await?;
            let id = c.id().to_string();
            let ports = c.ports().await?;
            cleanup.dind = Some(c);
            let hp = |p: u16| ports.map_to_host_port_ipv4(ContainerPort::Tcp(p));
            let engine_port = hp(2375).context("2375 not published")?;
            let api_port = hp(API_PORT).context("the API port is not published")?;
            let mut map = HashMap::new();
            for p in &mesh_ports {
                map.insert(*p, hp(*p).with_context(|| format!("{p} not published"))?);
            }
            let inner = Docker::at(format!("tcp://127.0.0.1:{engine_port}"));
            wait_engine(&inner, Duration::from_secs(90)).await?;
            say(&format!(
                "inner engine up on tcp://127.0.0.1:{engine_port} after {:.1}s ({how})",
                t_setup.elapsed().as_secs_f64()
            ));
            let t = Instant::now();
            let list = service_images.join(" ");
            let load = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker save {list} | docker -H tcp://127.0.0.1:{engine_port} load -q"
                ))
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(180), load).await??;
            if !out.status.success() {
                bail!(
                    "loading {list} into the inner engine: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            say(&format!(
                "{list} loaded into the inner engine in {:.1}s",
                t.elapsed().as_secs_f64()
            ));
            (
                inner,
                format!("container:{id}"),
                Some(id),
                PortMap { map },
                SocketAddr::from(([127, 0, 0, 1], api_port)),
                how,
            )
        }
        Engine::Host => {
            // A netns holder (a stub) publishes the ports; the bridge joins it
            // and watches the host engine through its socket.
            let net = format!("{bridge_name}-net");
            let mut args = vec!["network", "create"];
            for l in &labels {
                args.extend(["--label", l.as_str()]);
            }
            args.push(&net);
            host.run(&args).await?;
            cleanup.networks.push(net.clone());
            let holder = format!("{bridge_name}-ns");
            let mut args: Vec<String> =
                vec!["run".into(), "-d".into(), "--name".into(), holder.clone()];
            for l in &labels {
                args.push("--label".into());
                args.push(l.clone());
            }
            args.extend([
                "--network".into(),
                net.clone(),
                "-e".into(),
                "MCP_STUB_PORT=1".into(),
            ]);
            args.extend(["-p".into(), format!("127.0.0.1::{API_PORT}")]);
            for p in &mesh_ports {
                args.push("-p".into());
                args.push(format!("127.0.0.1::{p}"));
            }
            args.push(STUB_IMAGE.into());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            host.run(&argv).await?;
            let mut map = HashMap::new();
            let mut api_port = 0;
            let out = host.run(&["port", &holder]).await?;
            for line in out.lines() {
                // "11100/tcp -> 127.0.0.1:49153"
                let Some((c, h)) = line.split_once(" -> ") else {
                    continue;
                };
                let c: u16 = c.trim_end_matches("/tcp").parse().unwrap_or(0);
                let h: u16 = h
                    .rsplit(':')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                if c == API_PORT {
                    api_port = h;
                } else {
                    map.insert(c, h);
                }
            }
            (
                host.clone(),
                format!("container:{holder}"),
                None,
                PortMap { map },
                SocketAddr::from(([127, 0, 0, 1], api_port)),
                "host engine (no DinD)".to_string(),
            )
        }
    };
    let target = Target {
        outer: host.clone(),
        inner: inner.clone(),
        bridge: bridge_name.clone(),
        engine: engine_name.clone(),
        state_dir: state_dir.clone(),
        bridge_image: bridge_image.into(),
        stub_image: STUB_IMAGE.into(),
        api,
        token: token.clone(),
        labels: labels.clone(),
        bridge_netns: netns.clone(),
    };
    let topo = Topo {
        target: target.clone(),
        ports: port_map.clone(),
        engine,
        labels: labels.clone(),
        specs: scn
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
    };

    // Services first, then the bridge: its first resync finds them.
    let t = Instant::now();
    for s in &scn.services {
        for r in 0..s.replicas {
            topo.start_stub(&format!("{}-{r}", s.name), &s.name).await?;
        }
    }
    say(&format!(
        "{} stub containers started in {:.1}s",
        scn.containers(),
        t.elapsed().as_secs_f64()
    ));

    let docker_host = match engine {
        Engine::Dind => "tcp://127.0.0.1:2375".to_string(),
        Engine::Host => "unix:///var/run/docker.sock".to_string(),
    };
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        bridge_name.clone(),
    ];
    for l in &labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    args.extend(
        [
            "--network",
            &netns,
            "-v",
            &format!("{}:/state", state_dir.display()),
            "-v",
            &format!("{}:/run/mesh-token:ro", dir.join("token").display()),
            "-e",
            "MESH_BRIDGE_LOG=info",
        ]
        .map(String::from),
    );
    if engine == Engine::Host {
        args.extend([
            "-v".into(),
            "/var/run/docker.sock:/var/run/docker.sock".into(),
        ]);
    }
    args.extend(
        [
            bridge_image,
            "run",
            "--docker-host",
            &docker_host,
            "--ports",
            &scn.bridge.ports,
            "--grace",
            &scn.bridge.grace,
            "--resync",
            &scn.bridge.resync,
            "--leak-cycles",
            &scn.bridge.leak_cycles.to_string(),
            "--hold",
            &scn.bridge.hold,
            "--api-token-file",
            "/run/mesh-token",
            "--state-dir",
            "/state",
            "--listen",
            &format!("0.0.0.0:{API_PORT}"),
            "--bind-ip",
            "0.0.0.0",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    host.run(&argv).await?;

    // Ready, and every service serving.
    let want: Vec<String> = scn.services.iter().map(|s| s.name.clone()).collect();
    let t = Instant::now();
    loop {
        let snap = probe::snapshot(api, 0).await;
        let serving = want
            .iter()
            .filter(|w| {
                snap.services.iter().any(|s| {
                    &s.name == *w && s.port.is_some() && s.state == probe::ServiceState::Serving
                })
            })
            .count();
        if serving == want.len() {
            break;
        }
        if t.elapsed() > Duration::from_secs(90) {
            let logs = host
                .run(&["logs", "--tail", "20", &bridge_name])
                .await
                .unwrap_or_default();
            bail!(
                "only {serving}/{} services serving after 90s; bridge log tail:\n{logs}",
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    say(&format!(
        "bridge ready, {} services serving; setup took {:.1}s",
        want.len(),
        t_setup.elapsed().as_secs_f64()
    ));

    // --- harness metrics and Prometheus ---------------------------------------
    let hm = HarnessMetrics::new()?;
    let (maddr, mtask) = hm.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut prometheus_addr = None;
    if let Some((child, addr)) = start_prometheus(&dir, api, maddr, say)? {
        cleanup.children.push(child);
        prometheus_addr = Some(addr);
    }

    // --- the run ---------------------------------------------------------------
    let rec = Recorder::default();
    let start = Instant::now();
    let total = scn.duration()?;
    let settle = scn.settle()?;
    let session_targets: Vec<_> = scn
        .services
        .iter()
        .filter_map(|s| s.session_target())
        .collect();
    let sdk_targets: Vec<_> = scn
        .services
        .iter()
        .filter(|s| s.sdk_client)
        .filter_map(|s| s.session_target())
        .collect();
    rec.with(|h| {
        h.session_services = session_targets
            .iter()
            .map(|t| (t.service.clone(), t.kind))
            .collect();
        h.api_port = Some(API_PORT);
        h.probed = want.clone();
        h.live = want.clone();
        h.grace_ms = dur("grace", &scn.bridge.grace).map_or(0, |d| d.as_millis() as u64);
        h.settle_from_ms = total.as_millis() as u64;
        let flood = scn
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::RegistrationFlood);
        h.expect.exhaustion = Some(flood);
        // Each flood adds the services it left without a port, exactly;
        // unless faults run at random times too: one may free or take
        // ports in the instant of a flood, and then only "it moved" holds.
        let random = scn.faults.iter().any(|f| f.random);
        h.expect.exhaustion_events = (flood && !random).then_some(0);
        if scn
            .faults
            .iter()
            .all(|f| f.kind == FaultKind::DuplicateStorm)
        {
            h.expect.duplicates = Some(0);
        }
    });
    // One-shot probes for stateless services; the session probes keep
    // sessions with the others.
    let stateless: Vec<String> = want
        .iter()
        .filter(|w| !session_targets.iter().any(|t| &t.service == *w))
        .cloned()
        .collect();
    let probe_list = Arc::new(Mutex::new(stateless));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(probe::run_poller(
        rec.clone(),
        api,
        start,
        Duration::from_millis(500),
        stop_rx.clone(),
    ));
    let binds = tokio::spawn(sample_binds(
        rec.clone(),
        bridge_name.clone(),
        start,
        stop_rx.clone(),
    ));
    // Let the poller learn the ports before the probes start.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let probes = tokio::spawn(probe::run_probes(
        rec.clone(),
        probe_list.clone(),
        port_map.clone(),
        start,
        Duration::from_millis(250),
        hm.clone(),
        stop_rx.clone(),
    ));
    let sessions = tokio::spawn(mesh_chaos::session::run_sessions(
        rec.clone(),
        session_targets,
        port_map.clone(),
        start,
        Duration::from_millis(250),
        hm.clone(),
        stop_rx.clone(),
    ));
    let sdk = tokio::spawn(run_sdk_clients(
        rec.clone(),
        sdk_targets,
        port_map.clone(),
        start,
        stop_rx.clone(),
    ));

    let mut heals = tokio::task::JoinSet::new();
    // Faults with a heal scheduled, until it has run (see below).
    let unhealed: Arc<Mutex<std::collections::BTreeSet<usize>>> = Arc::default();
    let topo = Arc::new(topo);
    let mut last_report = Instant::now();
    for (i, p) in plan.iter().enumerate() {
        let at = start + Duration::from_millis(p.t_ms);
        while Instant::now() < at {
            tokio::time::sleep((at - Instant::now()).min(Duration::from_secs(5))).await;
            if last_report.elapsed() >= Duration::from_secs(10) {
                progress(&rec, start, total, say);
                last_report = Instant::now();
            }
        }
        let t_ms = start.elapsed().as_millis() as u64;
        hm.fault(p.kind.as_str());
        let r = inject(&topo, p, i, t_ms, &rec, &probe_list, start).await;
        let (rec_idx, heal) = match r {
            Ok((record, heal)) => {
                say(&format!(
                    "t={:>6.1}s {} -> {}",
                    t_ms as f64 / 1000.0,
                    p.kind,
                    record.target
                ));
                let idx = rec.with(|h| {
                    h.faults.push(record);
                    h.faults.len() - 1
                });
                (idx, heal)
            }
            Err(e) => {
                say(&format!(
                    "t={:>6.1}s {} FAILED: {e:#}",
                    t_ms as f64 / 1000.0,
                    p.kind
                ));
                rec.with(|h| {
                    h.faults.push(FaultRecord {
                        t_ms,
                        kind: p.kind,
                        target: p.target.clone().unwrap_or_default(),
                        services: Vec::new(),
                        until_ms: t_ms,
                        may_move: Vec::new(),
                        error: Some(format!("{e:#}")),
                        no_failures: Vec::new(),
                        latency_ms: None,
                    })
                });
                continue;
            }
        };
        if let Some(heal) = heal {
            let topo = topo.clone();
            let rec = rec.clone();
            let hold = Duration::from_millis(p.hold_ms);
            let probe_list = probe_list.clone();
            let unhealed = unhealed.clone();
            if let Ok(mut u) = unhealed.lock() {
                u.insert(rec_idx);
            }
            heals.spawn(async move {
                tokio::time::sleep(hold).await;
                let err = heal.run(&topo, &probe_list).await.err();
                if let Ok(mut u) = unhealed.lock() {
                    u.remove(&rec_idx);
                }
                let t = start.elapsed().as_millis() as u64;
                rec.with(|h| {
                    if let Some(f) = h.faults.get_mut(rec_idx) {
                        f.until_ms = t;
                        if let Some(e) = err {
                            f.error = Some(format!("heal: {e:#}"));
                        }
                    }
                });
            });
        }
    }
    // Wait out the duration, then heal everything, then settle.
    while start.elapsed() < total {
        tokio::time::sleep((total.saturating_sub(start.elapsed())).min(Duration::from_secs(5)))
            .await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            progress(&rec, start, total, say);
            last_report = Instant::now();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while heals.join_next().await.is_some() {}
    })
    .await;
    heals.abort_all();
    // A heal that never finished leaves its fault in place: say so in the
    // record instead of showing a fault that ended the moment it began.
    let left: Vec<usize> = unhealed
        .lock()
        .map(|u| u.iter().copied().collect())
        .unwrap_or_default();
    rec.with(|h| {
        for i in left {
            if let Some(f) = h.faults.get_mut(i) {
                f.error = Some("heal did not finish within 60 s of the run's end".into());
            }
        }
    });
    rec.with(|h| h.settle_from_ms = h.settle_from_ms.max(start.elapsed().as_millis() as u64));
    say(&format!(
        "faults done; settling {}",
        humantime::format_duration(settle)
    ));
    tokio::time::sleep(settle).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), probes).await;
    // Sessions end with their DELETE (bounded by the probe timeout each).
    let _ = tokio::time::timeout(Duration::from_secs(20), sessions).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), sdk).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), poller).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), binds).await;
    // Docker's truth (running containers per service) next to the final
    // snapshot, for I9.
    let truth = match target.inner.list(&labels).await {
        Ok(cs) => {
            let mut m = std::collections::BTreeMap::new();
            for c in cs.iter().filter(|c| !c.service.is_empty()) {
                *m.entry(c.service.clone()).or_insert(0usize) += usize::from(c.state == "running");
            }
            Some(m)
        }
        Err(e) => {
            say(&format!(
                "could not list the services' containers at the end: {e:#}"
            ));
            None
        }
    };
    let fin = probe::snapshot(api, start.elapsed().as_millis() as u64).await;
    rec.with(|h| {
        h.truth = truth;
        h.snapshots.push(fin);
        h.end_ms = start.elapsed().as_millis() as u64;
    });
    let h = rec.history();
    let (verdicts, fig) = invariants::check(
        &h,
        Marks {
            availability: scn.thresholds.availability,
            recovery_ms: scn.thresholds.recovery_ms,
        },
    );
    let mut verdicts = verdicts;
    for alert in &scn.expect_alerts {
        verdicts.push(alert_fired(prometheus_addr, alert, say).await);
    }
    for v in verdicts.iter().filter(|v| !v.held) {
        hm.violation(&v.id);
    }
    let r = report::build(
        &scn.name,
        seed,
        &how_short(engine),
        &h,
        &verdicts,
        &fig,
        h.end_ms,
    );
    report::write_all(&dir, &r, &h)?;
    // Bridge log for the record.
    if let Ok(out) = tokio::process::Command::new("docker")
        .args(["logs", "--tail", "400", &bridge_name])
        .output()
        .await
    {
        let mut log = out.stdout;
        log.extend_from_slice(&out.stderr);
        let _ = std::fs::write(dir.join("bridge.log"), log);
    }
    std::fs::write(
        dir.join("topology.txt"),
        format!("engine: {how}\napi: {api}\nharness metrics: {maddr}\n"),
    )?;
    // One more Prometheus scrape of the final counters.
    if !cleanup.children.is_empty() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    mtask.abort();
    Ok(RunOutput { dir, report: r })
}

pub(super) fn how_short(e: Engine) -> String {
    match e {
        Engine::Dind => "dind".into(),
        Engine::Host => "host".into(),
    }
}

pub(super) fn progress(
    rec: &Recorder,
    start: Instant,
    total: Duration,
    say: &(dyn Fn(&str) + Sync),
) {
    let (n, ok, f, in_use) = rec.with(|h| {
        let recent: Vec<_> = h.samples.iter().rev().take(200).collect();
        (
            recent.len(),
            recent
                .iter()
                .filter(|s| s.outcome == probe::Outcome::Ok)
                .count(),
            h.faults.len(),
            h.snapshots.last().and_then(|s| s.pool_field(|p| p.in_use)),
        )
    });
    say(&format!(
        "  .. {:>5.0}s/{:.0}s  faults {f}  recent probes ok {ok}/{n}  ports in use {}",
        start.elapsed().as_secs_f64(),
        total.as_secs_f64(),
        in_use.map_or("?".into(), |x| x.to_string())
    ));
}

/// Samples the bridge container's listening ports (its process's sockets,
/// read from `/proc`) every second until `stop`, for I10.
async fn sample_binds(
    rec: Recorder,
    bridge: String,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let host = Docker::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Bounded: a day of samples.
    for _ in 0..86_400 {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        let t_ms = start.elapsed().as_millis() as u64;
        let pid = host
            .run(&["inspect", "--format", "{{.State.Pid}}", &bridge])
            .await
            .map_err(|e| format!("{e:#}"))
            .and_then(|out| out.trim().parse::<u32>().map_err(|e| e.to_string()))
            .and_then(|pid| match pid {
                0 => Err("the bridge is not running".to_string()),
                pid => Ok(pid),
            });
        let sample = match pid.and_then(|pid| {
            mesh_chaos::binds::listening_ports(pid)
                .map_err(|e| format!("reading /proc/{pid}: {e} (the harness needs root)"))
        }) {
            Ok(ports) => mesh_chaos::binds::BindSample {
                t_ms,
                ports,
                error: None,
            },
            Err(e) => mesh_chaos::binds::BindSample {
                t_ms,
                ports: Vec::new(),
                error: Some(e),
            },
        };
        rec.with(|h| h.binds.push(sample));
    }
}
