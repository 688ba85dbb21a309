//! port-squat: holds a port for the hold, then releases it.

use super::*;

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
