//! Deployment faults: bridge kill and restart, engine restart, store
//! damage (`mesh_chaos::faults::store`), port squat, registration flood.

use crate::*;

pub(crate) async fn bridge_kill(ctx: &Ctx, a: BridgeKillArgs) -> Result<()> {
    let name = a.bridge_container.as_str();
    let flag = "--bridge-container";
    header(ctx, FaultKind::BridgeKill, &format!("kill -9 {name}"));
    let state = ctx.container_state(name, flag).await?;
    ensure!(
        state == "running",
        "bridge container {name} is {state}, not running: nothing to kill \
         (start it with `docker start {name}`)"
    );
    ctx.act_line(&faults::deploy::kill(name), QUICK).await?;
    if a.hold.is_zero() {
        println!(
            "  hold 0: {name} stays down; start it with `{}`",
            ctx.show(&["start", name])
        );
        return Ok(());
    }
    if ctx.dry {
        println!("  would wait {}", humantime::format_duration(a.hold));
    } else {
        println!(
            "  holding {name} down for {}",
            humantime::format_duration(a.hold)
        );
        hold_for(a.hold).await;
    }
    ctx.act_line(&faults::deploy::start(name), QUICK).await?;
    ctx.wait_running(name, flag, a.timeout).await
}

pub(crate) async fn bridge_restart(ctx: &Ctx, a: BridgeRestartArgs) -> Result<()> {
    let name = a.bridge_container.as_str();
    let flag = "--bridge-container";
    header(
        ctx,
        "bridge-restart",
        &format!("restart {name} (SIGTERM, then start)"),
    );
    ctx.container_state(name, flag).await?;
    ctx.act_line(&faults::deploy::restart(name), RESTART)
        .await?;
    ctx.wait_running(name, flag, a.timeout).await
}

