//! Read-only access: `mesh-bridge state check`, and the reader that never
//! creates, writes, checkpoints or deletes anything (also for a damaged
//! file, or a WAL a killed writer left).

use super::*;

/// What [`Store::check`] found in a healthy store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The store file.
    pub path: PathBuf,
    /// Its schema version.
    pub schema_version: u32,
    /// Number of reservations (reserved and quarantined).
    pub reservations: usize,
    /// How many of them are quarantined.
    pub quarantined: usize,
    /// Number of last-port history rows.
    pub last_ports: usize,
}

impl CheckReport {
    fn empty(path: PathBuf) -> Self {
        CheckReport {
            path,
            schema_version: 0,
            reservations: 0,
            quarantined: 0,
            last_ports: 0,
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schema_version == 0 {
            return write!(
                f,
                "store {} is ok: empty, not initialised yet (the bridge initialises it on start)",
                self.path.display()
            );
        }
        write!(
            f,
            "store {} is ok: schema v{}, {} reservations ({} quarantined), {} last ports, integrity ok",
            self.path.display(),
            self.schema_version,
            self.reservations,
            self.quarantined,
            self.last_ports
        )
    }
}

/// Runs `PRAGMA quick_check` or `integrity_check`; `Err(Damaged)` unless it says "ok".
pub(super) fn integrity(
    conn: &Connection,
    path: &Path,
    pragma: &'static str,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA {pragma}(20)"))
        .map_err(|e| StoreError::sql(path, pragma, e))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| StoreError::sql(path, pragma, e))?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Damaged {
            path: path.to_path_buf(),
            reason: format!("{pragma} failed: {}", lines.join("; ")),
        })
    }
}

impl Store {
    /// Checks the store under `dir` without changing anything: it is opened
    /// read-only (nothing is created, written, checkpointed or deleted, even
    /// for a damaged file or a missing directory), `PRAGMA integrity_check`
    /// must pass, and every row must be consistent: valid service names,
    /// known states, ports in 1-65535 (and in `ranges` when given), no port
    /// or service twice.
    pub fn check(dir: &Path, ranges: Option<&PortRanges>) -> Result<CheckReport, StoreError> {
        let path = dir.join(FILE_NAME);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { path });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "cannot read",
                    path,
                    source,
                });
            }
        };
        if !meta.is_file() {
            return Err(StoreError::Damaged {
                path,
                reason: "not a regular file".into(),
            });
        }
        if meta.len() == 0 {
            // Created, then the bridge stopped before writing anything:
            // `open` initialises it. Nothing to read, nothing inconsistent.
            // A WAL beside it is not read either: SQLite writes the file's
            // header before any WAL, treats a WAL beside an empty file as
            // stale, and deletes it on open (even read-only), so opening
            // here would delete it.
            return Ok(CheckReport::empty(path));
        }
        with_read_only(&path, |conn, p| check_conn(conn, p, ranges))
    }
}

/// `file:` URI of `path` with `query`, percent-encoding what a URI reserves.
/// The authority is empty (`file://` then the absolute path): after a bare
/// `file:`, a path that starts with `//` (POSIX keeps two leading slashes)
/// would have its first component read as a host and refused.
pub(super) fn file_uri(path: &Path, query: &str) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::from("file://");
    for b in abs.as_os_str().as_encoded_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(*b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('?');
    out.push_str(query);
    out
}

pub(super) fn open_read_only(path: &Path, query: &str) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(file_uri(path, query), flags)
        .map_err(|e| StoreError::sql(path, "opening read-only", e))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| StoreError::sql(path, "configuring", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sql(path, "configuring", e))?;
    Ok(conn)
}

/// Size of a WAL file's header.
pub(super) const WAL_HEADER: u64 = 32;
/// Size of a WAL frame's header (the page follows it; pages are >= 512 bytes).
pub(super) const WAL_FRAME_HEADER: u64 = 24;

