//! The `mesh-chaos` command line: `--dry-run` prints what it would do and
//! changes nothing (it only reads: `docker ps` / `inspect`, the store's size,
//! the state directory's lock), and every fault acts as it says.
//!
//! Docker is a fake `docker` script first in PATH that logs its arguments, so
//! no container is created by these tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fake `docker` on PATH that logs every call, one line each.
struct FakeDocker {
    dir: tempfile::TempDir,
}

impl FakeDocker {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("calls.log");
        let script = format!(
            r#"#!/bin/sh
echo "$*" >> '{log}'
if [ "$1" = "-H" ]; then shift 2; fi
case "$1" in
  inspect)
    if [ "$FAKE_MISSING" = 1 ]; then echo "Error: No such container: x" >&2; exit 1; fi
    if echo "$*" | grep -q IPAddress; then echo "172.30.0.9 "; exit 0; fi
    echo "${{FAKE_STATE:-running}}";;
  image)
    if [ "$FAKE_NO_IMAGE" = 1 ]; then echo "Error: No such image: x" >&2; exit 1; fi
    echo "sha256:0";;
  ps)
    printf 'id1\tsvc-a-1\tsvc-a\trunning\nid2\tsvc-a-2\tsvc-a\trunning\nid3\tsvc-b-1\tsvc-b\trunning\n';;
  run)
    if [ "$FAKE_RUN_FAIL" = 1 ] && echo "$*" | grep -q flood-2; then echo "Error: boom" >&2; exit 125; fi
    echo "$*" | sed -n 's/.*mesh-bridge.service=\(flood-[0-9]*\).*/c-\1/p';;
esac
exit 0
"#,
            log = log.display()
        );
        let fake = dir.path().join("docker");
        std::fs::write(&fake, script).expect("write fake docker");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir }
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = mesh_chaos(args);
        c.env("PATH", self.path())
            .env_remove("DOCKER_HOST")
            .env_remove("FAKE_STATE")
            .env_remove("FAKE_MISSING")
            .env_remove("FAKE_NO_IMAGE")
            .env_remove("FAKE_RUN_FAIL");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run mesh-chaos")
    }
}

fn mesh_chaos(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-chaos"));
    c.args(args).stdin(Stdio::null());
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

#[track_caller]
fn fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "should fail: {}", stdout(o));
    assert!(
        stderr(o).contains(needle),
        "stderr should contain {needle:?}: {}",
        stderr(o)
    );
}

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

// ---------------------------------------------------------------- bridge, engine

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

// ---------------------------------------------------------------- store

/// A state directory as a stopped bridge leaves it.
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let mut bytes = vec![0u8; 20_000];
    rand::RngCore::fill_bytes(
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x1234_5678),
        &mut bytes,
    );
    std::fs::write(dir.path().join("state.db"), bytes).expect("store");
    std::fs::write(dir.path().join("state.db-wal"), b"wal").expect("wal");
    std::fs::write(dir.path().join("bridge.lock"), b"").expect("lock");
    dir
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect()
}

#[test]
fn store_dry_runs_print_the_plan_and_leave_files_identical() {
    let dir = state_dir();
    let d = dir.path().to_str().expect("utf8");
    let before = snapshot(dir.path());
    let out = ok(&mesh_chaos(&[
        "store-corrupt",
        "--state-dir",
        d,
        "--seed",
        "9",
        "--dry-run",
    ])
    .output()
    .expect("run"));
    assert_eq!(
        out.matches("would overwrite 64 bytes at offset").count(),
        8,
        "{out}"
    );
    assert_eq!(
        out,
        ok(&mesh_chaos(&[
            "store-corrupt",
            "--state-dir",
            d,
            "--seed",
            "9",
            "--dry-run"
        ])
        .output()
        .expect("run")),
        "same seed, same plan"
    );
    let out = ok(
        &mesh_chaos(&["store-truncate", "--state-dir", d, "--dry-run"])
            .output()
            .expect("run"),
    );
    assert!(out.contains("would truncate"), "{out}");
    assert!(out.contains("from 20000 to 700 bytes"), "{out}");
    assert!(
        out.contains("bridge.lock is free: the bridge is down"),
        "{out}"
    );
    assert!(
        out.contains("state.db-wal (3 bytes) is left as it is"),
        "{out}"
    );
    assert_eq!(before, snapshot(dir.path()), "a dry run changed files");
}

