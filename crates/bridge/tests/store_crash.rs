//! Crash test of the store: a writer process is killed with SIGKILL at random
//! points while it commits bursts, and after every kill the store must be
//! intact (`Store::check` and `Store::open` succeed), hold every burst the
//! writer reported as committed, and hold each burst entirely or not at all.
//!
//! The writer is this test binary itself, re-executed with
//! `MESH_BRIDGE_CRASH_WRITER_DIR` set and the name filter `crash_writer_child`
//! (that test does nothing in a normal run). It prints `ready` once the store
//! is open and `committed N` after `apply` of burst N has returned.
//!
//! `MESH_BRIDGE_CRASH_ITERATIONS` sets the number of kills (default 100;
//! `cargo xtask crash --iterations N` raises it), `MESH_BRIDGE_CRASH_SEED`
//! replays the same sequence of kill delays.
//!
//! Burst `b` is a realistic mix for the daemon: it removes the services of
//! burst `b - WINDOW`, reserves `size(b)` new services on the ports they
//! freed, quarantines the services of burst `b - WINDOW / 2`, and records
//! last ports. So after burst `last` the store must equal [`expected`]`(last)`
//! exactly; a half-applied burst cannot match it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use mesh_bridge::store::{Change, LAST_PORTS_LIMIT, Record, RecordState, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITER_DIR: &str = "MESH_BRIDGE_CRASH_WRITER_DIR";
const WRITER_START: &str = "MESH_BRIDGE_CRASH_WRITER_START";
/// When set, the writer commits this many bursts, prints `idle` and waits for stdin to close.
const WRITER_IDLE_AFTER: &str = "MESH_BRIDGE_CRASH_WRITER_IDLE_AFTER";
const WRITER_TEST: &str = "crash_writer_child";

/// Bursts whose services are alive at once.
const WINDOW: u64 = 64;
/// Most services a burst reserves.
const MAX_BURST: u64 = 8;
const BASE_PORT: u64 = 20_000;
/// How long the parent waits for the writer to say anything.
const DEADLINE: Duration = Duration::from_secs(60);

fn size(b: u64) -> u64 {
    1 + (b * 7 + 3) % MAX_BURST
}

fn service(b: u64, j: u64) -> String {
    format!("b{b}-s{j}")
}

fn port(b: u64, j: u64) -> u16 {
    u16::try_from(BASE_PORT + (b % WINDOW) * MAX_BURST + j).expect("port")
}

/// The changes of burst `b`, applied as one transaction.
fn burst(b: u64) -> Vec<Change> {
    let mut out = Vec::new();
    if let Some(old) = b.checked_sub(WINDOW) {
        out.extend((0..size(old)).map(|j| Change::Remove {
            service: service(old, j),
        }));
    }
    out.extend((0..size(b)).map(|j| Change::Reserve {
        service: service(b, j),
        port: port(b, j),
        since_ms: b,
    }));
    if let Some(mid) = b.checked_sub(WINDOW / 2) {
        out.extend((0..size(mid)).map(|j| Change::Quarantine {
            service: service(mid, j),
            port: port(mid, j),
            until_ms: b,
        }));
    }
    out.extend((0..size(b)).map(|j| Change::LastPort {
        service: service(b, j),
        port: port(b, j),
        seen_ms: b,
    }));
    out
}

/// The reservations after bursts `0..=last`, ordered by port like `Store::load`.
fn expected(last: Option<u64>) -> Vec<Record> {
    let Some(last) = last else { return Vec::new() };
    let mut out = Vec::new();
    for b in (last + 1).saturating_sub(WINDOW)..=last {
        for j in 0..size(b) {
            let state = if b + WINDOW / 2 <= last {
                RecordState::Quarantined {
                    until_ms: b + WINDOW / 2,
                }
            } else {
                RecordState::Reserved
            };
            out.push(Record {
                service: service(b, j),
                port: port(b, j),
                state,
                since_ms: b,
            });
        }
    }
    out.sort_by_key(|r| r.port);
    out
}