/// Runs `f` on a read-only connection to `path` that creates, writes,
/// checkpoints and deletes nothing.
///
/// With a WAL and its index, it reads through them, locking like any reader
/// but never writing the index (`readonly_shm`), so it sees what a live
/// bridge committed. Without a WAL the main file is all there is, and
/// `immutable` stops SQLite from creating a WAL and an index just to read it.
/// A WAL without its index cannot be read without creating the index, and a
/// read-only reader cannot recover every WAL a killed writer leaves (one
/// with a header and no frame gives SQLITE_PROTOCOL), so in those cases a
/// private copy of the database and its WAL is read instead.
pub(super) fn with_read_only<T>(
    path: &Path,
    f: impl Fn(&Connection, &Path) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let wal = sidecar(path, "-wal");
    // A WAL shorter than its header plus one frame holds no transaction (a
    // writer killed before its first commit leaves one); the main file is
    // then the whole store. A read-only reader would spin on such a WAL for
    // seconds before giving up with SQLITE_PROTOCOL.
    let wal_len = fs::metadata(&wal).map(|m| m.len()).ok();
    let has_wal = wal_len.is_some_and(|n| n >= WAL_HEADER + WAL_FRAME_HEADER + 512);
    let has_shm = sidecar(path, "-shm").exists();
    if !has_wal || has_shm {
        let query = if has_wal {
            "mode=ro&readonly_shm=1"
        } else {
            "mode=ro&immutable=1"
        };
        match open_read_only(path, query).and_then(|conn| f(&conn, path)) {
            Err(StoreError::Sqlite { .. }) if has_wal => {}
            other => return other,
        }
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp =
        std::env::temp_dir().join(format!("mesh-bridge-check-{}-{nanos}", std::process::id()));
    let io_err = |action, p: &Path, source| StoreError::Io {
        action,
        path: p.to_path_buf(),
        source,
    };
    fs::create_dir(&tmp).map_err(|e| io_err("cannot create scratch directory", &tmp, e))?;
    let copy = tmp.join(FILE_NAME);
    let result = (|| {
        fs::copy(path, &copy).map_err(|e| io_err("cannot copy", path, e))?;
        fs::copy(&wal, sidecar(&copy, "-wal")).map_err(|e| io_err("cannot copy", &wal, e))?;
        let conn = open_read_only(&copy, "mode=ro")?;
        // Errors and reports name the real file, not the copy.
        f(&conn, path)
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

pub(super) fn check_conn(
    conn: &Connection,
    path: &Path,
    ranges: Option<&PortRanges>,
) -> Result<CheckReport, StoreError> {
    let version = user_version(conn, path)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    integrity(conn, path, "integrity_check")?;
    if version == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::sql(path, "reading the schema", e))?;
        if tables == 0 {
            // Stopped before the first migration committed; `open` finishes it.
            return Ok(CheckReport::empty(path.to_path_buf()));
        }
        return Err(StoreError::Damaged {
            path: path.to_path_buf(),
            reason: "schema version 0 but the file holds tables: not a mesh-bridge store".into(),
        });
    }
    require_tables(conn, path)?;
    let mut problems = Vec::new();
    let mut ports: HashMap<i64, String> = HashMap::new();
    let mut services: HashMap<String, ()> = HashMap::new();
    let mut quarantined = 0;
    let mut stmt = conn
        .prepare("SELECT service, port, state, until_ms, since_ms FROM reservations")
        .map_err(|e| StoreError::sql(path, "reading reservations", e))?;
    type Row = (
        rusqlite::types::Value,
        rusqlite::types::Value,
        rusqlite::types::Value,
        rusqlite::types::Value,
        rusqlite::types::Value,
    );
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| StoreError::sql(path, "reading reservations", e))?;
    use rusqlite::types::Value as V;
    for (i, (service, port, state, until, since)) in rows.iter().enumerate() {
        let name = match service {
            V::Text(s) => {
                if let Err(e) = validate_service_name(s) {
                    problems.push(format!("reservation {i}: {e}"));
                }
                if services.insert(s.clone(), ()).is_some() {
                    problems.push(format!("reservation {i}: service `{s}` appears twice"));
                }
                s.clone()
            }
            other => {
                problems.push(format!("reservation {i}: service is {other:?}"));
                format!("#{i}")
            }
        };
        match port {
            V::Integer(p) if (1..=65535).contains(p) => {
                if let Some(r) = ranges
                    && !r.contains(*p as u16)
                {
                    problems.push(format!(
                        "`{name}` holds port {p}, outside the ranges {r} (pass the bridge's --ports)"
                    ));
                }
                if let Some(other) = ports.insert(*p, name.clone()) {
                    problems.push(format!("port {p} is held by both `{other}` and `{name}`"));
                }
            }
            other => problems.push(format!("`{name}` has port {other:?}, not 1-65535")),
        }
        match (state, until) {
            (V::Text(s), V::Null) if s == "reserved" => {}
            (V::Text(s), V::Integer(u)) if s == "quarantined" && *u >= 0 => quarantined += 1,
            (s, u) => problems.push(format!(
                "`{name}` has state {s:?} with until_ms {u:?} (want reserved with none, or quarantined with a deadline)"
            )),
        }
        if !matches!(since, V::Integer(s) if *s >= 0) {
            problems.push(format!("`{name}` has since_ms {since:?}"));
        }
    }
    let mut stmt = conn
        .prepare("SELECT service, port FROM last_ports")
        .map_err(|e| StoreError::sql(path, "reading last ports", e))?;
    let history: Vec<(V, V)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(|e| StoreError::sql(path, "reading last ports", e))?;
    for (i, (service, port)) in history.iter().enumerate() {
        match service {
            V::Text(s) => {
                if let Err(e) = validate_service_name(s) {
                    problems.push(format!("last port {i}: {e}"));
                }
            }
            other => problems.push(format!("last port {i}: service is {other:?}")),
        }
        if !matches!(port, V::Integer(p) if (1..=65535).contains(p)) {
            problems.push(format!("last port {i}: port {port:?} is not 1-65535"));
        }
    }
    if !problems.is_empty() {
        return Err(StoreError::Inconsistent {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(CheckReport {
        path: path.to_path_buf(),
        schema_version: version,
        reservations: rows.len(),
        quarantined,
        last_ports: history.len(),
    })
}
