//! The store's unit tests: open, load, apply, check, move aside, lock.

use super::*;
use std::collections::BTreeMap;

fn reserve(service: &str, port: u16, since_ms: u64) -> Change {
    Change::Reserve {
        service: service.into(),
        port,
        since_ms,
    }
}

/// Length and hash of every file under `dir`, by name.
fn files(dir: &Path) -> BTreeMap<String, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let e = e.expect("dir entry");
            let bytes = fs::read(e.path()).expect("read");
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                (bytes.len(), h.finish()),
            );
        }
    }
    out
}

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    assert_eq!(s.load().expect("load"), Snapshot::default());
    s.apply(&[
        reserve("docs", 11117, 5),
        Change::Quarantine {
            service: "old".into(),
            port: 11100,
            until_ms: 99,
        },
        Change::LastPort {
            service: "docs".into(),
            port: 11117,
            seen_ms: 5,
        },
    ])
    .expect("apply");
    drop(s);
    let s = Store::open(dir.path()).expect("reopen");
    let snap = s.load().expect("load");
    assert_eq!(
        snap.reservations,
        vec![
            Record {
                service: "old".into(),
                port: 11100,
                state: RecordState::Quarantined { until_ms: 99 },
                since_ms: 0,
            },
            Record {
                service: "docs".into(),
                port: 11117,
                state: RecordState::Reserved,
                since_ms: 5,
            },
        ]
    );
    assert_eq!(snap.last_ports, vec![("docs".to_string(), 11117)]);
    let report =
        Store::check(dir.path(), Some(&"11100-11199".parse().expect("ranges"))).expect("check");
    assert_eq!((report.reservations, report.quarantined), (2, 1));
}

#[test]
fn quarantine_keeps_since_and_reserve_replaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("a", 1000, 7)]).expect("apply");
    s.apply(&[Change::Quarantine {
        service: "a".into(),
        port: 1000,
        until_ms: 50,
    }])
    .expect("apply");
    let r = &s.load().expect("load").reservations[0];
    assert_eq!(
        (r.state, r.since_ms),
        (RecordState::Quarantined { until_ms: 50 }, 7)
    );
    s.apply(&[reserve("a", 1001, 60)]).expect("apply");
    let r = &s.load().expect("load").reservations[0];
    assert_eq!(
        (r.port, r.state, r.since_ms),
        (1001, RecordState::Reserved, 60)
    );
    s.apply(&[Change::Remove {
        service: "a".into(),
    }])
    .expect("apply");
    assert!(s.load().expect("load").reservations.is_empty());
}

#[test]
fn burst_is_atomic_and_port_is_never_stolen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("a", 1000, 1)]).expect("apply");
    let before = s.load().expect("load");
    let err = s
        .apply(&[
            reserve("b", 1001, 2),
            Change::Remove {
                service: "zzz".into(),
            },
            reserve("c", 1000, 2),
            reserve("d", 1002, 2),
        ])
        .expect_err("port 1000 is a's");
    assert!(
        matches!(&err, StoreError::PortTaken { port: 1000, holder, service, .. } if holder == "a" && service == "c"),
        "{err}"
    );
    assert_eq!(
        s.load().expect("load"),
        before,
        "nothing of the burst landed"
    );
    // A bad name is refused before anything is written.
    let err = s
        .apply(&[reserve("b", 1001, 2), reserve("../x", 1003, 2)])
        .expect_err("bad name");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    let err = s.apply(&[reserve("b", 0, 2)]).expect_err("port 0");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert_eq!(s.load().expect("load"), before);
    // Moving within one burst is fine: free first, then take.
    s.apply(&[
        Change::Remove {
            service: "a".into(),
        },
        reserve("c", 1000, 3),
    ])
    .expect("apply");
    assert_eq!(s.load().expect("load").reservations[0].service, "c");
}

#[test]
fn last_ports_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    let burst: Vec<Change> = (0..LAST_PORTS_LIMIT as u64 + 10)
        .map(|i| Change::LastPort {
            service: format!("s{i}"),
            port: 1 + (i % 60000) as u16,
            seen_ms: i,
        })
        .collect();
    s.apply(&burst).expect("apply");
    let snap = s.load().expect("load");
    assert_eq!(snap.last_ports.len(), LAST_PORTS_LIMIT);
    assert_eq!(snap.last_ports[0].0, format!("s{}", LAST_PORTS_LIMIT + 9));
    assert!(
        !snap.last_ports.iter().any(|(n, _)| n == "s9"),
        "oldest trimmed"
    );
    assert!(snap.last_ports.iter().any(|(n, _)| n == "s10"));
}

