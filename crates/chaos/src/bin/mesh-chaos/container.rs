//! Container faults on victims chosen by label (`--label`, `--count`,
//! `--fraction`, `--seed`), through `mesh_chaos::faults::container`.

use crate::*;

/// The five container faults, by label, count or fraction, seeded.
pub(crate) async fn containers(ctx: &Ctx, kind: FaultKind, cli: ContainerArgs) -> Result<()> {
    if let Some(f) = cli.pick.fraction {
        ensure!(f > 0.0 && f <= 1.0, "--fraction must be in (0, 1]");
    }
    let interval = match &cli.interval {
        Some(i) => Some(mesh_chaos::scenario::dur("--interval", i)?),
        None => None,
    };
    let hold = mesh_chaos::scenario::dur("--hold", &cli.hold)?;
    let rounds = if interval.is_some() {
        cli.rounds.clamp(1, 10_000)
    } else {
        1
    };
    let docker = &ctx.docker;
    let mut seeds = rand_seeds(cli.seed, rounds);
    for round in 0..rounds {
        let containers = docker.list(&cli.pick.label).await?;
        let running: Vec<_> = containers
            .into_iter()
            .filter(|c| c.state == "running" || kind == FaultKind::ContainerRemove)
            .collect();
        let victims = schedule::pick(&running, cli.pick.count, cli.pick.fraction, seeds.remove(0));
        let ids: Vec<String> = victims.iter().map(|c| c.id.clone()).collect();
        let names: Vec<&str> = victims.iter().map(|c| c.name.as_str()).collect();
        let cmds = faults::container_commands(kind, &ids);
        let heal = faults::container_heal_commands(kind, &ids);
        println!(
            "round {}: {} {} of {} matching [{}]",
            round + 1,
            kind,
            victims.len(),
            running.len(),
            names.join(", ")
        );
        for c in &cmds {
            println!(
                "  {}docker {}",
                if ctx.dry { "would run: " } else { "" },
                c.join(" ")
            );
        }
        if !hold.is_zero() {
            for c in &heal {
                println!(
                    "  {}after {}: docker {}",
                    if ctx.dry { "would run " } else { "" },
                    humantime::format_duration(hold),
                    c.join(" ")
                );
            }
        }
        if !ctx.dry {
            faults::run_all(docker, &cmds).await?;
            if !hold.is_zero() && !heal.is_empty() {
                hold_for(hold).await;
                faults::run_all(docker, &heal).await?;
            }
        }
        if round + 1 < rounds
            && let Some(i) = interval
        {
            if ctx.dry {
                println!("  would wait {}", humantime::format_duration(i));
            } else {
                tokio::time::sleep(i.saturating_sub(hold).max(Duration::from_millis(1))).await;
            }
        }
    }
    Ok(())
}

/// The running replicas a network fault hits, chosen as the scenarios do.
pub(crate) async fn victims(ctx: &Ctx, a: &VictimArgs) -> Result<Vec<faults::Container>> {
    if let Some(f) = a.pick.fraction {
        ensure!(f > 0.0 && f <= 1.0, "--fraction must be in (0, 1]");
    }
    ensure!(
        !a.hold.is_zero(),
        "--hold must be longer than 0 (e.g. --hold 10s): the fault is healed when it ends"
    );
    let running: Vec<_> = ctx
        .docker
        .list(&a.pick.label)
        .await?
        .into_iter()
        .filter(|c| c.state == "running")
        .collect();
    ensure!(
        !running.is_empty(),
        "no running container matches {:?} on the engine ({}); check --label against `docker ps`",
        a.pick.label,
        ctx.engine_name()
    );
    Ok(schedule::pick(
        &running,
        a.pick.count,
        a.pick.fraction,
        a.seed,
    ))
}

/// One victim seed a round, from the run's seed.
pub(crate) fn rand_seeds(seed: u64, rounds: u32) -> Vec<u64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..rounds).map(|_| rng.random()).collect()
}
