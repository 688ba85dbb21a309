//! `mesh-bridge state export|import|check` through the real binary, against
//! temporary state directories: round trips, the legacy map, hostile input
//! (each refused with a clear message and the store left byte-identical),
//! all-or-nothing imports, and `check` on healthy and damaged stores.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-bridge");

/// Runs `mesh-bridge state --state-dir DIR ARGS...` with a clean environment.
fn state(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("state").arg("--state-dir").arg(dir).args(args);
    for var in [
        "MESH_BRIDGE_STATE_DIR",
        "MESH_BRIDGE_PORTS",
        "XDG_STATE_HOME",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run mesh-bridge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Every file under `dir` (recursively) with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("prefix").display().to_string();
                out.insert(rel, fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_same_tree(before: &BTreeMap<String, Vec<u8>>, dir: &Path, what: &str) {
    let after = tree(dir);
    let names = |t: &BTreeMap<String, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(before), "{what}: files changed");
    for (k, v) in before {
        assert!(after[k] == *v, "{what}: {k} was modified");
    }
}

fn export_json(dir: &Path) -> Value {
    let o = ok(state(dir, &["export"]));
    serde_json::from_slice(&o.stdout).expect("export is JSON")
}

fn import_file(dir: &Path, file: &Path) -> Output {
    state(dir, &["import", file.to_str().expect("utf-8 path")])
}

#[test]
fn v1_round_trip_keeps_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let doc = json!({
        "version": 1,
        "reservations": [
            {"service": "api", "port": 11100, "state": "quarantined",
             "until": "2030-01-01T00:05:00.000Z", "since": "2024-01-01T00:00:00.000Z"},
            {"service": "docs", "port": 11117, "state": "reserved",
             "until": null, "since": "2024-02-29T12:34:56.789Z"}
        ]
    });
    let input = tmp.path().join("in.json");
    fs::write(&input, serde_json::to_vec(&doc).expect("json")).expect("write");
    let a = tmp.path().join("a");
    let o = ok(import_file(&a, &input));
    assert!(stdout(&o).contains("imported 2 reservations (1 quarantined)"));
    assert_eq!(export_json(&a), doc, "export gives back what was imported");

    // export FILE, then import it elsewhere.
    let out = tmp.path().join("out").join("export.json");
    fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    ok(state(&a, &["export", out.to_str().expect("utf-8")]));
    let names: Vec<_> = fs::read_dir(out.parent().expect("parent"))
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["export.json"], "no temporary file left behind");
    let b = tmp.path().join("b");
    ok(import_file(&b, &out));
    assert_eq!(export_json(&b), doc);

    // Importing the same file again is idempotent.
    ok(import_file(&b, &out));
    assert_eq!(export_json(&b), doc);
    ok(state(&b, &["check"]));
}

#[test]
fn legacy_map_imports_as_reserved() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("allocations.json");
    fs::write(
        &input,
        r#"{"docs": 11117, "api-gateway": 11100, "x.y_z": 11199}"#,
    )
    .expect("write");
    let dir = tmp.path().join("state");
    ok(import_file(&dir, &input));
    let out = export_json(&dir);
    let got: Vec<(String, u64, String)> = out["reservations"]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["service"].as_str().expect("service").to_string(),
                r["port"].as_u64().expect("port"),
                r["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("api-gateway".into(), 11100, "reserved".into()),
            ("docs".into(), 11117, "reserved".into()),
            ("x.y_z".into(), 11199, "reserved".into()),
        ]
    );
    assert!(out["reservations"][0]["until"].is_null());
    assert!(
        out["reservations"][0]["since"]
            .as_str()
            .expect("since")
            .ends_with('Z')
    );

    // Other ranges with --ports.
    let input = tmp.path().join("other.json");
    fs::write(&input, r#"{"far": 12001}"#).expect("write");
    let o = import_file(&dir, &input);
    assert!(!o.status.success());
    ok(state(
        &dir,
        &[
            "--ports",
            "11100-11199,12000-12049",
            "import",
            input.to_str().expect("utf-8"),
        ],
    ));
    // The default ranges no longer cover the store; --ports does.
    assert!(!state(&dir, &["check"]).status.success());
    ok(state(
        &dir,
        &["--ports", "11100-11199,12000-12049", "check"],
    ));
}