pub(crate) async fn engine_restart(ctx: &Ctx, a: EngineRestartArgs) -> Result<()> {
    let name = a.engine_container.as_str();
    let flag = "--engine-container";
    let how = if a.dockerd_only {
        format!("SIGTERM dockerd inside {name}")
    } else {
        format!("restart the engine container {name}")
    };
    header(ctx, FaultKind::EngineRestart, &how);
    let state = ctx.container_state(name, flag).await?;
    if a.dockerd_only {
        ensure!(
            state == "running",
            "engine container {name} is {state}, not running: no dockerd to restart \
             (start it with `docker start {name}`, or drop --dockerd-only)"
        );
        ctx.act_line(&faults::deploy::term_dockerd(name), QUICK)
            .await
            .with_context(|| {
                format!(
                    "is {name} a DinD container with dockerd's pid in {}?",
                    faults::deploy::DOCKERD_PID_FILE
                )
            })?;
    } else {
        ctx.act_line(&faults::deploy::restart(name), RESTART)
            .await?;
    }
    let start = Instant::now();
    ctx.wait_running(name, flag, a.timeout).await?;
    if let Some(host) = &a.wait_engine {
        let inner = Docker::at(host.clone());
        if ctx.dry {
            println!(
                "  would wait up to {} for `docker -H {host} version` to answer",
                humantime::format_duration(a.timeout)
            );
            return Ok(());
        }
        // dockerd may still be the old one for a moment after a SIGTERM.
        tokio::time::sleep(Duration::from_millis(500)).await;
        loop {
            let left = a.timeout.saturating_sub(start.elapsed());
            let last = match inner
                .run_timeout(
                    &["version", "--format", "{{.Server.Version}}"],
                    left.min(QUICK),
                )
                .await
            {
                Ok(v) => {
                    println!(
                        "  engine {host} answers (version {}) after {} ms",
                        v.trim(),
                        start.elapsed().as_millis()
                    );
                    return Ok(());
                }
                Err(e) => e,
            };
            if start.elapsed() >= a.timeout {
                return Err(last).with_context(|| {
                    format!(
                        "the engine at {host} did not answer within {}; see `docker logs {name}` \
                         (or raise --timeout)",
                        humantime::format_duration(a.timeout)
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// `store-corrupt` / `store-truncate`: [`faults::store::damage`], its
/// findings and steps printed (steps as "would ..." in a dry run).
pub(crate) fn store_damage(ctx: &Ctx, dir: &Path, how: StoreDamage) -> Result<()> {
    let (kind, what) = match how {
        StoreDamage::Corrupt { seed } => (FaultKind::StoreCorrupt, format!("damage (seed {seed})")),
        StoreDamage::Truncate => (FaultKind::StoreTruncate, "cut inside its first page".into()),
    };
    header(
        ctx,
        kind,
        &format!("{what} {}", dir.join(files::STORE).display()),
    );
    faults::store::damage(dir, how, ctx.dry, &mut |said| match said {
        Said::Found(f) => println!("  {f}"),
        Said::Does(d) => ctx.step(&d),
    })
}

pub(crate) async fn port_squat(ctx: &Ctx, a: PortSquatArgs) -> Result<()> {
    ensure!(a.port != 0, "--port must be a port number in 1..=65535");
    ensure!(
        !a.hold.is_zero(),
        "--hold must be longer than 0 (e.g. --hold 30s): the port is released when it ends"
    );
    let addr = SocketAddr::new(a.bind_ip, a.port);
    let hold = humantime::format_duration(a.hold);
    header(
        ctx,
        FaultKind::PortSquat,
        &format!("listen on {addr} for {hold}"),
    );
    if ctx.dry {
        println!("  would listen on {addr} (accepting and closing connections) for {hold}");
        println!("  would release {addr}");
        return Ok(());
    }
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{addr} is already in use (another listener holds it); pick a free port of the range"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "cannot listen on {addr} ({e}): --bind-ip {} is not an address of this host",
            a.bind_ip
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {addr} ({e}); ports below 1024 need privileges"
        ),
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    println!(
        "  listening on {addr} for {hold} (pid {})",
        std::process::id()
    );
    let mut accepted = 0u64;
    let deadline = tokio::time::sleep(a.hold);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => {
                println!("  interrupted");
                break;
            }
            r = listener.accept() => {
                if let Ok((conn, _)) = r {
                    accepted += 1;
                    drop(conn);
                }
            }
        }
    }
    drop(listener);
    println!("  released {addr} ({accepted} connections accepted and closed)");
    Ok(())
}

pub(crate) async fn flood(ctx: &Ctx, a: FloodArgs) -> Result<()> {
    ensure!(
        (1..=MAX_FLOOD).contains(&a.count),
        "--count must be in 1..={MAX_FLOOD}"
    );
    for l in &a.label {
        ensure!(
            l.split_once('=').is_some_and(|(k, _)| !k.is_empty()),
            "--label {l:?} is not K=V (e.g. --label mesh-bridge.test=flood)"
        );
    }
    header(
        ctx,
        FaultKind::RegistrationFlood,
        &format!("start {} containers of {}", a.count, a.image),
    );
    match ctx
        .docker
        .run_timeout(
            &["image", "inspect", "--format", "{{.Id}}", &a.image],
            QUICK,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if format!("{e:#}").contains("No such") => bail!(
            "image {} is not on the engine ({}); pull or build it first (docker pull {})",
            a.image,
            ctx.engine_name(),
            a.image
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "is the engine ({}) reachable? set DOCKER_HOST or --docker-host",
                    ctx.engine_name()
                )
            });
        }
    }
    let mut started: Vec<String> = Vec::new();
    for i in 1..=a.count {
        let service = format!("{SERVICE_LABEL}=flood-{i}");
        let mut args = vec!["run", "-d", "--label", &service];
        for l in &a.label {
            args.extend(["--label", l.as_str()]);
        }
        args.extend(["--label", FLOOD_LABEL, &a.image]);
        match ctx.act(&args, QUICK).await {
            Ok(id) => {
                if !ctx.dry {
                    started.push(id.trim().to_string());
                }
            }
            Err(e) => {
                if !started.is_empty() {
                    eprintln!(
                        "mesh-chaos: flood container {i} failed; removing the {} started",
                        started.len()
                    );
                    let mut rm = vec!["rm", "--force"];
                    rm.extend(started.iter().map(String::as_str));
                    if let Err(e2) = ctx.act(&rm, QUICK * 3).await {
                        eprintln!("mesh-chaos: cleanup failed too: {e2:#}");
                    }
                }
                return Err(e).context(format!("starting flood container {i} of {}", a.count));
            }
        }
    }
    let cleanup = format!(
        "{} $({})",
        ctx.show(&["rm", "--force"]),
        ctx.show(&["ps", "-aq", "--filter", &format!("label={FLOOD_LABEL}")])
    );
    if a.hold.is_zero() {
        println!("  hold 0: the flood containers stay; remove them with: {cleanup}");
        return Ok(());
    }
    if ctx.dry {
        println!("  would wait {}", humantime::format_duration(a.hold));
        println!(
            "  would run: {}",
            ctx.show(&["rm", "--force", "<the containers started>"])
        );
        return Ok(());
    }
    println!(
        "  started {}; holding for {}",
        started.len(),
        humantime::format_duration(a.hold)
    );
    hold_for(a.hold).await;
    let mut rm = vec!["rm", "--force"];
    rm.extend(started.iter().map(String::as_str));
    ctx.act(&rm, QUICK * 3)
        .await
        .with_context(|| format!("removing the flood containers; remove them with: {cleanup}"))?;
    Ok(())
}