#[test]
fn last_ports_stay_bounded_over_small_writes_and_reopens() {
    // The trim runs only when the history may be over the limit: the
    // bound must survive updates of known services and a reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let last = |i: u64, seen_ms: u64| Change::LastPort {
        service: format!("s{i}"),
        port: 1 + (i % 60000) as u16,
        seen_ms,
    };
    let mut s = Store::open(dir.path()).expect("open");
    let limit = LAST_PORTS_LIMIT as u64;
    for chunk in 0..limit / 64 {
        let burst: Vec<Change> = (chunk * 64..chunk * 64 + 64).map(|i| last(i, i)).collect();
        s.apply(&burst).expect("apply");
    }
    // Updates of known services add no rows.
    s.apply(&[last(0, limit), last(1, limit)]).expect("apply");
    assert_eq!(s.load().expect("load").last_ports.len(), LAST_PORTS_LIMIT);
    drop(s);
    let mut s = Store::open(dir.path()).expect("reopen");
    s.apply(&[last(limit, limit + 1), last(limit + 1, limit + 2)])
        .expect("apply");
    let snap = s.load().expect("load");
    assert_eq!(snap.last_ports.len(), LAST_PORTS_LIMIT);
    let has = |n: &str| snap.last_ports.iter().any(|(s, _)| s == n);
    assert!(has("s0") && has("s1"), "refreshed entries kept");
    assert!(!has("s2") && !has("s3"), "the two oldest trimmed");
    assert!(has(&format!("s{}", limit + 1)));
}

#[test]
fn migrations_run_in_order_and_keep_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A store written by a release that knew only v1.
    let mut s = Store::open_with(dir.path(), &MIGRATIONS[..1]).expect("open v1");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    assert_eq!(user_version(&s.conn, &s.path).expect("version"), 1);
    drop(s);
    // This release adds v2; a later one adds v3 and v4: all run, in order, once.
    let v3 = "CREATE TABLE extra (n INTEGER NOT NULL) STRICT; INSERT INTO extra VALUES (2);";
    let v4 = "INSERT INTO extra SELECT n + 1 FROM extra;";
    let all = [MIGRATIONS[0], MIGRATIONS[1], v3, v4];
    let s = Store::open_with(dir.path(), &all).expect("migrate");
    assert_eq!(user_version(&s.conn, &s.path).expect("version"), 4);
    let ns: Vec<i64> = s
        .conn
        .prepare("SELECT n FROM extra ORDER BY n")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(ns, vec![2, 3]);
    assert_eq!(s.load().expect("load").reservations.len(), 1);
    drop(s);
    let s = Store::open_with(dir.path(), &all).expect("reopen");
    assert_eq!(user_version(&s.conn, &s.path).expect("version"), 4);
}

