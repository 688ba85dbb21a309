//! Container faults: the docker command lines that kill, stop, restart,
//! pause or remove victims chosen by label, and those that heal them.

use anyhow::Result;

use super::{Docker, FaultKind, SERVICE_LABEL};

/// Turns a scenario target (service name or `K=V`) into label filters.
pub fn target_labels(target: Option<&str>) -> Vec<String> {
    match target {
        None => vec![SERVICE_LABEL.to_string()],
        Some(t) if t.contains('=') => vec![t.to_string()],
        Some(service) => vec![format!("{SERVICE_LABEL}={service}")],
    }
}

/// One docker command line: `pre` followed by the container ids.
fn command_on(pre: &[&str], ids: &[String]) -> Vec<String> {
    pre.iter()
        .map(|s| s.to_string())
        .chain(ids.iter().cloned())
        .collect()
}

/// The docker command lines a container fault runs on `ids`.
pub fn container_commands(kind: FaultKind, ids: &[String]) -> Vec<Vec<String>> {
    if ids.is_empty() {
        return Vec::new();
    }
    let with = |pre: &[&str]| vec![command_on(pre, ids)];
    match kind {
        FaultKind::ContainerKill => with(&["kill", "--signal", "KILL"]),
        FaultKind::ContainerStop => with(&["stop", "--time", "2"]),
        FaultKind::ContainerRestart => with(&["restart", "--time", "2"]),
        FaultKind::ContainerPause => with(&["pause"]),
        FaultKind::ContainerRemove => with(&["rm", "--force"]),
        _ => Vec::new(),
    }
}

/// What heals a container fault after its hold.
pub fn container_heal_commands(kind: FaultKind, ids: &[String]) -> Vec<Vec<String>> {
    if ids.is_empty() {
        return Vec::new();
    }
    let with = |pre: &[&str]| vec![command_on(pre, ids)];
    match kind {
        FaultKind::ContainerKill | FaultKind::ContainerStop => with(&["start"]),
        FaultKind::ContainerPause => with(&["unpause"]),
        _ => Vec::new(),
    }
}

/// Runs command lines against an engine.
pub async fn run_all(docker: &Docker, cmds: &[Vec<String>]) -> Result<()> {
    for c in cmds {
        docker.run_line(c).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_commands_name_every_victim() {
        let ids = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            container_commands(FaultKind::ContainerKill, &ids),
            vec![vec!["kill", "--signal", "KILL", "a", "b"]]
        );
        assert_eq!(
            container_heal_commands(FaultKind::ContainerPause, &ids),
            vec![vec!["unpause", "a", "b"]]
        );
        assert!(container_commands(FaultKind::BridgeKill, &ids).is_empty());
        assert!(container_commands(FaultKind::ContainerKill, &[]).is_empty());
    }

    #[test]
    fn targets_become_label_filters() {
        assert_eq!(
            target_labels(Some("docs")),
            vec!["mesh-bridge.service=docs"]
        );
        assert_eq!(target_labels(Some("tier=db")), vec!["tier=db"]);
        assert_eq!(target_labels(None), vec!["mesh-bridge.service"]);
    }
}
