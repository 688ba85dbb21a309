//! Store faults: plans that leave files identical, the damage, the lock.

use super::*;

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
