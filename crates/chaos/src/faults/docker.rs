//! The docker CLI against one engine: every fault's Docker calls go through
//! [`Docker::run`], bounded in time.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::SERVICE_LABEL;

/// The docker CLI against one engine.
#[derive(Debug, Clone, Default)]
pub struct Docker {
    /// `-H` value; None = the CLI's default (`DOCKER_HOST`).
    pub host: Option<String>,
}

/// A container as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Container {
    /// Name (sorted first, so choices do not depend on ids).
    pub name: String,
    /// Id.
    pub id: String,
    /// `mesh-bridge.service` label.
    pub service: String,
    /// running, exited, paused, ...
    pub state: String,
}

impl Docker {
    /// An engine at `host`.
    pub fn at(host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("docker");
        if let Some(h) = &self.host {
            c.arg("-H").arg(h);
        }
        c.kill_on_drop(true);
        c
    }

    /// Runs `docker <args>` (60 s limit) and returns stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        self.run_timeout(args, Duration::from_secs(60)).await
    }

    /// Runs one command line built by a fault module (its output dropped).
    pub async fn run_line(&self, line: &[String]) -> Result<()> {
        let argv: Vec<&str> = line.iter().map(String::as_str).collect();
        self.run(&argv).await.map(drop)
    }

    /// Runs `docker <args>` with a time limit and returns stdout.
    pub async fn run_timeout(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut c = self.command();
        c.args(args);
        let out = tokio::time::timeout(limit, c.output())
            .await
            .with_context(|| format!("docker {} timed out after {limit:?}", args.join(" ")))?
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The first address of container `id` on its networks.
    pub async fn address_of(&self, id: &str) -> Result<String> {
        let out = self
            .run(&[
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                id,
            ])
            .await?;
        out.split_whitespace()
            .next()
            .map(str::to_string)
            .with_context(|| {
                format!("container {id} has no network address (network mode none or host?)")
            })
    }

    /// Containers (all states) matching every `K=V` (or `K`) label filter.
    pub async fn list(&self, labels: &[String]) -> Result<Vec<Container>> {
        let mut args = vec!["ps".to_string(), "-a".into(), "--no-trunc".into()];
        for l in labels {
            args.push("--filter".into());
            args.push(format!("label={l}"));
        }
        args.push("--format".into());
        args.push(format!(
            "{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.Label \"{SERVICE_LABEL}\"}}}}\t{{{{.State}}}}"
        ));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&argv).await?;
        let mut v: Vec<Container> = out
            .lines()
            .filter_map(|l| {
                let mut p = l.split('\t');
                Some(Container {
                    id: p.next()?.to_string(),
                    name: p.next()?.to_string(),
                    service: p.next().unwrap_or("").to_string(),
                    state: p.next().unwrap_or("").to_string(),
                })
            })
            .collect();
        v.sort();
        Ok(v)
    }
}
