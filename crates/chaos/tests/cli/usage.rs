//! Dry runs, bad input, unknown faults and the help: the CLI's surface against the fake docker.

use super::*;

#[test]
fn dry_run_touches_nothing() {
    let docker = FakeDocker::new();
    let args = [
        "container-kill",
        "--label",
        "mesh-bridge.service",
        "--fraction",
        "0.5",
        "--interval",
        "1s",
        "--rounds",
        "2",
        "--seed",
        "3",
        "--dry-run",
    ];
    let first = ok(&docker.run(&args));
    assert!(
        first.contains("would run: docker kill --signal KILL"),
        "{first}"
    );
    assert_eq!(first.matches("round ").count(), 2, "{first}");
    let calls = docker.calls();
    assert!(
        calls.iter().all(|l| l.starts_with("ps ")),
        "dry run must only list containers: {calls:?}"
    );
    // Same seed, same victims.
    assert_eq!(first, ok(&docker.run(&args)));
}

#[test]
fn network_fault_dry_runs_print_the_rules_and_touch_nothing() {
    let docker = FakeDocker::new();
    let out = ok(&docker.run(&[
        "net-reset",
        "--label",
        "mesh-bridge.service=svc-a",
        "--count",
        "1",
        "--netns-container",
        "dind",
        "--netns-host",
        "tcp://127.0.0.1:1",
        "--dry-run",
    ]));
    let rule =
        "iptables -I OUTPUT -d 172.30.0.9 -p tcp --dport 8080 -j REJECT --reject-with tcp-reset";
    assert!(
        out.contains(&format!(
            "would run: docker -H tcp://127.0.0.1:1 exec dind {rule}"
        )),
        "{out}"
    );
    assert!(
        out.contains("would wait 5s, then delete each rule"),
        "{out}"
    );
    assert!(out.contains("iptables -D OUTPUT -d 172.30.0.9"), "{out}");

    let out = ok(&docker.run(&[
        "net-loss",
        "--label",
        "mesh-bridge.service",
        "--fraction",
        "1",
        "--probability",
        "0.25",
        "--hold",
        "2s",
        "--dry-run",
    ]));
    // Without --netns-container the rules go to this host's iptables.
    assert_eq!(
        out.matches("would run: iptables -I OUTPUT").count(),
        3,
        "{out}"
    );
    assert!(out.contains("--probability 0.25 -j DROP"), "{out}");

    let out = ok(&docker.run(&[
        "net-latency",
        "--label",
        "mesh-bridge.service=svc-b",
        "--delay",
        "250ms",
        "--dry-run",
    ]));
    assert!(
        out.contains("would run: docker exec id3 /mcp-stub --delay 250"),
        "{out}"
    );
    assert!(
        out.contains("would run: docker exec id3 /mcp-stub --delay 0"),
        "{out}"
    );
    let calls = docker.calls();
    assert!(
        calls
            .iter()
            .all(|l| l.starts_with("ps ") || l.starts_with("inspect ")),
        "dry runs must only read: {calls:?}"
    );
}

#[test]
fn network_faults_reject_bad_input() {
    let docker = FakeDocker::new();
    let base = ["net-blackhole", "--label", "mesh-bridge.service"];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        docker.run(&v)
    };
    fails_with(&with(&["--hold", "0s"]), "--hold must be longer than 0");
    fails_with(
        &with(&["--fraction", "1.5"]),
        "--fraction must be in (0, 1]",
    );
    fails_with(
        &docker.run(&["net-loss", "--label", "x", "--probability", "0"]),
        "--probability must be in (0, 1]",
    );
    fails_with(
        &docker.run(&["net-latency", "--label", "x", "--delay", "2min"]),
        "--delay must be between",
    );
    let o = docker.run(&[
        "net-reset",
        "--netns-host",
        "tcp://127.0.0.1:1",
        "--label",
        "x",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--netns-host needs --netns-container"
    );
}

#[test]
fn unknown_fault_is_refused() {
    let o = mesh_chaos(&["nuke", "--label", "x=y", "--dry-run"])
        .output()
        .expect("run");
    fails_with(&o, "unknown fault \"nuke\"");
    fails_with(&o, "registration-flood");
    let o = mesh_chaos(&["engine-cut", "--dry-run"])
        .output()
        .expect("run");
    fails_with(&o, "only in scenarios");
}

#[test]
fn help_lists_every_fault() {
    let help = ok(&mesh_chaos(&["--help"]).output().expect("run"));
    // Every fault the harness knows is on the CLI, or refused by name as
    // one that runs only in scenarios; `bridge-restart` is the CLI's own.
    let mut listed = Vec::new();
    for k in mesh_chaos::faults::FaultKind::ALL {
        if help.contains(k.as_str()) {
            listed.push(k.as_str());
        } else {
            let o = mesh_chaos(&[k.as_str()]).output().expect("run");
            fails_with(&o, "runs only in scenarios");
        }
    }
    assert!(help.contains("bridge-restart"), "{help}");
    assert!(
        listed.len() >= 15 && listed.contains(&"store-corrupt") && listed.contains(&"net-latency"),
        "--help lists only {listed:?}: {help}"
    );
    // No fault at all: usage, not success.
    assert!(!mesh_chaos(&[]).output().expect("run").status.success());
}
