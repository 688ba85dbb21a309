//! Network faults between the bridge and chosen replicas: the iptables
//! rules of `mesh_chaos::faults::network` in the bridge's network namespace,
//! and the stub's delay mode; always healed.

use crate::*;

/// Where a network fault's iptables rules go.
pub(crate) struct Netns {
    /// `docker exec` target and its engine, or None for this host.
    container: Option<(Docker, String)>,
}

impl Netns {
    /// The iptables command line itself.
    fn iptables(op: &str, rule: &[String]) -> Vec<String> {
        let mut v: Vec<String> = ["iptables", op, "OUTPUT"].map(String::from).to_vec();
        v.extend(rule.iter().cloned());
        v
    }

    /// The whole command line as it would be typed.
    fn show(&self, op: &str, rule: &[String]) -> String {
        let ipt = Self::iptables(op, rule).join(" ");
        match &self.container {
            Some((d, name)) => match &d.host {
                Some(h) => format!("docker -H {h} exec {name} {ipt}"),
                None => format!("docker exec {name} {ipt}"),
            },
            None => ipt,
        }
    }

    async fn run(&self, op: &str, rule: &[String]) -> Result<()> {
        println!("  run: {}", self.show(op, rule));
        let ipt = Self::iptables(op, rule);
        match &self.container {
            Some((d, name)) => {
                let mut args = vec!["exec", name.as_str()];
                args.extend(ipt.iter().map(String::as_str));
                d.run_timeout(&args, QUICK).await.map(drop)
            }
            None => {
                let out = tokio::process::Command::new(&ipt[0])
                    .args(&ipt[1..])
                    .output()
                    .await
                    .context(
                        "cannot run iptables on this host (is it installed? are we root?); \
                         or pass --netns-container",
                    )?;
                ensure!(
                    out.status.success(),
                    "{} failed: {}",
                    ipt.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            }
        }
    }
}

/// net-loss, net-reset, net-blackhole: an iptables OUTPUT rule in the
/// bridge's network namespace per chosen replica, deleted after the hold
/// (also when adding a later rule failed, or on Ctrl-C).
pub(crate) async fn net(ctx: &Ctx, kind: FaultKind, a: NetArgs) -> Result<()> {
    ensure!(
        a.probability > 0.0 && a.probability <= 1.0,
        "--probability must be in (0, 1]"
    );
    let chosen = victims(ctx, &a.victims).await?;
    let hold = humantime::format_duration(a.victims.hold);
    header(
        ctx,
        kind,
        &format!(
            "{} replica(s) for {hold}: {}",
            chosen.len(),
            chosen
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let ns = Netns {
        container: a.netns_container.clone().map(|n| {
            let host = a.netns_host.clone().or_else(|| ctx.docker.host.clone());
            (Docker { host }, n)
        }),
    };
    let mut rules = Vec::new();
    for c in &chosen {
        let ip = ctx.docker.address_of(&c.id).await?;
        rules.push(kind.net_rule(&ip, a.port, a.probability));
    }
    if ctx.dry {
        for r in &rules {
            println!("  would run: {}", ns.show("-I", r));
        }
        println!("  would wait {hold}, then delete each rule:");
        for r in &rules {
            println!("  would run: {}", ns.show("-D", r));
        }
        return Ok(());
    }
    let mut added = Vec::new();
    let mut failure = None;
    for r in &rules {
        match ns.run("-I", r).await {
            Ok(()) => added.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        hold_for(a.victims.hold).await;
    }
    let mut heal_failed = Vec::new();
    for r in added {
        if let Err(e) = ns.run("-D", r).await {
            heal_failed.push(format!("{e:#}"));
        }
    }
    if !heal_failed.is_empty() {
        bail!(
            "could not delete {} rule(s); delete them by hand (`iptables -D OUTPUT ...` as printed above): {}",
            heal_failed.len(),
            heal_failed.join("; ")
        );
    }
    match failure {
        Some(e) => Err(e.context("adding a rule failed; the rules added before it were deleted")),
        None => Ok(()),
    }
}

/// net-latency: the mcp-stub's delay mode on each chosen replica, ended after the hold.
pub(crate) async fn latency(ctx: &Ctx, a: LatencyArgs) -> Result<()> {
    let ms = u64::try_from(a.delay.as_millis()).unwrap_or(u64::MAX);
    ensure!(
        ms > 0 && ms <= mesh_chaos::stub::MAX_DELAY_MS,
        "--delay must be between 1ms and {}ms",
        mesh_chaos::stub::MAX_DELAY_MS
    );
    let chosen = victims(ctx, &a.victims).await?;
    let hold = humantime::format_duration(a.victims.hold);
    header(
        ctx,
        FaultKind::NetLatency,
        &format!("{ms} ms on {} replica(s) for {hold}", chosen.len()),
    );
    let mut set = Vec::new();
    let mut failure = None;
    for c in &chosen {
        let argv = faults::delay_command(&c.id, ms);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        match ctx.act(&args, QUICK).await {
            Ok(_) => set.push(c),
            Err(e) => {
                failure = Some(e.context(format!(
                    "{} has no mcp-stub delay mode (net-latency needs the mcp-stub image)",
                    c.name
                )));
                break;
            }
        }
    }
    if failure.is_none() {
        if ctx.dry {
            println!("  would wait {hold}");
        } else {
            hold_for(a.victims.hold).await;
        }
    }
    for c in set {
        let argv = faults::delay_command(&c.id, 0);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        ctx.act(&args, QUICK).await?;
    }
    failure.map_or(Ok(()), Err)
}