#[test]
fn one_lock_holder_per_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(DirLock::probe(dir.path()).expect("probe").is_none());
    assert!(
        !dir.path().join(LOCK_NAME).exists(),
        "probe creates nothing"
    );
    let held = DirLock::acquire(dir.path()).expect("first");
    assert!(matches!(
        DirLock::acquire(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    assert!(matches!(
        DirLock::probe(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(held);
    assert!(DirLock::probe(dir.path()).expect("probe").is_some());
}

#[test]
fn pinned_reservations_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[
        reserve("ext", 11117, 1),
        Change::Pin {
            service: "ext".into(),
            since_ms: 5,
        },
    ])
    .expect("apply");
    drop(s);
    let s = Store::open(dir.path()).expect("reopen");
    assert_eq!(s.load().expect("load").pinned, vec![("ext".to_string(), 5)]);
    drop(s);
    let mut s = Store::open(dir.path()).expect("reopen");
    s.apply(&[Change::Unpin {
        service: "ext".into(),
    }])
    .expect("unpin");
    assert!(s.load().expect("load").pinned.is_empty());
}

#[test]
fn newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    s.conn
        .pragma_update(None, "user_version", 7)
        .expect("bump version");
    // A rollback-journal file, as another writer may leave it: a read-write
    // open would switch it to WAL (a header change), so it must be judged
    // read-only first.
    let _: String = s
        .conn
        .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
        .expect("rollback journal");
    drop(s);
    let before = files(dir.path());
    let err = Store::open(dir.path()).expect_err("too new");
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 7,
                known: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to downgrade"), "{err}");
    let err = Store::check(dir.path(), None).expect_err("too new");
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    assert_eq!(files(dir.path()), before, "nothing was modified");
}

#[test]
fn damaged_file_is_refused_and_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    fs::write(&path, vec![0xA5u8; 8192]).expect("write garbage");
    let before = files(dir.path());
    let err = Store::open(dir.path()).expect_err("damaged");
    assert!(err.is_damaged(), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let err = Store::check(dir.path(), None).expect_err("damaged");
    assert!(err.is_damaged(), "{err}");
    assert_eq!(files(dir.path()), before, "refusal modifies nothing");

    // 2024-02-29T12:34:56Z
    let now = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
    let moved = Store::move_aside(dir.path(), now).expect("move aside");
    assert_eq!(
        moved.file_name().and_then(|n| n.to_str()),
        Some("state.db.damaged-20240229T123456Z")
    );
    assert_eq!(fs::read(&moved).expect("kept"), vec![0xA5u8; 8192]);
    assert!(!path.exists());
    // A second one in the same second gets its own name.
    fs::write(&path, b"junk").expect("write");
    let moved2 = Store::move_aside(dir.path(), now).expect("move aside");
    assert_ne!(moved, moved2);
    assert!(moved.exists() && moved2.exists());
    // And a fresh store opens in its place.
    let s = Store::open(dir.path()).expect("fresh");
    assert!(s.load().expect("load").reservations.is_empty());
}

#[test]
fn move_aside_takes_wal_and_shm_along() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    // Simulate a crash: the connection's files stay as they are.
    std::mem::forget(s);
    assert!(dir.path().join("state.db-wal").exists());
    let moved = Store::move_aside(dir.path(), SystemTime::now()).expect("move");
    assert!(sidecar(&moved, "-wal").exists());
    assert!(!dir.path().join("state.db-wal").exists());
    assert!(!dir.path().join("state.db-shm").exists());
    assert!(matches!(
        Store::move_aside(dir.path(), SystemTime::now()),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn orphaned_wal_is_not_replayed_into_a_new_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("state.db-wal"), b"x").expect("write");
    let err = Store::open(dir.path()).expect_err("orphan");
    assert!(err.is_damaged(), "{err}");
    assert!(!dir.path().join(FILE_NAME).exists());
}

#[test]
fn foreign_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = Connection::open(dir.path().join(FILE_NAME)).expect("open");
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .expect("create");
    drop(conn);
    let err = Store::open(dir.path()).expect_err("foreign");
    assert!(err.is_damaged(), "{err}");
}

#[test]
fn check_never_writes() {
    let ranges: PortRanges = "11100-11199".parse().expect("ranges");
    // Missing directory: not created.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    assert!(matches!(
        Store::check(&missing, None),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!missing.exists());
    // Empty directory: no file created.
    assert!(matches!(
        Store::check(dir.path(), None),
        Err(StoreError::NotFound { .. })
    ));
    assert!(files(dir.path()).is_empty());

    // Closed, checkpointed store (no WAL).
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    drop(s);
    let before = files(dir.path());
    assert_eq!(before.len(), 1, "{:?}", before.keys());
    Store::check(dir.path(), Some(&ranges)).expect("check");
    assert_eq!(files(dir.path()), before);

    // Live store with a WAL and an index, writer still connected.
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("more", 11118, 1)]).expect("apply");
    let before = files(dir.path());
    assert_eq!(before.len(), 3, "{:?}", before.keys());
    let r = Store::check(dir.path(), Some(&ranges)).expect("check");
    assert_eq!(r.reservations, 2, "sees the WAL's commits");
    // Within one process SQLite shares the writer's (writable) mapping of
    // the -shm index with the checker, so only the durable files are
    // compared here; tests/store_crash.rs compares all of them with the
    // writer in another process, where `readonly_shm` holds.
    let durable = |m: BTreeMap<String, (usize, u64)>| {
        m.into_iter()
            .filter(|(k, _)| !k.ends_with("-shm"))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(durable(files(dir.path())), durable(before));

    // Crashed writer: WAL and index left behind (same caveat).
    std::mem::forget(s);
    let before = files(dir.path());
    let r = Store::check(dir.path(), Some(&ranges)).expect("check");
    assert_eq!(r.reservations, 2);
    assert_eq!(durable(files(dir.path())), durable(before));

    // WAL without its index: checked through a copy.
    fs::remove_file(dir.path().join("state.db-shm")).expect("rm shm");
    let before = files(dir.path());
    let r = Store::check(dir.path(), Some(&ranges)).expect("check");
    assert_eq!(r.reservations, 2);
    assert_eq!(files(dir.path()), before);

    // Out of range is inconsistent.
    let err = Store::check(dir.path(), Some(&"11200-11299".parse().expect("ranges")))
        .expect_err("out of range");
    assert!(matches!(err, StoreError::Inconsistent { .. }), "{err}");
    assert_eq!(files(dir.path()), before);
}