/// The newest burst present in the store, from the services' names.
fn last_burst(records: &[Record]) -> Option<u64> {
    records
        .iter()
        .map(|r| {
            r.service
                .strip_prefix('b')
                .and_then(|s| s.split_once('-'))
                .and_then(|(b, _)| b.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unexpected service {}", r.service))
        })
        .max()
}

/// Marks the writer's own lines among the test harness's output (which may
/// share a line with them: `test crash_writer_child ... @@writer ready`).
const MARK: &str = "@@writer ";

fn say(out: &mut impl Write, line: &str) {
    // One write per line, so a kill cannot leave half a line that parses.
    if out
        .write_all(format!("{MARK}{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0); // the parent has gone
    }
}

/// Writer mode (re-executed by the tests below); does nothing otherwise.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(WRITER_DIR) else {
        return;
    };
    let start: u64 = std::env::var(WRITER_START)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let idle_after: Option<u64> = std::env::var(WRITER_IDLE_AFTER)
        .ok()
        .and_then(|s| s.parse().ok());
    let mut store = Store::open(Path::new(&dir)).expect("writer: open");
    let mut out = std::io::stdout().lock();
    say(&mut out, "ready");
    for b in start.. {
        if idle_after.is_some_and(|n| b >= start + n) {
            say(&mut out, "idle");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            return;
        }
        store.apply(&burst(b)).expect("writer: apply");
        say(&mut out, &format!("committed {b}"));
    }
}

/// A running writer and the lines it has printed.
struct Writer {
    child: Child,
    lines: Receiver<String>,
}

fn spawn_writer(dir: &Path, start: u64, idle_after: Option<u64>) -> Writer {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args([WRITER_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(WRITER_DIR, dir)
        .env(WRITER_START, start.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(n) = idle_after {
        cmd.env(WRITER_IDLE_AFTER, n.to_string());
    }
    let mut child = cmd.spawn().expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                // A line cut by the kill has no newline: it was never "reported".
                Ok(_) if line.ends_with('\n') => {
                    let Some(at) = line.find(MARK) else { continue };
                    let msg = line[at + MARK.len()..].trim_end().to_string();
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                Ok(_) => return,
            }
        }
    });
    Writer { child, lines }
}

impl Writer {
    /// Waits until the writer prints `want`, collecting `committed` lines on the way.
    fn wait_for(&mut self, want: &str, committed: &mut Option<u64>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(line) => note(&line, committed),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("writer did not print `{want}` within {DEADLINE:?}");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    panic!("writer exited ({status}) before printing `{want}`");
                }
            }
        }
    }

    /// SIGKILLs the writer and returns the last burst it reported committed.
    fn kill(mut self, mut committed: Option<u64>) -> Option<u64> {
        // Child::kill is SIGKILL on unix: no destructor, no flush, no checkpoint.
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait");
        assert!(
            !status.success(),
            "writer was killed, not finished: {status}"
        );
        // The reader sees EOF once the child is gone; drain what it printed.
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            note(&line, &mut committed);
        }
        committed
    }
}

fn note(line: &str, committed: &mut Option<u64>) {
    if let Some(n) = line.strip_prefix("committed ") {
        let n: u64 = n.parse().expect("burst number");
        assert!(committed.is_none_or(|c| n == c + 1), "bursts in order");
        *committed = Some(n);
    }
}

/// Length and hash of every file under `dir`.
fn files(dir: &Path) -> BTreeMap<String, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out; // killed before the store existed
    };
    for e in entries {
        let e = e.expect("entry");
        let bytes = std::fs::read(e.path()).expect("read");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (bytes.len(), h.finish()),
        );
    }
    out
}

fn iterations() -> u32 {
    std::env::var("MESH_BRIDGE_CRASH_ITERATIONS")
        .ok()
        .map(|s| s.parse().expect("MESH_BRIDGE_CRASH_ITERATIONS is a number"))
        .unwrap_or(100)
}

