//! The `mesh-chaos` command line: `--dry-run` prints what it would do and
//! changes nothing (it only reads: `docker ps` / `inspect`, the store's size,
//! the state directory's lock), and every fault acts as it says.
//!
//! Docker is a fake `docker` script first in PATH that logs its arguments, so
//! no container is created by these tests.

mod deploy;
mod flood;
mod real;
mod squat;
mod store;
mod usage;

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