#[test]
fn store_faults_damage_the_store() {
    let a = state_dir();
    let b = state_dir();
    let orig = std::fs::read(a.path().join("state.db")).expect("read");
    for dir in [&a, &b] {
        ok(&mesh_chaos(&[
            "store-corrupt",
            "--state-dir",
            dir.path().to_str().expect("utf8"),
            "--seed",
            "5",
        ])
        .output()
        .expect("run"));
    }
    let da = std::fs::read(a.path().join("state.db")).expect("read");
    let db = std::fs::read(b.path().join("state.db")).expect("read");
    assert_eq!(da.len(), orig.len(), "corruption keeps the length");
    assert_eq!(da, db, "same seed, same damage");
    let changed = da.iter().zip(&orig).filter(|(x, y)| x != y).count();
    assert_eq!(changed, 8 * 64, "every byte of 8 runs of 64 changes");
    assert_ne!(da[..64], orig[..64], "the first run covers the header");

    ok(&mesh_chaos(&[
        "store-truncate",
        "--state-dir",
        a.path().to_str().expect("utf8"),
    ])
    .output()
    .expect("run"));
    assert_eq!(
        std::fs::read(a.path().join("state.db")).expect("read"),
        da[..700],
        "cut inside the first page, as the scenario runner cuts it"
    );
}

#[test]
fn store_faults_refuse_while_the_bridge_holds_the_lock() {
    let dir = state_dir();
    let d = dir.path().to_str().expect("utf8");
    let before = snapshot(dir.path());
    let lock = File::options()
        .write(true)
        .open(dir.path().join("bridge.lock"))
        .expect("open lock");
    lock.try_lock()
        .expect("take the lock as a running bridge does");
    for args in [
        vec!["store-corrupt", "--state-dir", d],
        vec!["store-corrupt", "--state-dir", d, "--dry-run"],
        vec!["store-truncate", "--state-dir", d],
        vec!["store-truncate", "--state-dir", d, "--dry-run"],
    ] {
        let o = mesh_chaos(&args).output().expect("run");
        fails_with(&o, "the bridge is running");
        fails_with(&o, "stop the bridge first");
    }
    assert_eq!(before, snapshot(dir.path()), "refused, yet files changed");
    drop(lock);
    ok(&mesh_chaos(&["store-truncate", "--state-dir", d])
        .output()
        .expect("run"));
}

#[test]
fn store_faults_reject_bad_directories() {
    let o = mesh_chaos(&[
        "store-corrupt",
        "--state-dir",
        "/nonexistent/mesh-chaos-state",
    ])
    .output()
    .expect("run");
    fails_with(&o, "does not exist");
    fails_with(&o, "--state-dir");
    let empty = tempfile::tempdir().expect("tmp");
    let o = mesh_chaos(&[
        "store-truncate",
        "--state-dir",
        empty.path().to_str().expect("utf8"),
    ])
    .output()
    .expect("run");
    fails_with(&o, "no store at");
    assert!(
        std::fs::read_dir(empty.path())
            .expect("ls")
            .next()
            .is_none(),
        "no lock file or store may be created"
    );
    fails_with(
        &mesh_chaos(&["store-corrupt"]).output().expect("run"),
        "--state-dir",
    );
}

// ---------------------------------------------------------------- port squat

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn port_squat_dry_run_leaves_the_port_free() {
    let port = free_port();
    let p = port.to_string();
    let out = ok(
        &mesh_chaos(&["port-squat", "--port", &p, "--hold", "30s", "--dry-run"])
            .output()
            .expect("run"),
    );
    assert!(
        out.contains(&format!("would listen on 127.0.0.1:{port}")),
        "{out}"
    );
    TcpListener::bind(("127.0.0.1", port)).expect("the port is still free");
}