#[test]
fn check_finds_truncation_and_bad_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    let burst: Vec<Change> = (0..400u16)
        .map(|i| reserve(&format!("service-{i}"), 20000 + i, 1))
        .collect();
    s.apply(&burst).expect("apply");
    drop(s);
    let path = dir.path().join(FILE_NAME);
    let full = fs::read(&path).expect("read");
    fs::write(&path, &full[..full.len() / 2]).expect("truncate");
    let before = files(dir.path());
    let err = Store::check(dir.path(), None).expect_err("truncated");
    assert!(err.is_damaged(), "{err}");
    assert_eq!(files(dir.path()), before);
    let err = Store::open(dir.path()).expect_err("truncated");
    assert!(err.is_damaged(), "{err}");
    assert_eq!(files(dir.path()), before);

    // Rows written behind the store's back are caught by check.
    fs::write(&path, &full).expect("restore");
    let conn = Connection::open(&path).expect("open");
    conn.execute(
        "UPDATE reservations SET service = 'Bad Name' WHERE port = 20000",
        [],
    )
    .expect("update");
    drop(conn);
    let err = Store::check(dir.path(), None).expect_err("bad name");
    assert!(
        matches!(&err, StoreError::Inconsistent { problems, .. } if problems.len() == 1),
        "{err}"
    );
}

#[test]
fn times_up_to_year_9999_are_kept_and_later_ones_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("docs", 11117, MAX_MS)])
        .expect("the last millisecond of 9999");
    let err = s
        .apply(&[reserve("wiki", 11118, MAX_MS + 1)])
        .expect_err("after 9999");
    assert!(err.to_string().contains("after year 9999"), "{err}");
    let snap = s.load().expect("load");
    assert_eq!(
        snap.reservations.len(),
        1,
        "the refused change wrote nothing"
    );
    assert_eq!(snap.reservations[0].service, "docs");
    assert_eq!(snap.reservations[0].since_ms, MAX_MS);
}