fn seed() -> u64 {
    match std::env::var("MESH_BRIDGE_CRASH_SEED") {
        Ok(s) => s.parse().expect("MESH_BRIDGE_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// One directory for all iterations, so state accumulates as in a long-lived
/// bridge: every writer starts on a store that has been through earlier
/// kills and recoveries, the WAL grows past auto-checkpoints and the tables
/// split and merge pages as the window of bursts slides. Fresh directories
/// would only ever test the first few bursts of a new file. The window keeps
/// the store bounded (at most 512 reservations, 4096 last ports), so the run
/// length does not change what one iteration costs.
#[test]
fn committed_bursts_survive_sigkill() {
    if std::env::var_os(WRITER_DIR).is_some() {
        return; // we are a writer child that matched this name too
    }
    let iterations = iterations();
    let seed = seed();
    println!(
        "store_crash: seed {seed} (replay the delays with MESH_BRIDGE_CRASH_SEED={seed}), {iterations} iterations"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("state");
    let started = Instant::now();
    let mut last: Option<u64> = None;
    let (mut early_kills, mut unreported, mut reported_total) = (0u32, 0u32, 0u64);
    for it in 0..iterations {
        let start = last.map_or(0, |l| l + 1);
        let mut writer = spawn_writer(&dir, start, None);
        let mut reported = None;
        // Most kills land while bursts are being committed; some during
        // start-up (process launch, open, WAL recovery, migration).
        if rng.random_bool(0.15) {
            early_kills += 1;
            std::thread::sleep(Duration::from_micros(rng.random_range(0..=20_000)));
        } else {
            writer.wait_for("ready", &mut reported);
            std::thread::sleep(Duration::from_micros(rng.random_range(0..=30_000)));
        }
        let reported = writer.kill(reported);
        reported_total += reported.map_or(0, |r| r + 1 - start);

        if !dir.join("state.db").exists() {
            // Killed before the first open created anything.
            assert!(
                last.is_none() && reported.is_none(),
                "iteration {it}: store vanished"
            );
            continue;
        }
        // check first: read-only, on exactly what the kill left behind.
        let before = files(&dir);
        let checked = Instant::now();
        let report = Store::check(&dir, None).unwrap_or_else(|e| {
            let keep = std::env::temp_dir().join(format!("store-crash-{seed}-{it}"));
            let _ = std::fs::create_dir_all(&keep);
            for name in before.keys() {
                let _ = std::fs::copy(dir.join(name), keep.join(name));
            }
            panic!(
                "iteration {it} (seed {seed}): check failed: {e} (files kept in {})",
                keep.display()
            )
        });
        assert_eq!(
            files(&dir),
            before,
            "iteration {it}: check modified the store"
        );
        // SQLite's read-only WAL recovery can spin ~10 s before giving up;
        // check must not go down that path on what a kill leaves.
        assert!(
            checked.elapsed() < Duration::from_secs(8),
            "iteration {it} (seed {seed}): check took {:?}",
            checked.elapsed()
        );
        let store = Store::open(&dir)
            .unwrap_or_else(|e| panic!("iteration {it} (seed {seed}): open failed: {e}"));
        let snap = store.load().expect("load");
        let found = last_burst(&snap.reservations);
        assert_eq!(report.reservations, snap.reservations.len());

        // Durability: every reported burst is there. At most one more (the
        // kill fell between commit and print).
        let floor = reported.or(last);
        let ok = match (floor, found) {
            (None, None) => true,
            (None, Some(f)) => f == 0,
            (Some(fl), Some(f)) => f == fl || f == fl + 1,
            (Some(_), None) => false,
        };
        assert!(
            ok,
            "iteration {it} (seed {seed}): writer reported up to {reported:?} (before: {last:?}), store holds up to {found:?}"
        );
        if found != floor {
            unreported += 1;
        }
        // Atomicity: the store is exactly the state after burst `found`.
        assert!(
            snap.reservations == expected(found),
            "iteration {it} (seed {seed}): store is not the state after burst {found:?} (half a burst?)"
        );
        let total: u64 = found.map_or(0, |f| (0..=f).map(size).sum());
        assert_eq!(
            snap.last_ports.len() as u64,
            total.min(LAST_PORTS_LIMIT as u64),
            "iteration {it}: last ports"
        );
        if let Some(f) = found {
            for j in 0..size(f) {
                assert!(snap.last_ports.contains(&(service(f, j), port(f, j))));
            }
        }
        drop(store);
        last = found;
    }
    println!(
        "store_crash: {iterations} kills ({early_kills} during start-up), {reported_total} bursts reported committed, {} bursts in total, {unreported} committed but unreported, {:.1?}",
        last.map_or(0, |l| l + 1),
        started.elapsed()
    );
}

/// `Store::check` (and `mesh-bridge state check`) beside a live writer in
/// another process sees its commits and changes no file, not even the -shm
/// index the writer maps.
#[test]
fn check_beside_a_live_writer_changes_nothing() {
    if std::env::var_os(WRITER_DIR).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let mut writer = spawn_writer(&dir, 0, Some(40));
    let mut committed = None;
    writer.wait_for("idle", &mut committed);
    assert_eq!(committed, Some(39));
    let before = files(&dir);
    assert!(before.contains_key("state.db-wal") && before.contains_key("state.db-shm"));
    let report = Store::check(&dir, None).expect("check");
    assert_eq!(report.reservations, expected(Some(39)).len());
    assert_eq!(files(&dir), before, "Store::check modified the store");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-bridge"))
        .args(["state", "check", "--ports", "20000-20999", "--state-dir"])
        .arg(&dir)
        .output()
        .expect("run mesh-bridge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files(&dir), before, "state check modified the store");
    // Closing stdin lets the writer finish; its store closes cleanly.
    drop(writer.child.stdin.take());
    let status = writer.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}
