//! Runs docker commands, or with `--dry-run` only prints them.

use crate::*;

/// Runs docker commands, or only prints them with --dry-run.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) docker: Docker,
    pub(crate) dry: bool,
}

impl Ctx {
    /// The command line as it would be typed.
    pub(crate) fn show(&self, args: &[&str]) -> String {
        let mut s = String::from("docker");
        if let Some(h) = &self.docker.host {
            s.push_str(" -H ");
            s.push_str(h);
        }
        for a in args {
            s.push(' ');
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'$|;&<>()".contains(c))
            {
                s.push('\'');
                s.push_str(&a.replace('\'', "'\\''"));
                s.push('\'');
            } else {
                s.push_str(a);
            }
        }
        s
    }

    /// A command that changes something: printed, and run unless dry.
    pub(crate) async fn act(&self, args: &[&str], limit: Duration) -> Result<String> {
        if self.dry {
            println!("  would run: {}", self.show(args));
            return Ok(String::new());
        }
        println!("  run: {}", self.show(args));
        self.docker.run_timeout(args, limit).await
    }

    /// [`Ctx::act`] for a command line built by a fault module.
    pub(crate) async fn act_line(&self, line: &[String], limit: Duration) -> Result<String> {
        let argv: Vec<&str> = line.iter().map(String::as_str).collect();
        self.act(&argv, limit).await
    }

    /// A plan line that is not a docker command.
    pub(crate) fn step(&self, what: &str) {
        if self.dry {
            println!("  would {what}");
        } else {
            println!("  {what}");
        }
    }

    /// `docker inspect` state of a container (read-only, also in dry runs),
    /// with an error that says how to find the right name.
    pub(crate) async fn container_state(&self, name: &str, flag: &str) -> Result<String> {
        match self
            .docker
            .run_timeout(
                &[
                    "inspect",
                    "--type",
                    "container",
                    "--format",
                    "{{.State.Status}}",
                    name,
                ],
                QUICK,
            )
            .await
        {
            Ok(s) => Ok(s.trim().to_string()),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains("No such") || msg.contains("no such") {
                    bail!(
                        "no container {name:?} on the engine ({}); check {flag} against `docker ps -a`",
                        self.engine_name()
                    )
                }
                Err(e).with_context(|| {
                    format!(
                        "cannot inspect container {name:?}: is the engine ({}) reachable? \
                         set DOCKER_HOST or --docker-host",
                        self.engine_name()
                    )
                })
            }
        }
    }

    pub(crate) fn engine_name(&self) -> String {
        match &self.docker.host {
            Some(h) => h.clone(),
            None => match std::env::var("DOCKER_HOST") {
                Ok(h) if !h.is_empty() => format!("DOCKER_HOST={h}"),
                _ => "the docker CLI's default".into(),
            },
        }
    }

    /// Waits (at most `limit`) until the container runs again.
    pub(crate) async fn wait_running(&self, name: &str, flag: &str, limit: Duration) -> Result<()> {
        if self.dry {
            println!(
                "  would wait up to {} for {name} to be running",
                humantime::format_duration(limit)
            );
            return Ok(());
        }
        let start = Instant::now();
        let what = format!("{name} to be running");
        let every = Duration::from_millis(250);
        let running = mesh_chaos::wait::until_every_async(&what, limit, every, || async {
            // An error (no such container) ends the wait at once, as a value.
            match self.container_state(name, flag).await {
                Ok(state) if state == "running" => Ok(Ok(())),
                Ok(state) => Err(format!("still {state:?}")),
                Err(e) => Ok(Err(e)),
            }
        })
        .await;
        match running {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                let ms = start.elapsed().as_millis();
                println!("  {name} is running after {ms} ms");
                Ok(())
            }
            Err(e) => bail!(
                "{name} is {} {} after the start; see `docker logs {name}` (or raise --timeout)",
                e.last,
                humantime::format_duration(limit)
            ),
        }
    }
}
