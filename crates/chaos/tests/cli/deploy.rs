//! Bridge and engine faults: kill, restart, their plans and refusals.

use super::*;

#[test]
fn bridge_kill_dry_run_prints_the_plan_and_only_inspects() {
    let docker = FakeDocker::new();
    let t = Instant::now();
    let out = ok(&docker.run(&[
        "bridge-kill",
        "--bridge-container",
        "mb-1",
        "--hold",
        "30s",
        "--dry-run",
    ]));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a dry run does not hold"
    );
    assert!(
        out.contains("would run: docker kill --signal KILL mb-1"),
        "{out}"
    );
    assert!(out.contains("would wait 30s"), "{out}");
    assert!(out.contains("would run: docker start mb-1"), "{out}");
    let calls = docker.calls();
    assert!(calls.iter().all(|c| c.starts_with("inspect ")), "{calls:?}");

    // --docker-host is part of what it would run; global flags go anywhere.
    let out = ok(&docker.run(&[
        "--dry-run",
        "--docker-host",
        "tcp://127.0.0.1:1",
        "bridge-kill",
        "--bridge-container",
        "mb-1",
        "--hold",
        "0",
    ]));
    assert!(
        out.contains("would run: docker -H tcp://127.0.0.1:1 kill --signal KILL mb-1"),
        "{out}"
    );
    assert!(
        !out.contains("would run: docker -H tcp://127.0.0.1:1 start"),
        "hold 0 leaves it down: {out}"
    );
    assert!(
        out.contains("stays down; start it with `docker -H tcp://127.0.0.1:1 start mb-1`"),
        "{out}"
    );
}

#[test]
fn bridge_kill_kills_then_starts_after_the_hold() {
    let docker = FakeDocker::new();
    ok(&docker.run(&[
        "bridge-kill",
        "--bridge-container",
        "mb-1",
        "--hold",
        "100ms",
    ]));
    let acts: Vec<String> = docker
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("inspect "))
        .collect();
    assert_eq!(acts, vec!["kill --signal KILL mb-1", "start mb-1"]);
}

#[test]
fn bridge_faults_refuse_bad_targets_with_the_fix() {
    let docker = FakeDocker::new();
    let o = docker
        .cmd(&["bridge-kill", "--bridge-container", "mb-1"])
        .env("FAKE_STATE", "exited")
        .output()
        .expect("run");
    fails_with(&o, "not running");
    fails_with(&o, "docker start mb-1");
    let o = docker
        .cmd(&["bridge-restart", "--bridge-container", "nope", "--dry-run"])
        .env("FAKE_MISSING", "1")
        .output()
        .expect("run");
    fails_with(&o, "no container \"nope\"");
    fails_with(&o, "--bridge-container");
    assert!(
        docker.calls().iter().all(|c| c.starts_with("inspect ")),
        "{:?}",
        docker.calls()
    );
    // Missing flags and bad durations are usage errors.
    fails_with(&docker.run(&["bridge-kill"]), "--bridge-container");
    fails_with(
        &docker.run(&["bridge-kill", "--bridge-container", "b", "--hold", "soon"]),
        "duration",
    );
    fails_with(&docker.run(&["engine-restart"]), "--engine-container");
}

#[test]
fn restart_dry_runs_print_the_plan_and_only_inspect() {
    let docker = FakeDocker::new();
    let out = ok(&docker.run(&["bridge-restart", "--bridge-container", "mb-1", "--dry-run"]));
    assert!(
        out.contains("would run: docker restart --time 10 mb-1"),
        "{out}"
    );
    assert!(out.contains("would wait up to 1m for mb-1"), "{out}");
    let out = ok(&docker.run(&[
        "engine-restart",
        "--engine-container",
        "dind-1",
        "--wait-engine",
        "tcp://127.0.0.1:23750",
        "--dry-run",
    ]));
    assert!(
        out.contains("would run: docker restart --time 10 dind-1"),
        "{out}"
    );
    assert!(
        out.contains("docker -H tcp://127.0.0.1:23750 version"),
        "{out}"
    );
    let out = ok(&docker.run(&[
        "engine-restart",
        "--engine-container",
        "dind-1",
        "--dockerd-only",
        "--dry-run",
    ]));
    assert!(
        out.contains(
            "would run: docker exec dind-1 sh -c 'kill -TERM \"$(cat /var/run/docker.pid)\"'"
        ),
        "{out}"
    );
    let calls = docker.calls();
    assert!(calls.iter().all(|c| c.starts_with("inspect ")), "{calls:?}");
}
