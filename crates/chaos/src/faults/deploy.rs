//! Deployment faults' docker command lines (bridge kill, stop, start and
//! restart; dockerd restart inside a DinD engine), one spelling that both
//! `mesh-chaos` and [`super::Target`] (the scenario runner) run.

/// Seconds `docker stop` / `docker restart` give a container to exit on
/// SIGTERM before SIGKILL (the bridge drains within 3 s; dockerd stops its containers first).
pub const STOP_GRACE_S: u32 = 10;

/// Where a DinD engine's dockerd writes its pid.
pub const DOCKERD_PID_FILE: &str = "/var/run/docker.pid";

fn line(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `bridge-kill`: SIGKILL, no chance to drain or flush.
pub fn kill(container: &str) -> Vec<String> {
    line(&["kill", "--signal", "KILL", container])
}

/// SIGTERM and wait for the exit (at most [`STOP_GRACE_S`], then SIGKILL).
pub fn stop(container: &str) -> Vec<String> {
    line(&["stop", "--time", &STOP_GRACE_S.to_string(), container])
}

/// Starts a stopped container again.
pub fn start(container: &str) -> Vec<String> {
    line(&["start", container])
}

/// `bridge-restart`, and `engine-restart` of the whole engine container.
pub fn restart(container: &str) -> Vec<String> {
    line(&["restart", "--time", &STOP_GRACE_S.to_string(), container])
}

/// `engine-restart` of dockerd only: SIGTERM to it inside the engine
/// container, whose entrypoint loop starts a new one.
pub fn term_dockerd(engine: &str) -> Vec<String> {
    let kill = format!("kill -TERM \"$(cat {DOCKERD_PID_FILE})\"");
    line(&["exec", engine, "sh", "-c", &kill])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_name_the_container() {
        assert_eq!(kill("b"), ["kill", "--signal", "KILL", "b"]);
        assert_eq!(restart("b"), ["restart", "--time", "10", "b"]);
        assert_eq!(
            term_dockerd("e"),
            [
                "exec",
                "e",
                "sh",
                "-c",
                "kill -TERM \"$(cat /var/run/docker.pid)\""
            ]
        );
    }
}