/// A file with the store's tables but none of its constraints (written by
/// hand or by another tool), holding `reservations` and `last_ports` rows.
fn unconstrained_store(dir: &Path, reservations: &str, last_ports: &str) {
    let conn = Connection::open(dir.join(FILE_NAME)).expect("open");
    conn.execute_batch(&format!(
        "CREATE TABLE reservations (service, port, state, until_ms, since_ms);
         CREATE TABLE last_ports (service, port, seen_ms);
         CREATE TABLE pinned (service, since_ms);
         INSERT INTO reservations VALUES {reservations};
         INSERT INTO last_ports VALUES {last_ports};
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .expect("write");
}

#[test]
fn check_counts_what_a_consistent_store_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    unconstrained_store(
        dir.path(),
        "('a', 1, 'reserved', NULL, 0), ('b', 65535, 'quarantined', 0, 5),
         ('c', 11100, 'quarantined', 9, 5)",
        "('a', 1, 0), ('z', 65535, 0)",
    );
    let r = Store::check(dir.path(), None).expect("consistent");
    assert_eq!(
        (
            r.schema_version,
            r.reservations,
            r.quarantined,
            r.last_ports
        ),
        (SCHEMA_VERSION, 3, 2, 2)
    );
    assert_eq!(
        r.to_string(),
        format!(
            "store {} is ok: schema v{SCHEMA_VERSION}, 3 reservations (2 quarantined), 2 last ports, integrity ok",
            dir.path().join(FILE_NAME).display()
        )
    );
}

#[test]
fn check_names_every_inconsistent_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    unconstrained_store(
        dir.path(),
        "('a', 11100, 'reserved', NULL, 0),
         ('a', 11101, 'reserved', NULL, 0),
         ('b', 11100, 'reserved', NULL, 0),
         ('Bad Name', 11102, 'reserved', NULL, 0),
         (7, 11103, 'reserved', NULL, 0),
         ('c', 0, 'reserved', NULL, 0),
         ('d', 65536, 'reserved', NULL, 0),
         ('e', 12000, 'reserved', NULL, 0),
         ('f', 11104, 'quarantined', -1, 0),
         ('g', 11105, 'reserved', 5, 0),
         ('h', 11106, 'held', NULL, 0),
         ('i', 11107, 'quarantined', NULL, 0),
         ('j', 11108, 'reserved', NULL, -1)",
        "('Bad Name', 11100, 0), (8, 11100, 0), ('k', 0, 0), ('l', 65536, 0), ('m', 'x', 0)",
    );
    let ranges: PortRanges = "11100-11199".parse().expect("ranges");
    let err = Store::check(dir.path(), Some(&ranges)).expect_err("inconsistent");
    let StoreError::Inconsistent { problems, .. } = &err else {
        panic!("{err}");
    };
    let expected = [
        "reservation 1: service `a` appears twice",
        "port 11100 is held by both `a` and `b`",
        "reservation 3: ",
        "reservation 4: service is Integer(7)",
        "`c` has port Integer(0), not 1-65535",
        "`d` has port Integer(65536), not 1-65535",
        "`e` holds port 12000, outside the ranges 11100-11199",
        "`f` has state Text(\"quarantined\") with until_ms Integer(-1)",
        "`g` has state Text(\"reserved\") with until_ms Integer(5)",
        "`h` has state Text(\"held\")",
        "`i` has state Text(\"quarantined\") with until_ms Null",
        "`j` has since_ms Integer(-1)",
        "last port 0: ",
        "last port 1: service is Integer(8)",
        "last port 2: port Integer(0) is not 1-65535",
        "last port 3: port Integer(65536) is not 1-65535",
        "last port 4: port Text(\"x\") is not 1-65535",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (got, want) in problems.iter().zip(expected) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn check_reads_a_store_whose_first_commit_is_only_in_the_wal() {
    // A writer killed right after its first commit: the main file may
    // still be empty, the WAL holds everything.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    std::mem::forget(s);
    let r = Store::check(dir.path(), None).expect("check");
    assert_eq!((r.reservations, r.schema_version), (1, SCHEMA_VERSION));
}

#[test]
fn an_empty_file_checks_as_not_initialised() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join(FILE_NAME), b"").expect("create");
    let r = Store::check(dir.path(), None).expect("empty is fine");
    assert_eq!((r.schema_version, r.reservations), (0, 0));
    assert!(
        r.to_string()
            .ends_with("is ok: empty, not initialised yet (the bridge initialises it on start)"),
        "{r}"
    );
    assert_eq!(files(dir.path()).len(), 1, "check created nothing");
}

#[test]
fn check_refuses_a_file_whose_integrity_check_reports_one_problem() {
    // An index that no longer matches its table: `integrity_check` reports
    // exactly one line, which is not "ok".
    let dir = tempfile::tempdir().expect("tempdir");
    unconstrained_store(
        dir.path(),
        "('a', 11100, 'reserved', NULL, 0)",
        "('a', 11100, 5)",
    );
    let conn = Connection::open(dir.path().join(FILE_NAME)).expect("open");
    conn.execute_batch(
        "CREATE INDEX last_ports_seen ON last_ports (seen_ms);
         PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX last_ports_seen ON last_ports (port)'
             WHERE name = 'last_ports_seen';",
    )
    .expect("corrupt the index");
    drop(conn);
    let err = Store::check(dir.path(), None).expect_err("damaged");
    let StoreError::Damaged { reason, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        reason.contains("missing from index last_ports_seen"),
        "{reason}"
    );
}