#[test]
fn hostile_files_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let seed = tmp.path().join("seed.json");
    fs::write(&seed, r#"{"docs": 11117, "api": 11100}"#).expect("write");
    ok(import_file(&dir, &seed));
    let before = tree(&dir);
    assert!(!before.is_empty());

    let long = "a".repeat(300);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"hello, world".to_vec(), "not valid JSON"),
        ("empty file", Vec::new(), "not valid JSON"),
        ("array", b"[11100, 11101]".to_vec(), "found an array"),
        ("null", b"null".to_vec(), "found null"),
        ("nested object", br#"{"a": {"b": 11150}}"#.to_vec(), "$.a: expected a port number, found an object"),
        ("deep nesting", "[".repeat(100_000).into_bytes(), "not valid JSON"),
        ("negative port", br#"{"a": -5}"#.to_vec(), "$.a: -5 is not a port"),
        ("zero port", br#"{"a": 0}"#.to_vec(), "$.a: 0 is not a port"),
        ("u16 overflow", br#"{"a": 70000}"#.to_vec(), "$.a: 70000 is not a port"),
        ("huge port", br#"{"a": 123456789012345678901234567890}"#.to_vec(), "is not a port"),
        ("float port", br#"{"a": 11150.5}"#.to_vec(), "$.a: 11150.5 is not a port"),
        ("string port", br#"{"a": "11150"}"#.to_vec(), "$.a: expected a port number, found a string"),
        ("outside ranges", br#"{"a": 8080}"#.to_vec(), "port 8080 is outside the ranges 11100-11199"),
        ("duplicate port", br#"{"a": 11150, "b": 11150}"#.to_vec(), "$.b: port 11150 is given twice (also at $.a)"),
        ("duplicate service", br#"{"a": 11150, "a": 11151}"#.to_vec(), "service `a` is given twice"),
        ("path name", br#"{"../x": 11150}"#.to_vec(), r#"$["../x"]: service name `../x` is invalid"#),
        ("upper-case name", br#"{"Docs": 11150}"#.to_vec(), "service name `Docs` is invalid"),
        ("300-char name", format!(r#"{{"{long}": 11150}}"#).into_bytes(), "is invalid"),
        ("clash with the store", br#"{"other": 11117}"#.to_vec(), "port 11117 is held in"),
        (
            "v1 bad state",
            br#"{"version":1,"reservations":[{"service":"a","port":11150,"state":"gone","until":null}]}"#.to_vec(),
            r#"$.reservations[0].state: "gone" is not a state"#,
        ),
        (
            "v1 bad time",
            br#"{"version":1,"reservations":[{"service":"a","port":11150,"state":"quarantined","until":"tomorrow"}]}"#.to_vec(),
            "$.reservations[0].until: \"tomorrow\" is not an RFC 3339 UTC time",
        ),
        (
            "v1 newer version",
            br#"{"version":2,"reservations":[]}"#.to_vec(),
            "version 2 is not supported",
        ),
        (
            "v1 entry not an object",
            br#"{"version":1,"reservations":[11150]}"#.to_vec(),
            "$.reservations[0]: expected an object, found a number",
        ),
    ];
    for (what, bytes, expect) in &cases {
        let file = tmp.path().join("hostile.json");
        fs::write(&file, bytes).expect("write");
        let o = import_file(&dir, &file);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: exit code; stderr: {err}");
        assert!(err.starts_with("mesh-bridge: error: "), "{what}: {err}");
        assert!(err.contains(expect), "{what}: want `{expect}` in: {err}");
        assert!(
            err.contains("hostile.json"),
            "{what}: names the file: {err}"
        );
        assert!(
            err.len() < 2000,
            "{what}: message bounded ({} bytes)",
            err.len()
        );
        assert_same_tree(&before, &dir, what);
    }

    // 20 MiB: refused before parsing.
    let big = tmp.path().join("big.json");
    let mut text = String::from("{");
    let mut i = 0u32;
    while text.len() < 20 << 20 {
        text.push_str(&format!("\"s{i}\": 11150, "));
        i += 1;
    }
    text.push_str("\"end\": 11151}");
    fs::write(&big, text).expect("write");
    let o = import_file(&dir, &big);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("larger than"), "{}", stderr(&o));
    assert_same_tree(&before, &dir, "20 MiB file");

    // A missing file.
    let o = import_file(&dir, &tmp.path().join("missing.json"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
    assert_same_tree(&before, &dir, "missing file");
}

#[test]
fn import_is_all_or_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Into a fresh directory: a bad file creates nothing at all.
    let fresh = tmp.path().join("fresh");
    let file = tmp.path().join("mixed.json");
    fs::write(
        &file,
        r#"{"good-1": 11150, "good-2": 11151, "BAD": 11152, "good-3": 11153}"#,
    )
    .expect("write");
    let o = import_file(&fresh, &file);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(r#"$.BAD: service name `BAD` is invalid"#),
        "{}",
        stderr(&o)
    );
    assert!(!fresh.exists(), "a refused import creates no store");

    // Into an existing store: nothing of the good entries lands.
    let dir = tmp.path().join("state");
    let seed = tmp.path().join("seed.json");
    fs::write(&seed, r#"{"docs": 11117}"#).expect("write");
    ok(import_file(&dir, &seed));
    let before_export = export_json(&dir);
    let before = tree(&dir);
    let o = import_file(&dir, &file);
    assert_eq!(o.status.code(), Some(2));
    assert_same_tree(&before, &dir, "mixed file");
    assert_eq!(export_json(&dir), before_export);

    // Many problems: the first few are listed, with a count of the rest.
    let many: String = (0..40)
        .map(|i| format!("\"s{i}\": {}", 70000 + i))
        .collect::<Vec<_>>()
        .join(", ");
    fs::write(&file, format!("{{{many}}}")).expect("write");
    let o = import_file(&dir, &file);
    let err = stderr(&o);
    assert!(err.contains("40 problems"), "{err}");
    assert!(err.contains("$.s0: 70000 is not a port"), "{err}");
    assert!(err.contains("and 35 more"), "{err}");
}

#[test]
fn import_may_move_ports_between_imported_services() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let file = tmp.path().join("a.json");
    fs::write(&file, r#"{"a": 11100, "b": 11101}"#).expect("write");
    ok(import_file(&dir, &file));
    // Swap: each port is held by a service that is itself re-imported.
    fs::write(&file, r#"{"a": 11101, "b": 11100}"#).expect("write");
    ok(import_file(&dir, &file));
    let out = export_json(&dir);
    assert_eq!(out["reservations"][0]["service"], "b");
    assert_eq!(out["reservations"][1]["service"], "a");
}

#[test]
fn check_passes_on_a_healthy_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let seed = tmp.path().join("seed.json");
    fs::write(&seed, r#"{"docs": 11117, "api": 11100}"#).expect("write");
    ok(import_file(&dir, &seed));
    let before = tree(&dir);
    let o = ok(state(&dir, &["check"]));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("is ok"), "{out}");
    assert!(out.contains("2 reservations"), "{out}");
    assert_same_tree(&before, &dir, "check");
}

#[test]
fn check_refuses_missing_store_without_creating_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nothing-here");
    let o = state(&dir, &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no store at"), "{}", stderr(&o));
    assert!(!dir.exists());
    let o = state(&dir, &["export"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!dir.exists());
}

#[test]
fn check_reports_garbage_and_leaves_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let seed = tmp.path().join("seed.json");
    fs::write(&seed, r#"{"docs": 11117}"#).expect("write");
    ok(import_file(&dir, &seed));
    let db = dir.join("state.db");
    let garbage: Vec<u8> = (0..16384u32).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(&db, &garbage).expect("write");
    let before = tree(&dir);
    let o = state(&dir, &["check"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&db.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("damaged"), "{err}");
    assert_same_tree(&before, &dir, "check of garbage");
    // Export and import refuse it too, and leave it alone.
    assert_eq!(state(&dir, &["export"]).status.code(), Some(2));
    assert_eq!(import_file(&dir, &seed).status.code(), Some(2));
    assert_same_tree(&before, &dir, "export/import of garbage");
}

#[test]
fn check_reports_truncation_and_leaves_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let seed = tmp.path().join("seed.json");
    let map: serde_json::Map<String, Value> = (0..100u16)
        .map(|i| {
            (
                format!("service-{i:03}-{}", "x".repeat(40)),
                json!(11100 + i),
            )
        })
        .collect();
    fs::write(&seed, Value::Object(map).to_string()).expect("write");
    ok(import_file(&dir, &seed));
    let db = dir.join("state.db");
    let full = fs::read(&db).expect("read");
    assert!(full.len() > 4 * 4096, "store spans several pages");
    fs::write(&db, &full[..full.len() / 2]).expect("truncate");
    let before = tree(&dir);
    let o = state(&dir, &["check"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&db.display().to_string()),
        "names the file: {err}"
    );
    assert_same_tree(&before, &dir, "check of truncated store");
}