#[test]
fn port_squat_holds_the_port_then_releases_it() {
    let port = free_port();
    let p = port.to_string();
    let mut child = mesh_chaos(&["port-squat", "--port", &p, "--hold", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    let mut connected = false;
    while t.elapsed() < Duration::from_secs(2) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bind_while_held = TcpListener::bind(("127.0.0.1", port));
    // Bounded wait for the squatter to release the port on its own.
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    assert!(connected, "nothing listened on {port}: {}", stderr(&out));
    assert!(bind_while_held.is_err(), "the port was free while squatted");
    assert!(
        status.is_some_and(|s| s.success()),
        "squatter did not end by itself: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("released"), "{}", stdout(&out));
    TcpListener::bind(("127.0.0.1", port)).expect("released after the hold");

    // A port somebody else listens on is refused, naming the fix.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tp = taken.local_addr().expect("addr").port().to_string();
    let o = mesh_chaos(&["port-squat", "--port", &tp, "--hold", "1s"])
        .output()
        .expect("run");
    fails_with(&o, "already in use");
    fails_with(&o, "pick a free port");
}

#[test]
fn port_squat_rejects_bad_input() {
    fails_with(
        &mesh_chaos(&["port-squat", "--port", "4000"])
            .output()
            .expect("run"),
        "--hold",
    );
    fails_with(
        &mesh_chaos(&["port-squat", "--port", "0", "--hold", "1s"])
            .output()
            .expect("run"),
        "--port",
    );
    fails_with(
        &mesh_chaos(&["port-squat", "--port", "70000", "--hold", "1s"])
            .output()
            .expect("run"),
        "70000",
    );
    fails_with(
        &mesh_chaos(&["port-squat", "--port", "4000", "--hold", "0s"])
            .output()
            .expect("run"),
        "--hold must be longer than 0",
    );
    fails_with(
        &mesh_chaos(&[
            "port-squat",
            "--port",
            "4000",
            "--hold",
            "1s",
            "--bind-ip",
            "local",
        ])
        .output()
        .expect("run"),
        "--bind-ip",
    );
}

// ---------------------------------------------------------------- flood

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

// ---------------------------------------------------------------- a real engine

/// Image of the real-container test (built by `cargo xtask images`).
const REAL_IMAGE: &str = "mesh-bridge/mcp-stub:dev";

/// A container this test started (labelled `mesh-bridge.test`, no network),
/// removed on drop, even when the test fails.
struct RealContainer(String);

impl Drop for RealContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn docker_out(args: &[&str]) -> Option<String> {
    let o = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Address of a container on the local engine's bridge network.
fn container_ip(name: &str) -> std::net::SocketAddr {
    let ip = docker_out(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        name,
    ])
    .expect("inspect");
    let ip = ip.split_whitespace().next().expect("an address");
    std::net::SocketAddr::new(ip.parse().expect("ip"), 8080)
}

/// Polls `f` every 50 ms until it is true or `limit` passes.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// net-reset (host iptables) and net-latency against a real stub container:
/// the fault shows while it holds and is gone after.
#[test]
fn network_faults_against_a_real_container() {
    assert!(
        docker_out(&["image", "inspect", "--format", "{{.Id}}", REAL_IMAGE]).is_some(),
        "no Docker engine, or no {REAL_IMAGE}: start the engine and run `cargo xtask images`"
    );
    let name = format!("mesh-chaos-cli-net-{}", std::process::id());
    let guard = RealContainer(name.clone());
    let label = format!("mesh-chaos-cli-net={}", std::process::id());
    docker_out(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "mesh-bridge.test=mesh-chaos-cli",
        "--label",
        &label,
        REAL_IMAGE,
    ])
    .expect("start a stub");
    let addr = container_ip(&name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let ping = |t: Duration| rt.block_on(mesh_chaos::stub::ping(addr, t));
    assert!(
        within(Duration::from_secs(20), || ping(Duration::from_secs(1))
            .is_ok()),
        "stub never answered on {addr}"
    );

    // net-reset: connections are refused while it holds, then answered again.
    let fault = mesh_chaos(&["net-reset", "--label", &label, "--hold", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let refused = within(Duration::from_secs(3), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    let out = fault.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        refused,
        "no connection was reset while net-reset held: {}",
        stdout(&out)
    );
    assert!(
        ping(Duration::from_secs(2)).is_ok(),
        "still refused after the hold"
    );

    // net-latency: answers take the delay while it holds.
    let fault = mesh_chaos(&[
        "net-latency",
        "--label",
        &label,
        "--delay",
        "300ms",
        "--hold",
        "3s",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn");
    let slow = within(Duration::from_secs(3), || {
        let t = Instant::now();
        ping(Duration::from_secs(2)).is_ok() && t.elapsed() >= Duration::from_millis(300)
    });
    let out = fault.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        slow,
        "no answer was delayed while net-latency held: {}",
        stdout(&out)
    );
    let t = Instant::now();
    assert!(ping(Duration::from_secs(2)).is_ok());
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "delay not ended: {:?}",
        t.elapsed()
    );
    drop(guard);
}

/// bridge-kill, bridge-restart and engine-restart against a real container
/// standing in for the bridge (no service label, so no bridge picks it up).
#[test]
fn container_faults_against_a_real_engine() {
    // Docker tests fail, never skip, when the engine or the image is missing.
    assert!(
        docker_out(&["image", "inspect", "--format", "{{.Id}}", REAL_IMAGE]).is_some(),
        "no Docker engine, or no {REAL_IMAGE}: start the engine and run `cargo xtask images`"
    );
    let name = format!(
        "mesh-chaos-cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let guard = RealContainer(name.clone());
    docker_out(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "mesh-bridge.test=mesh-chaos-cli",
        "--network",
        "none",
        REAL_IMAGE,
    ])
    .expect("start a container");
    let started = |n: &str| {
        docker_out(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.StartedAt}}",
            n,
        ])
        .expect("inspect")
    };
    let before = started(&name);
    assert!(before.starts_with("running "), "{before}");

    // Dry run: nothing happens to it.
    ok(
        &mesh_chaos(&["bridge-kill", "--bridge-container", &name, "--dry-run"])
            .output()
            .expect("run"),
    );
    assert_eq!(started(&name), before);

    // kill -9, held down, started again, waited for.
    let out = ok(&mesh_chaos(&[
        "bridge-kill",
        "--bridge-container",
        &name,
        "--hold",
        "300ms",
        "--timeout",
        "20s",
    ])
    .output()
    .expect("run"));
    assert!(out.contains("is running after"), "{out}");
    let after_kill = started(&name);
    assert!(after_kill.starts_with("running "), "{after_kill}");
    assert_ne!(after_kill, before, "not started again");

    // Graceful restarts of the bridge and of an engine container.
    ok(
        &mesh_chaos(&["bridge-restart", "--bridge-container", &name])
            .output()
            .expect("run"),
    );
    let after_restart = started(&name);
    assert!(after_restart.starts_with("running "), "{after_restart}");
    assert_ne!(after_restart, after_kill);
    ok(
        &mesh_chaos(&["engine-restart", "--engine-container", &name])
            .output()
            .expect("run"),
    );
    assert!(started(&name).starts_with("running "));

    // hold 0 leaves it down; then killing a stopped bridge is refused.
    ok(
        &mesh_chaos(&["bridge-kill", "--bridge-container", &name, "--hold", "0"])
            .output()
            .expect("run"),
    );
    assert!(started(&name).starts_with("exited "), "{}", started(&name));
    let o = mesh_chaos(&["bridge-kill", "--bridge-container", &name])
        .output()
        .expect("run");
    fails_with(&o, "not running");
    drop(guard);
    assert!(
        docker_out(&["inspect", &name]).is_none(),
        "the test container was not removed"
    );
}
