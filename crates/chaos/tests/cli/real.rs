//! Faults against a real engine and a real stub container.

use super::*;

/// Image of the real-container test (built by `cargo xtask images`).
const REAL_IMAGE: &str = mesh_bridge::contract::images::STUB;

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
    let every = Duration::from_millis(50);
    mesh_chaos::wait::until_every("a condition", limit, every, || {
        if f() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .is_ok()
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