#[test]
fn only_a_damaged_file_says_it_is_damaged() {
    let path = Path::new("/x/state.db");
    let damaged = StoreError::Damaged {
        path: path.into(),
        reason: "r".into(),
    };
    assert!(damaged.is_damaged());
    assert!(!StoreError::NotFound { path: path.into() }.is_damaged());
    let code = |c| {
        StoreError::sql(
            path,
            "reading",
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(c), None),
        )
    };
    assert!(matches!(
        code(rusqlite::ffi::SQLITE_BUSY),
        StoreError::Busy { .. }
    ));
    assert!(matches!(
        code(rusqlite::ffi::SQLITE_LOCKED),
        StoreError::Busy { .. }
    ));
    assert!(code(rusqlite::ffi::SQLITE_CORRUPT).is_damaged());
    assert!(code(rusqlite::ffi::SQLITE_NOTADB).is_damaged());
    let other = code(rusqlite::ffi::SQLITE_IOERR);
    assert!(matches!(other, StoreError::Sqlite { .. }) && !other.is_damaged());
}

#[test]
fn a_lock_file_that_cannot_be_opened_is_an_error_not_a_missing_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(DirLock::probe(dir.path()), Ok(None)));
    fs::create_dir(dir.path().join(LOCK_NAME)).expect("a directory where the lock goes");
    assert!(matches!(
        DirLock::probe(dir.path()),
        Err(StoreError::Io { .. })
    ));
}

