//! Whole-process behaviour: metrics registration, and accept errors (EMFILE) backing off in a child process.

use super::*;

#[test]
fn metrics_register_once_per_registry() {
    let registry = Registry::new();
    ForwardMetrics::register(&registry).unwrap();
    assert!(ForwardMetrics::register(&registry).is_err());
}

/// Set in the child process that runs `accept_errors_child`.
const EMFILE_CHILD_ENV: &str = "MESH_BRIDGE_FORWARD_EMFILE_CHILD";

/// Accept failing with EMFILE must neither spin nor flood the log. Runs
/// `accept_errors_child` in a child process with a low descriptor limit, so exhausting
/// descriptors cannot disturb the other tests.
#[test]
fn accept_errors_back_off_and_log_once() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 128 && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "process::accept_errors_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// CPU time (user + system) this process has used, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5), counted from the state (field 3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

#[tokio::test]
#[ignore = "run by accept_errors_back_off_and_log_once in a child process"]
async fn accept_errors_child() {
    if std::env::var_os(EMFILE_CHILD_ENV).is_none() {
        return;
    }
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let h = harness(Duration::from_millis(100));
    let port = free_port();
    h.fwd.open("starved", port).await.unwrap();
    let cpu_before = cpu_ticks();

    // Use up every descriptor but one, which the client socket takes.
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(24) => break, // EMFILE
            Err(e) => panic!("unexpected error while using up descriptors: {e}"),
        }
    }
    hog.pop();
    let _client = std::net::TcpStream::connect((LOCALHOST, port)).unwrap();
    // The forwarder now fails to accept (EMFILE) for a while; a hot loop would burn
    // this whole second of CPU on this single-threaded runtime.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failing_logs = logs.count("accept failing");
    drop(hog);

    let cpu_used = cpu_ticks() - cpu_before;
    assert!(cpu_used < 30, "accept loop spun: {cpu_used} ticks in 1 s");
    assert_eq!(failing_logs, 1, "logged more than once per state change");
    eventually("accepted after descriptors came back", || {
        h.connections("starved") == 1
    })
    .await;
    assert_eq!(logs.count("accepting again"), 1);
    assert_eq!(logs.count("accept failing"), 1);
}
