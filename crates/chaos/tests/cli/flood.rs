//! registration-flood: labelled containers started and removed after the hold.

use super::*;

#[test]
fn flood_dry_run_prints_the_plan_and_creates_nothing() {
    let docker = FakeDocker::new();
    let out = ok(&docker.run(&[
        "registration-flood",
        "--image",
        "stub:dev",
        "--label",
        "mesh-bridge.test=cli",
        "--count",
        "3",
        "--dry-run",
    ]));
    for i in 1..=3 {
        let line = format!(
            "would run: docker run -d --label mesh-bridge.service=flood-{i} \
             --label mesh-bridge.test=cli --label mesh-chaos.flood=1 stub:dev"
        );
        assert!(out.contains(&line), "{line} missing: {out}");
    }
    assert!(out.contains("would wait 4s"), "{out}");
    assert!(out.contains("would run: docker rm --force"), "{out}");
    let calls = docker.calls();
    assert!(
        calls.iter().all(|c| c.starts_with("image inspect ")),
        "a dry run only checks the image: {calls:?}"
    );
}

#[test]
fn flood_starts_labelled_containers_and_removes_them_after_the_hold() {
    let docker = FakeDocker::new();
    ok(&docker.run(&[
        "registration-flood",
        "--image",
        "stub:dev",
        "--label",
        "mesh-bridge.test=cli",
        "--count",
        "2",
        "--hold",
        "100ms",
    ]));
    let acts: Vec<String> = docker
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("image inspect "))
        .collect();
    assert_eq!(
        acts,
        vec![
            "run -d --label mesh-bridge.service=flood-1 --label mesh-bridge.test=cli --label mesh-chaos.flood=1 stub:dev",
            "run -d --label mesh-bridge.service=flood-2 --label mesh-bridge.test=cli --label mesh-chaos.flood=1 stub:dev",
            "rm --force c-flood-1 c-flood-2",
        ]
    );

    // A failed start removes the ones already started.
    let docker = FakeDocker::new();
    let o = docker
        .cmd(&[
            "registration-flood",
            "--image",
            "stub:dev",
            "--label",
            "mesh-bridge.test=cli",
            "--count",
            "3",
        ])
        .env("FAKE_RUN_FAIL", "1")
        .output()
        .expect("run");
    fails_with(&o, "starting flood container 2 of 3");
    assert_eq!(
        docker.calls().last().map(String::as_str),
        Some("rm --force c-flood-1")
    );
}

#[test]
fn flood_rejects_bad_input() {
    let docker = FakeDocker::new();
    let base = ["registration-flood", "--image", "stub:dev"];
    fails_with(
        &docker.run(&[&base[..], &["--count", "2"]].concat()),
        "--label",
    );
    fails_with(
        &docker.run(&[&base[..], &["--label", "a=b"]].concat()),
        "--count",
    );
    fails_with(
        &docker.run(&[&base[..], &["--label", "nolabel", "--count", "2"]].concat()),
        "is not K=V",
    );
    fails_with(
        &docker.run(&[&base[..], &["--label", "a=b", "--count", "0"]].concat()),
        "--count must be in",
    );
    let o = docker
        .cmd(&[&base[..], &["--label", "a=b", "--count", "2", "--dry-run"]].concat())
        .env("FAKE_NO_IMAGE", "1")
        .output()
        .expect("run");
    fails_with(&o, "docker pull stub:dev");
    assert!(
        docker
            .calls()
            .iter()
            .all(|c| c.starts_with("image inspect ")),
        "{:?}",
        docker.calls()
    );
}