#[test]
fn check_reports_a_path_it_cannot_read_as_such_not_as_a_missing_store() {
    // The state directory is a regular file: looking up `state.db` under it
    // fails with ENOTDIR, which is not "no store here".
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, b"x").expect("write");
    let err = Store::check(&not_a_dir, None).expect_err("not a directory");
    assert!(
        matches!(
            &err,
            StoreError::Io {
                action: "cannot read",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_version_0_file_checks_as_empty_only_without_tables() {
    // A file SQLite has written (its size is not 0) but no migration yet.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
        .expect("write a page");
    drop(conn);
    assert!(fs::metadata(&path).expect("meta").len() > 0);
    let r = Store::check(dir.path(), None).expect("not initialised is fine");
    assert_eq!((r.schema_version, r.reservations, r.last_ports), (0, 0, 0));
    // Version 0 with a table: someone else's database.
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch("CREATE TABLE t (x);").expect("create");
    drop(conn);
    let err = Store::check(dir.path(), None).expect_err("foreign");
    assert!(
        matches!(&err, StoreError::Damaged { reason, .. } if reason.contains("not a mesh-bridge store")),
        "{err}"
    );
}

#[test]
fn a_store_without_one_of_its_tables_is_damaged_for_check_and_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    unconstrained_store(
        dir.path(),
        "('a', 11100, 'reserved', NULL, 0)",
        "('a', 11100, 0)",
    );
    let conn = Connection::open(dir.path().join(FILE_NAME)).expect("open");
    conn.execute_batch("DROP TABLE pinned;").expect("drop");
    drop(conn);
    let before = files(dir.path());
    let err = Store::check(dir.path(), None).expect_err("no pinned table");
    assert!(
        matches!(&err, StoreError::Damaged { reason, .. } if reason == "table `pinned` is missing"),
        "{err}"
    );
    assert_eq!(files(dir.path()), before, "check wrote nothing");
    let err = Store::open(dir.path()).expect_err("no pinned table");
    assert!(
        matches!(&err, StoreError::Damaged { reason, .. } if reason == "table `pinned` is missing"),
        "{err}"
    );
}

#[test]
fn check_reports_a_failing_query_on_a_store_without_a_wal() {
    // `reservations` lacks its state columns: reading it fails in SQLite,
    // and that failure is the answer (there is no WAL to try a copy of).
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = Connection::open(dir.path().join(FILE_NAME)).expect("open");
    conn.execute_batch(&format!(
        "CREATE TABLE reservations (service, port);
         CREATE TABLE last_ports (service, port, seen_ms);
         CREATE TABLE pinned (service, since_ms);
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .expect("write");
    drop(conn);
    let err = Store::check(dir.path(), None).expect_err("no such column");
    assert!(
        matches!(
            &err,
            StoreError::Sqlite {
                action: "reading reservations",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no such column"), "{err}");
}

#[test]
fn check_sees_a_commit_of_one_frame_in_the_wal() {
    // Pages of 512 bytes, the smallest: a commit that changes one page is a
    // WAL of its header and one frame, 32 + 24 + 512 bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch("PRAGMA page_size = 512;")
        .expect("page size");
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(&format!(
        "CREATE TABLE reservations (service, port, state, until_ms, since_ms);
         CREATE TABLE last_ports (service, port, seen_ms);
         CREATE TABLE pinned (service, since_ms);
         PRAGMA user_version = {SCHEMA_VERSION};
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))
    .expect("write");
    let wal = dir.path().join("state.db-wal");
    assert_eq!(fs::metadata(&wal).expect("wal").len(), 0);
    conn.execute(
        "INSERT INTO reservations VALUES ('docs', 11117, 'reserved', NULL, 0)",
        [],
    )
    .expect("insert");
    assert_eq!(fs::metadata(&wal).expect("wal").len(), 32 + 24 + 512);
    let r = Store::check(dir.path(), None).expect("check");
    assert_eq!(r.reservations, 1, "the WAL's commit is read");
    drop(conn);
}

#[test]
fn a_long_problem_list_shows_ten_and_counts_the_rest() {
    let err = |n: usize| StoreError::Inconsistent {
        path: "/x/state.db".into(),
        problems: (0..n).map(|i| format!("p{i}")).collect(),
    };
    let ten = (0..10)
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(
        err(12).to_string(),
        format!("store /x/state.db is inconsistent: {ten} (and 2 more)")
    );
    assert_eq!(
        err(10).to_string(),
        format!("store /x/state.db is inconsistent: {ten}")
    );
    assert_eq!(err(1).to_string(), "store /x/state.db is inconsistent: p0");
}

#[test]
fn migrate_refuses_a_version_newer_than_it_knows() {
    // Open judges the version first; this is the check inside the
    // migration's transaction, for a file upgraded between the two.
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("open"));
    let path = dir.path().join(FILE_NAME);
    let mut conn = Connection::open(&path).expect("open");
    let err = migrate(&mut conn, &path, &MIGRATIONS[..1]).expect_err("too new");
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 2,
                known: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(user_version(&conn, &path).expect("version"), 2);
}

/// The connection that migrates a fresh store while another waits for the
/// write lock (see the test below).
static OTHER_WRITER: std::sync::Mutex<Option<Connection>> = std::sync::Mutex::new(None);

#[test]
fn a_store_migrated_by_another_process_meanwhile_is_migrated_once() {
    // Two processes open a fresh store at once: both read version 0, one
    // gets the write lock and migrates. The other, once it has the lock,
    // must find the work done: not migrate again, not refuse the store.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    let mut first = Connection::open(&path).expect("open");
    let mode: String = first
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    let other = Connection::open(&path).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    *OTHER_WRITER.lock().expect("lock") = Some(other);
    // `first` finds the lock taken: the other process finishes its
    // migration then, and `first` gets the lock after it.
    fn other_migrates(_: i32) -> bool {
        if let Some(other) = OTHER_WRITER.lock().expect("lock").take() {
            for (i, sql) in MIGRATIONS.iter().enumerate() {
                other.execute_batch(sql).expect("migrate");
                other
                    .pragma_update(None, "user_version", i + 1)
                    .expect("version");
            }
            other.execute_batch("COMMIT").expect("commit");
        }
        true
    }
    first
        .busy_handler(Some(other_migrates))
        .expect("busy handler");
    let known = migrate(&mut first, &path, MIGRATIONS).expect("migrated once");
    assert_eq!(known, SCHEMA_VERSION);
    assert!(
        OTHER_WRITER.lock().expect("lock").is_none(),
        "the other process migrated first"
    );
    assert_eq!(
        user_version(&first, &path).expect("version"),
        SCHEMA_VERSION
    );
}

#[test]
fn move_aside_reports_a_rename_that_fails() {
    // The WAL cannot be renamed: a directory cannot replace what is at
    // the target name (a dangling link, which looks free). Nothing may be
    // moved then: a database moved without its WAL loses what the WAL holds.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    fs::write(&path, b"junk").expect("write");
    fs::create_dir(dir.path().join("state.db-wal")).expect("wal as a directory");
    let now = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
    std::os::unix::fs::symlink(
        dir.path().join("nowhere"),
        dir.path().join("state.db.damaged-20240229T123456Z-wal"),
    )
    .expect("symlink");
    let err = Store::move_aside(dir.path(), now).expect_err("rename fails");
    assert!(
        matches!(&err, StoreError::Io { action: "cannot move aside", path: p, .. } if p.ends_with("state.db-wal")),
        "{err}"
    );
    assert_eq!(fs::read(&path).expect("still there"), b"junk");
}

#[test]
fn a_store_moved_aside_after_year_9999_is_stamped_with_its_last_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join(FILE_NAME), b"junk").expect("write");
    let now = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
    let moved = Store::move_aside(dir.path(), now).expect("move aside");
    assert_eq!(
        moved.file_name().and_then(|n| n.to_str()),
        Some("state.db.damaged-99991231T235959Z")
    );
}

#[test]
fn an_empty_file_beside_a_wal_checks_as_not_initialised_and_keeps_the_wal() {
    // SQLite ignores a WAL beside an empty database file and deletes it
    // when it opens the file, even read-only: check must not open it.
    let live = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(live.path()).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join(FILE_NAME), b"").expect("empty file");
    for side in ["state.db-wal", "state.db-shm"] {
        fs::copy(live.path().join(side), dir.path().join(side)).expect("copy");
    }
    drop(s);
    let before = files(dir.path());
    assert_eq!(before.len(), 3, "{:?}", before.keys());
    let r = Store::check(dir.path(), None).expect("empty is fine");
    assert_eq!((r.schema_version, r.reservations), (0, 0));
    assert_eq!(files(dir.path()), before, "check deleted nothing");
}

#[test]
fn a_sqlite_failure_through_a_wal_is_retried_on_a_copy_and_without_one_is_the_answer() {
    // Some WALs a killed writer leaves cannot be read through their index
    // (a WAL whose header is garbage makes SQLite retry for 10 s, then give
    // SQLITE_PROTOCOL); a private copy of the database and its WAL can be.
    // Here the reader fails on the live files and succeeds on the copy.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    let real = std::path::absolute(&path).expect("absolute");
    let refuse_the_live_file = |conn: &Connection, p: &Path| {
        let at = conn.path().map(PathBuf::from);
        if at.as_deref() == Some(real.as_path()) {
            Err(StoreError::sql(
                p,
                "reading",
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_PROTOCOL),
                    None,
                ),
            ))
        } else {
            Ok(at)
        }
    };
    let mut s = Store::open(dir.path()).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    assert!(dir.path().join("state.db-shm").exists());
    let read = with_read_only(&path, refuse_the_live_file).expect("read from a copy");
    let copy = read.expect("a file name");
    assert_ne!(copy, real);
    assert!(!copy.exists(), "the copy is removed");
    drop(s);
    // Closed: no WAL, so no copy either; the failure is the answer.
    assert!(!dir.path().join("state.db-wal").exists());
    let err = with_read_only(&path, refuse_the_live_file).expect_err("no copy without a WAL");
    assert!(
        matches!(
            &err,
            StoreError::Sqlite {
                action: "reading",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn check_works_under_a_state_directory_that_starts_with_two_slashes() {
    // POSIX keeps a leading `//` as it is (std::path::absolute does too):
    // the URI of such a path must not read the first component as a host.
    let dir = tempfile::tempdir().expect("tempdir");
    let slashes = PathBuf::from(format!("/{}", dir.path().display()));
    assert!(slashes.to_string_lossy().starts_with("//"));
    let mut s = Store::open(&slashes).expect("open");
    s.apply(&[reserve("docs", 11117, 1)]).expect("apply");
    let r = Store::check(&slashes, None).expect("check beside a live writer");
    assert_eq!(r.reservations, 1);
    drop(s);
    let r = Store::check(&slashes, None).expect("check a closed store");
    assert_eq!(r.reservations, 1);
    // Opening an existing store judges it read-only first, the same way.
    let s = Store::open(&slashes).expect("reopen");
    assert_eq!(s.load().expect("load").reservations.len(), 1);
}
