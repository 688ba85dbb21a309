//! `cargo xtask scenario plan NAME`: the dry run. Prints the topology and
//! the seeded schedule, each fault with what the runner will do (the
//! command lines of `mesh_chaos::faults` where they are fixed, with the
//! victims the run picks at that moment as placeholders); starts nothing and
//! needs no Docker engine.

use super::*;

/// Prints the plan of one scenario run.
pub fn print(chosen: &Chosen) -> Result<()> {
    let (scn, seed) = chosen.load()?;
    let plan = schedule::build(&scn, seed)?;
    for line in lines(&scn, seed, &plan)? {
        println!("{line}");
    }
    Ok(())
}

/// The plan as text lines (what [`print`] prints).
pub fn lines(scn: &Scenario, seed: u64, plan: &[Planned]) -> Result<Vec<String>> {
    let mut out = vec![
        format!(
            "scenario {} (seed {seed}): {} of faults, then {} to settle; mesh ports {}",
            scn.name, scn.duration, scn.settle, scn.bridge.ports
        ),
        format!("would start {} services:", scn.services.len()),
    ];
    for s in &scn.services {
        let mut line = format!("  {} x{}", s.name, s.replicas);
        if s.transport != ServiceTransport::Stateless {
            line.push_str(&format!(" ({:?}", s.transport).to_lowercase());
            if s.server == ServerKind::McpServerTime {
                line.push_str(", mcp-server-time");
            }
            if s.sdk_client {
                line.push_str(", driven by the SDK client too");
            }
            line.push(')');
        }
        out.push(line);
    }
    out.push(format!("would inject {} faults:", plan.len()));
    for p in plan {
        let who = match (&p.target, p.count, p.fraction) {
            (t, Some(n), _) => format!("{n} of {}", t.as_deref().unwrap_or("all services")),
            (t, None, Some(f)) => format!("{f} of {}", t.as_deref().unwrap_or("all services")),
            (Some(t), None, None) => t.clone(),
            (None, None, None) => "-".into(),
        };
        let hold = if p.hold_ms > 0 {
            format!(", heal after {} ms", p.hold_ms)
        } else {
            String::new()
        };
        out.push(format!(
            "  {:>9.1}s {:<18} {who}{hold}: {}",
            p.t_ms as f64 / 1000.0,
            p.kind.as_str(),
            action(p)
        ));
    }
    Ok(out)
}

fn shell(line: &[String]) -> String {
    format!("docker {}", line.join(" "))
}

/// What the runner does for one planned fault.
fn action(p: &Planned) -> String {
    use faults::deploy;
    let victims = ["<victims>".to_string()];
    let k = p.kind;
    match k {
        _ if k.is_container() => {
            let mut cmds: Vec<String> = faults::container_commands(k, &victims)
                .iter()
                .map(|c| shell(c))
                .collect();
            match faults::container_heal_commands(k, &victims).as_slice() {
                [] if k == FaultKind::ContainerRemove => {
                    cmds.push("then start a replacement per victim".into())
                }
                [] => {}
                heal => cmds.extend(heal.iter().map(|c| format!("heal: {}", shell(c)))),
            }
            cmds.join("; ")
        }
        FaultKind::BridgeKill => format!(
            "{}; `mesh-bridge state check` and export; {}",
            shell(&deploy::kill("<bridge>")),
            shell(&deploy::start("<bridge>"))
        ),
        FaultKind::StoreCorrupt | FaultKind::StoreTruncate => format!(
            "{}; damage state.db (mesh_chaos::faults::store); check; {}; the damaged file must be moved aside",
            shell(&deploy::stop("<bridge>")),
            shell(&deploy::start("<bridge>"))
        ),
        FaultKind::EngineRestart => format!(
            "{}; wait for the engine",
            shell(&deploy::term_dockerd("<engine>"))
        ),
        FaultKind::EngineCut => "REJECT the bridge's tcp :2375 inside the engine container".into(),
        FaultKind::DiskFull => "fill the state dir (64 MiB at most), start new services".into(),
        FaultKind::PortSquat => {
            "stub squatters on free mesh ports in the bridge's namespace, then a new service that must skip them".into()
        }
        FaultKind::RegistrationFlood => {
            "start (free ports + count) new services: the overflow must be refused and counted".into()
        }
        FaultKind::DuplicateStorm => "POST reservations again for held services (each must answer 200)".into(),
        FaultKind::ServiceChurn => "remove whole services for good, start as many new names".into(),
        FaultKind::ServiceBurst => "start `count` new services at once".into(),
        FaultKind::NetLatency => {
            let on = faults::delay_command("<replica>", faults::NET_LATENCY_MS);
            let off = faults::delay_command("<replica>", 0);
            format!("{}; heal: {}", shell(&on), shell(&off))
        }
        _ if k.is_network() => {
            let rule = k.net_rule("<replica-ip>", 8080, faults::NET_LOSS).join(" ");
            format!("iptables -I OUTPUT {rule} in the bridge's namespace; heal: -D")
        }
        _ => "see docs/DESIGN.md 4.1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ci_scenario_plans_without_an_engine() {
        for s in Scenario::load_dir(&scenario_dir()).unwrap() {
            let plan = schedule::build(&s, s.seed).unwrap();
            let text = lines(&s, s.seed, &plan).unwrap();
            assert_eq!(text.len(), 3 + s.services.len() + plan.len(), "{}", s.name);
            for (line, p) in text.iter().skip(3 + s.services.len()).zip(&plan) {
                assert!(line.contains(p.kind.as_str()), "{line}");
                assert!(!line.ends_with("see docs/DESIGN.md 4.1"), "{line}");
            }
        }
    }
}
