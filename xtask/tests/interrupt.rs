//! Interrupts against a real scenario run (DinD on the real engine): SIGINT
//! and SIGTERM stop `xtask scenario run` within seconds, exit 130 saying so,
//! and leave no container, network or volume behind; a run killed with
//! SIGKILL leaves labelled leftovers, which the next run removes first and
//! reports. Needs the Docker engine and the images (`cargo xtask test`
//! provisions both); fails, never skips, without them.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The owner label every harness object carries (xtask's `owner::LABEL`;
/// xtask is a binary, so the test cannot import it).
const OWNER: &str = "mesh-bridge.owner";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker (the test needs the engine): {e}"));
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers, networks and volumes owned by `pid`, as "kind id" lines.
fn owned(pid: u32) -> Vec<String> {
    let filter = format!("label={OWNER}={pid}");
    let mut all = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "-aq"]),
        ("network", vec!["network", "ls", "-q"]),
        ("volume", vec!["volume", "ls", "-q"]),
    ] {
        let mut a = args.clone();
        a.extend(["--filter", &filter]);
        all.extend(
            docker(&a)
                .split_whitespace()
                .map(|id| format!("{kind} {id}")),
        );
    }
    all
}

/// The volumes mounted by `pid`'s containers (anonymous ones carry no label).
fn volumes_of(pid: u32) -> Vec<String> {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={OWNER}={pid}")]);
    ids.split_whitespace()
        .flat_map(|id| {
            docker(&[
                "inspect",
                "--format",
                "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
                id,
            ])
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
        })
        .collect()
}

/// A scenario run in the background, its output in a file.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    fn start(tag: &str, seed: u32) -> Run {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("interrupt-{tag}.log"));
        let file = fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["scenario", "run", "steady", "--duration", "10m", "--seed"])
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("xtask runs");
        Run { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until the output holds `needle` (the run still going), or fails.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("xtask ended ({st}) before `{needle}`:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` after {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -s {sig} failed");
    }

    /// Waits (bounded) for the exit; returns the code and how long it took.
    fn exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return (st.code(), t.elapsed());
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "xtask still running {limit:?} after the signal:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Whatever the test's outcome: nothing of this run stays.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.pid().to_string();
        for (ls, rm) in [
            (vec!["ps", "-aq"], vec!["rm", "-fv"]),
            (vec!["network", "ls", "-q"], vec!["network", "rm"]),
        ] {
            let mut a = ls.clone();
            let f = format!("label={OWNER}={pid}");
            a.extend(["--filter", f.as_str()]);
            if let Ok(out) = Command::new("docker").args(&a).output() {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker").args(&rm).args(&ids).output();
                }
            }
        }
    }
}

/// One run at a time: a run's start-up sweep removes what any dead run left,
/// so the SIGKILL test's leftovers must not be swept by a neighbour's run.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a run, waits until its bridge serves, sends `sig`, and checks the
/// exit and that nothing is left.
fn stops_cleanly_on(sig: &str, seed: u32) {
    let _serial = one_at_a_time();
    let mut run = Run::start(&sig.to_ascii_lowercase(), seed);
    run.wait_for("bridge ready", Duration::from_secs(300));
    let pid = run.pid();
    let before = owned(pid);
    let volumes = volumes_of(pid);
    assert!(
        before.iter().filter(|o| o.starts_with("container")).count() >= 2,
        "the run should own its DinD and bridge containers: {before:?}"
    );
    run.signal(sig);
    let (code, took) = run.exit(Duration::from_secs(30));
    let out = run.output();
    assert_eq!(code, Some(130), "exit status after {sig}:\n{out}");
    assert!(
        out.contains(&format!("interrupted by SIG{sig}")),
        "the run should say it was interrupted:\n{out}"
    );
    eprintln!(
        "SIG{sig}: exit {code:?} {:.1} s after the signal",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(20), "stopping took {took:?}");
    assert_eq!(owned(pid), Vec::<String>::new(), "left behind after {sig}");
    let vols = docker(&["volume", "ls", "-q"]);
    for v in &volumes {
        assert!(
            !vols.split_whitespace().any(|x| x == v),
            "volume {v} left after {sig}"
        );
    }
}

#[test]
fn sigint_stops_a_scenario_run_and_removes_what_it_started() {
    stops_cleanly_on("INT", 7101);
}

#[test]
fn sigterm_stops_a_scenario_run_and_removes_what_it_started() {
    stops_cleanly_on("TERM", 7102);
}

#[test]
fn a_run_killed_with_sigkill_is_cleaned_up_by_the_next_one() {
    let _serial = one_at_a_time();
    let mut first = Run::start("kill-first", 7103);
    first.wait_for("bridge ready", Duration::from_secs(300));
    let dead = first.pid();
    first.signal("KILL");
    let (code, _) = first.exit(Duration::from_secs(10));
    assert_eq!(code, None, "SIGKILL ends the process without a status code");
    let left = owned(dead);
    assert!(
        left.iter().any(|o| o.starts_with("container")),
        "a SIGKILLed run cannot clean up, so its containers remain: {left:?}"
    );

    let mut next = Run::start("kill-next", 7104);
    next.wait_for("removed leftovers of killed runs", Duration::from_secs(120));
    let out = next.output();
    assert!(
        out.contains(&format!("[{dead}]")) || out.contains(&dead.to_string()),
        "the next run should name the dead owner {dead}:\n{out}"
    );
    assert_eq!(
        owned(dead),
        Vec::<String>::new(),
        "the next run removed them"
    );
    next.signal("TERM");
    let (code, _) = next.exit(Duration::from_secs(30));
    assert_eq!(code, Some(130), "{}", next.output());
    assert_eq!(owned(next.pid()), Vec::<String>::new());
}
