//! Everything a run starts is labelled and removed: the drop guard that
//! removes a run's containers even on error or interrupt, and the sweep of
//! what a killed run left.

use super::*;
use crate::docker::{capture, docker, quietly};

/// Everything started, removed at the end whatever happens.
pub(super) struct Cleanup {
    pub(super) run_label: String,
    pub(super) dind: Option<ContainerAsync<GenericImage>>,
    pub(super) children: Vec<tokio::process::Child>,
    pub(super) mounts: Vec<PathBuf>,
    pub(super) networks: Vec<String>,
    pub(super) done: bool,
}

impl Cleanup {
    pub(super) fn new(run_id: &str) -> Self {
        Self {
            run_label: format!("mesh-bridge.run={run_id}"),
            dind: None,
            children: Vec::new(),
            mounts: Vec::new(),
            networks: Vec::new(),
            done: false,
        }
    }

    pub(super) async fn run(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        self.children.clear();
        sweep(&self.run_label);
        if let Some(d) = self.dind.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), d.rm()).await;
        }
        sweep(&self.run_label);
        for n in self.networks.drain(..) {
            quietly(&mut docker(["network", "rm", &n]));
        }
        for m in self.mounts.drain(..) {
            let _ = std::process::Command::new("umount").arg(&m).status();
        }
        self.done = true;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.done {
            sweep(&self.run_label);
            for n in &self.networks {
                quietly(&mut docker(["network", "rm", n]));
            }
            for m in &self.mounts {
                let _ = std::process::Command::new("umount").arg(m).status();
            }
        }
    }
}

/// `docker rm -f` of every host container with the run's label.
pub(super) fn sweep(label: &str) {
    let Ok(out) = capture(&mut docker([
        "ps",
        "-aq",
        "--filter",
        &format!("label={label}"),
    ])) else {
        return;
    };
    let ids: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    if !ids.is_empty() {
        quietly(docker(["rm", "-fv"]).args(&ids));
    }
}
