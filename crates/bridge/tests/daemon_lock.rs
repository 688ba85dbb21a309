//! One daemon per state directory, and no `state import` behind a running
//! daemon's back (it would not see the import and would later clash with it).
//! The daemon runs with an unreachable engine: the lock is taken before Docker
//! matters.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use mesh_chaos::wait;

mod local;

use local::{Bridge, free_port};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh-bridge"))
}

fn start(state: &std::path::Path, api: u16, engine: u16) -> Child {
    bin()
        .args(["run", "--listen", &format!("127.0.0.1:{api}")])
        .args(["--ports", "31950-31959"])
        .args(["--docker-host", &format!("tcp://127.0.0.1:{engine}")])
        .arg("--state-dir")
        .arg(state)
        // Colours must be off because stderr is a pipe, not because of NO_COLOR.
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mesh-bridge")
}

fn import(state: &std::path::Path, file: &std::path::Path) -> Output {
    bin()
        .args(["state", "--ports", "31950-31959", "--state-dir"])
        .arg(state)
        .arg("import")
        .arg(file)
        .output()
        .expect("run import")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until the API port accepts connections.
fn listening(api: u16) -> Result<(), wait::TimedOut> {
    wait::until("the bridge to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", api))
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

#[test]
fn a_running_daemon_locks_its_state_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let engine = free_port();
    let api = free_port();
    let first = Bridge(start(&state, api, engine));

    listening(api).expect("first bridge");

    // A second daemon on the same directory refuses to start, naming the lock.
    let mut second = start(&state, free_port(), engine);
    let exited = wait::until("the second bridge to exit", Duration::from_secs(20), || {
        second
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    let Ok(status) = exited else {
        let _ = second.kill();
        panic!("second bridge kept running on a locked state dir");
    };
    let mut err = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(!status.success());
    assert!(err.contains("locked by a running mesh-bridge"), "{err}");

    // An import is refused while the daemon runs, and changes nothing.
    let legacy = dir.path().join("legacy.json");
    std::fs::write(&legacy, r#"{"docs": 31951}"#).expect("write legacy");
    let db = std::fs::read(state.join("state.db")).expect("store exists");
    let out = import(&state, &legacy);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("locked"), "{}", text(&out));
    assert_eq!(std::fs::read(state.join("state.db")).expect("store"), db);

    // Once the daemon is gone, the same import goes through.
    drop(first);
    let out = import(&state, &legacy);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = free_port();
    let mut child = start(&dir.path().join("state"), api, free_port());
    if let Err(e) = listening(api) {
        let _ = child.kill();
        panic!("{e}");
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("collect stderr");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api listening"), "{err}");
    assert!(!err.contains('\x1b'), "escape codes in piped logs: {err:?}");
}
