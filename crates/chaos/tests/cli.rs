//! `mesh-chaos --dry-run` prints what it would do and only reads (`docker ps`).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn dry_run_touches_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("calls.log");
    let fake = dir.path().join("docker");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\ncase \"$*\" in *ps*) printf 'id1\\tsvc-a-1\\tsvc-a\\trunning\\nid2\\tsvc-a-2\\tsvc-a\\trunning\\nid3\\tsvc-b-1\\tsvc-b\\trunning\\n';; esac\n",
            log.display()
        ),
    )
    .expect("write fake docker");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-chaos"))
        .args([
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
        ])
        .env("PATH", path)
        .output()
        .expect("run mesh-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("would run: docker kill --signal KILL"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("round ").count(), 2, "{stdout}");
    let calls = std::fs::read_to_string(&log).expect("log");
    assert!(
        calls.lines().all(|l| l.starts_with("ps ")),
        "dry run must only list containers: {calls}"
    );

    // Same seed, same victims.
    let again = Command::new(env!("CARGO_BIN_EXE_mesh-chaos"))
        .args([
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
        ])
        .env(
            "PATH",
            format!(
                "{}:{}",
                dir.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run again");
    assert_eq!(stdout, String::from_utf8_lossy(&again.stdout));
}

#[test]
fn unknown_fault_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-chaos"))
        .args(["nuke", "--label", "x=y", "--dry-run"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown container fault"));
}
