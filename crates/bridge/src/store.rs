//! Durable state in SQLite: reservations, quarantine, last-port history, schema version.
//!
//! The store is one SQLite file, `state.db`, under the state directory
//! (`--state-dir`). It is opened in WAL mode with `synchronous=FULL`: every
//! committed transaction is in the fsynced WAL before [`Store::apply`]
//! returns, so it survives SIGKILL of the bridge and also a power cut. Writes
//! are rare (one transaction per burst of pool changes), so the fsync a
//! commit costs is cheap against what it buys.
//!
//! * [`Store::open`] creates the directory and the file if needed, refuses a
//!   damaged file ([`StoreError::Damaged`], never touching it: no checkpoint,
//!   no migration) and a file written by a newer mesh-bridge
//!   ([`StoreError::TooNew`], never downgraded), and runs the ordered schema
//!   migrations (the version lives in `PRAGMA user_version`).
//! * [`Store::load`] reads everything back as a [`Snapshot`];
//!   [`Store::apply`] writes a burst of [`Change`]s in one transaction, all or
//!   nothing. A reservation of a port another service holds fails the whole
//!   burst (the `UNIQUE` constraint) instead of silently stealing the port.
//! * [`Store::check`] opens the file read-only and never creates, modifies,
//!   checkpoints or deletes anything, runs `PRAGMA integrity_check` and checks
//!   the rows for consistency (names, ports, states, duplicates).
//! * [`Store::move_aside`] renames a damaged store (with its `-wal` and
//!   `-shm`) to `state.db.damaged-<UTC timestamp>`; nothing is ever deleted.
//!
//! Times are milliseconds since the Unix epoch, as in [`crate::pool`].

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::contract::files::{DAMAGED_INFIX, LOCK as LOCK_NAME, STORE as FILE_NAME};
use crate::labels::validate_service_name;
use crate::pool::PortRanges;

/// How many `last_ports` rows are kept (the newest by `seen_ms`).
pub const LAST_PORTS_LIMIT: usize = 4096;
/// Latest representable time: 9999-12-31T23:59:59.999Z (RFC 3339 cannot go further).
pub const MAX_MS: u64 = 253_402_300_799_999;
/// How long a statement waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ordered schema migrations: entry `i` takes `user_version` from `i` to `i + 1`.
/// Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // v1: reservations and last-port history.
    "CREATE TABLE reservations (
         service  TEXT    PRIMARY KEY NOT NULL,
         port     INTEGER UNIQUE NOT NULL CHECK (port BETWEEN 1 AND 65535),
         state    TEXT    NOT NULL CHECK (state IN ('reserved', 'quarantined')),
         until_ms INTEGER NULL CHECK ((state = 'quarantined') = (until_ms IS NOT NULL)),
         since_ms INTEGER NOT NULL CHECK (since_ms >= 0)
     ) STRICT;
     CREATE TABLE last_ports (
         service TEXT    PRIMARY KEY NOT NULL,
         port    INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
         seen_ms INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX last_ports_seen ON last_ports (seen_ms);",
    // v2: reservations made through the API (an orchestrator publishes the
    // port itself): they have no container, so the leak reconciler must
    // leave them alone across restarts.
    "CREATE TABLE pinned (
         service  TEXT    PRIMARY KEY NOT NULL,
         since_ms INTEGER NOT NULL CHECK (since_ms >= 0)
     ) STRICT;",
];

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A running mesh-bridge owns the state directory.
    #[error(
        "{path} is locked by a running mesh-bridge; stop it first (or reserve through POST /v1/reservations), or pass another --state-dir"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file-system operation on the state directory failed.
    #[error(
        "{action} {path}: {source}; check that the path exists and is writable, or pass another --state-dir"
    )]
    Io {
        /// What was being done ("cannot create state directory", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// There is no store at the path.
    #[error(
        "no store at {path}; the bridge creates it on its first run (or pass the right --state-dir)"
    )]
    NotFound {
        /// The store file that is missing.
        path: PathBuf,
    },
    /// The file is not a healthy mesh-bridge store.
    #[error(
        "store {path} is damaged: {reason}; `mesh-bridge run` moves it aside and starts from Docker truth; to keep its reservations, import an export into a fresh --state-dir"
    )]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a newer mesh-bridge.
    #[error(
        "store {path} has schema version {found}, newer than this mesh-bridge understands ({known}); refusing to downgrade it: run the newer mesh-bridge, or point --state-dir at another directory"
    )]
    TooNew {
        /// The store file.
        path: PathBuf,
        /// `user_version` in the file.
        found: u32,
        /// The newest version this code knows.
        known: u32,
    },
    /// The rows break a rule (reported by [`Store::check`]).
    #[error("store {path} is inconsistent: {}{}", problems.iter().take(10).cloned().collect::<Vec<_>>().join("; "), more(problems.len(), 10))]
    Inconsistent {
        /// The store file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A change reserves a port that another service holds.
    #[error(
        "store {path}: cannot give port {port} to `{service}`: it is held by `{holder}`; release it first (nothing of this burst was written)"
    )]
    PortTaken {
        /// The store file.
        path: PathBuf,
        /// The contested port.
        port: u16,
        /// Who asked for it.
        service: String,
        /// Who holds it.
        holder: String,
    },
    /// A change carries a value the store cannot hold.
    #[error("store {path}: refusing change: {reason} (nothing of this burst was written)")]
    Invalid {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the store's lock for longer than the busy timeout.
    #[error(
        "store {path} is locked by another process (waited {:?} while {action}); is another mesh-bridge writing to this --state-dir?",
        BUSY_TIMEOUT
    )]
    Busy {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
    },
    /// Any other SQLite failure.
    #[error("store {path}: {action} failed: {source}")]
    Sqlite {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

fn more(n: usize, shown: usize) -> String {
    if n > shown {
        format!(" (and {} more)", n - shown)
    } else {
        String::new()
    }
}

impl StoreError {
    /// Whether the file itself is bad (the caller should move it aside), as
    /// opposed to a transient or environmental failure.
    pub fn is_damaged(&self) -> bool {
        matches!(self, StoreError::Damaged { .. })
    }

    /// Classifies a SQLite error: corruption is [`StoreError::Damaged`],
    /// a lock timeout [`StoreError::Busy`], the rest [`StoreError::Sqlite`].
    fn sql(path: &Path, action: &'static str, source: rusqlite::Error) -> Self {
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!("{action}: {source}"),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
                path: path.to_path_buf(),
                action,
            },
            _ => StoreError::Sqlite {
                path: path.to_path_buf(),
                action,
                source,
            },
        }
    }
}

/// The state a stored reservation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Held by a service.
    Reserved,
    /// Released; kept for the service until the deadline.
    Quarantined {
        /// Deadline, milliseconds since the Unix epoch.
        until_ms: u64,
    },
}

/// One stored reservation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// The service.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// Reserved or quarantined.
    pub state: RecordState,
    /// When the service got the port (ms since the epoch; 0 when unknown).
    pub since_ms: u64,
}

/// Everything the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Reservations, ordered by port.
    pub reservations: Vec<Record>,
    /// Last port of each service, newest first (at most [`LAST_PORTS_LIMIT`]).
    pub last_ports: Vec<(String, u16)>,
    /// Services reserved through the API, with when (ms since the epoch).
    pub pinned: Vec<(String, u64)>,
}

/// One change of a burst given to [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `service` holds `port` from `since_ms` (replaces the service's record).
    /// Fails the burst when another service holds `port`.
    Reserve {
        /// The service.
        service: String,
        /// The port.
        port: u16,
        /// When it got the port.
        since_ms: u64,
    },
    /// `service`'s `port` is quarantined until `until_ms`. `since_ms` is kept
    /// from the record it replaces (0 when there was none).
    Quarantine {
        /// The service.
        service: String,
        /// The port.
        port: u16,
        /// End of the quarantine.
        until_ms: u64,
    },
    /// Forget `service`'s reservation (its last port stays in the history).
    Remove {
        /// The service.
        service: String,
    },
    /// `service` was reserved through the API at `since_ms` (no container owns it).
    Pin {
        /// The service.
        service: String,
        /// When.
        since_ms: u64,
    },
    /// `service` is no longer an API reservation.
    Unpin {
        /// The service.
        service: String,
    },
    /// Remember `port` as `service`'s last port, seen at `seen_ms`.
    LastPort {
        /// The service.
        service: String,
        /// The port.
        port: u16,
        /// When.
        seen_ms: u64,
    },
}

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

/// The durable store: one open read-write connection to `state.db`.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// At least the number of `last_ports` rows: counted at open, raised by
    /// each history write, so a write counts and trims the history only when
    /// it may be over [`LAST_PORTS_LIMIT`].
    history_bound: usize,
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn to_i64(path: &Path, what: &str, v: u64) -> Result<i64, StoreError> {
    if v > MAX_MS {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{what} = {v} ms is after year 9999"),
        });
    }
    Ok(v as i64)
}

fn check_name(path: &Path, service: &str) -> Result<(), StoreError> {
    validate_service_name(service).map_err(|e| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn check_port(path: &Path, service: &str, port: u16) -> Result<(), StoreError> {
    if port == 0 {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("port 0 for `{service}` is not a port"),
        });
    }
    Ok(())
}

/// Runs the pending migrations of `migrations` in one IMMEDIATE transaction,
/// re-reading the version inside it so that two processes opening a fresh
/// store at once migrate it once.
fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<u32, StoreError> {
    let known = migrations.len() as u32;
    // The common case needs no write lock, so opening beside a live bridge
    // does not queue behind its writes.
    if user_version(conn, path)? == known {
        return Ok(known);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::sql(path, "starting the migration", e))?;
    let found = user_version(&tx, path)?;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    if found == 0 {
        // A fresh file must be empty: refuse to write our schema into someone else's database.
        let foreign: Option<String> = tx
            .query_row(
                "SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| StoreError::sql(path, "reading the schema", e))?;
        if let Some(name) = foreign {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "schema version 0 but the file holds `{name}`: not a mesh-bridge store"
                ),
            });
        }
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::sql(path, "migrating the schema", e))?;
        tx.pragma_update(None, "user_version", i as u32 + 1)
            .map_err(|e| StoreError::sql(path, "migrating the schema", e))?;
        tracing::info!(store = %path.display(), version = i + 1, "store schema migrated");
    }
    tx.commit()
        .map_err(|e| StoreError::sql(path, "committing the migration", e))?;
    Ok(known)
}

fn user_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| StoreError::sql(path, "reading the schema version", e))?;
    u32::try_from(v).map_err(|_| StoreError::Damaged {
        path: path.to_path_buf(),
        reason: format!("schema version {v} is not a version"),
    })
}

/// Runs one statement through the connection's statement cache: a burst
/// writes the same few statements thousands of times, and parsing them each
/// time was a tenth of the API burst's CPU (`cargo xtask bench --only p6`).
fn exec_cached<P: rusqlite::Params>(
    tx: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// Runs `PRAGMA quick_check` or `integrity_check`; `Err(Damaged)` unless it says "ok".
fn integrity(conn: &Connection, path: &Path, pragma: &'static str) -> Result<(), StoreError> {
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

fn require_tables(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version = user_version(conn, path)?;
    let mut tables = vec!["reservations", "last_ports"];
    if version >= 2 {
        tables.push("pinned");
    }
    for table in tables {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::sql(path, "reading the schema", e))?;
        if n != 1 {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!("table `{table}` is missing"),
            });
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store under `dir`, refusing a damaged
    /// file or one of a newer schema without modifying it, and migrates an
    /// older schema.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, MIGRATIONS)
    }

    fn open_with(dir: &Path, migrations: &[&str]) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "cannot create state directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let wal = sidecar(&path, "-wal");
        if !path.exists() && wal.exists() {
            // SQLite would replay this WAL into a new, empty file.
            return Err(StoreError::Damaged {
                path: path.clone(),
                reason: format!(
                    "{} exists without the database file (an earlier move aside was interrupted?)",
                    wal.display()
                ),
            });
        }
        let known = migrations.len() as u32;
        // Judge an existing file read-only first, so that refusing it (damaged
        // or newer) changes nothing: a read-write open would create a WAL.
        if fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false) {
            with_read_only(&path, |conn, p| {
                let found = user_version(conn, p)?;
                if found > known {
                    return Err(StoreError::TooNew {
                        path: p.to_path_buf(),
                        found,
                        known,
                    });
                }
                integrity(conn, p, "quick_check")
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| StoreError::sql(&path, "opening", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| StoreError::sql(&path, "configuring", e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| StoreError::sql(&path, "enabling WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io {
                action: "cannot enable WAL mode on",
                path,
                source: io::Error::other(format!(
                    "journal_mode stayed `{mode}` (WAL needs shared memory: is the state directory on a network file system?)"
                )),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| StoreError::sql(&path, "configuring", e))?;
        migrate(&mut conn, &path, migrations)?;
        require_tables(&conn, &path)?;
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM last_ports", [], |r| r.get(0))
            .map_err(|e| StoreError::sql(&path, "counting the last-port history", e))?;
        Ok(Store {
            conn,
            path,
            history_bound: usize::try_from(rows).unwrap_or(usize::MAX),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every reservation and the last-port history.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let path = &self.path;
        let bad = |reason: String| StoreError::Damaged {
            path: path.clone(),
            reason,
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT service, port, state, until_ms, since_ms FROM reservations ORDER BY port",
            )
            .map_err(|e| StoreError::sql(path, "loading reservations", e))?;
        type Row = (String, i64, String, Option<i64>, i64);
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| StoreError::sql(path, "loading reservations", e))?;
        let mut reservations = Vec::with_capacity(rows.len());
        for (service, port, state, until, since) in rows {
            let port = u16::try_from(port)
                .map_err(|_| bad(format!("reservation of `{service}` has port {port}")))?;
            let since_ms = u64::try_from(since)
                .map_err(|_| bad(format!("reservation of `{service}` has since_ms {since}")))?;
            let state = match (state.as_str(), until) {
                ("reserved", None) => RecordState::Reserved,
                ("quarantined", Some(u)) => RecordState::Quarantined {
                    until_ms: u64::try_from(u)
                        .map_err(|_| bad(format!("reservation of `{service}` has until_ms {u}")))?,
                },
                (s, u) => {
                    return Err(bad(format!(
                        "reservation of `{service}` has state `{s}` with until_ms {u:?}"
                    )));
                }
            };
            reservations.push(Record {
                service,
                port,
                state,
                since_ms,
            });
        }
        let mut stmt = self
            .conn
            .prepare("SELECT service, port FROM last_ports ORDER BY seen_ms DESC, service")
            .map_err(|e| StoreError::sql(path, "loading last ports", e))?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| StoreError::sql(path, "loading last ports", e))?;
        let mut last_ports = Vec::with_capacity(rows.len());
        for (service, port) in rows {
            let port = u16::try_from(port)
                .map_err(|_| bad(format!("last port of `{service}` is {port}")))?;
            last_ports.push((service, port));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT service, since_ms FROM pinned ORDER BY service")
            .map_err(|e| StoreError::sql(path, "loading pinned reservations", e))?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| StoreError::sql(path, "loading pinned reservations", e))?;
        let pinned = rows
            .into_iter()
            .map(|(s, ms)| (s, u64::try_from(ms).unwrap_or(0)))
            .collect();
        Ok(Snapshot {
            reservations,
            last_ports,
            pinned,
        })
    }

    /// Applies a burst of changes in one transaction: all of them or none.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let path = path.as_path();
        // Validate first, so a bad burst never even starts a transaction.
        for c in changes {
            match c {
                Change::Reserve {
                    service,
                    port,
                    since_ms,
                } => {
                    check_name(path, service)?;
                    check_port(path, service, *port)?;
                    to_i64(path, "since_ms", *since_ms)?;
                }
                Change::Quarantine {
                    service,
                    port,
                    until_ms,
                } => {
                    check_name(path, service)?;
                    check_port(path, service, *port)?;
                    to_i64(path, "until_ms", *until_ms)?;
                }
                Change::Remove { service } | Change::Unpin { service } => {
                    check_name(path, service)?
                }
                Change::Pin { service, since_ms } => {
                    check_name(path, service)?;
                    to_i64(path, "since_ms", *since_ms)?;
                }
                Change::LastPort {
                    service,
                    port,
                    seen_ms,
                } => {
                    check_name(path, service)?;
                    check_port(path, service, *port)?;
                    to_i64(path, "seen_ms", *seen_ms)?;
                }
            }
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sql(path, "starting a write", e))?;
        let mut history = 0usize;
        for c in changes {
            let done = match c {
                Change::Reserve {
                    service,
                    port,
                    since_ms,
                } => exec_cached(
                    &tx,
                    "INSERT INTO reservations (service, port, state, until_ms, since_ms)
                     VALUES (?1, ?2, 'reserved', NULL, ?3)
                     ON CONFLICT (service) DO UPDATE SET
                         port = excluded.port, state = 'reserved',
                         until_ms = NULL, since_ms = excluded.since_ms",
                    params![service, port, *since_ms as i64],
                ),
                Change::Quarantine {
                    service,
                    port,
                    until_ms,
                } => exec_cached(
                    &tx,
                    "INSERT INTO reservations (service, port, state, until_ms, since_ms)
                     VALUES (?1, ?2, 'quarantined', ?3, 0)
                     ON CONFLICT (service) DO UPDATE SET
                         port = excluded.port, state = 'quarantined',
                         until_ms = excluded.until_ms",
                    params![service, port, *until_ms as i64],
                ),
                Change::Remove { service } => exec_cached(
                    &tx,
                    "DELETE FROM reservations WHERE service = ?1",
                    [service],
                ),
                Change::Pin { service, since_ms } => exec_cached(
                    &tx,
                    "INSERT INTO pinned (service, since_ms) VALUES (?1, ?2)
                     ON CONFLICT (service) DO NOTHING",
                    params![service, *since_ms as i64],
                ),
                Change::Unpin { service } => {
                    exec_cached(&tx, "DELETE FROM pinned WHERE service = ?1", [service])
                }
                Change::LastPort {
                    service,
                    port,
                    seen_ms,
                } => {
                    history += 1;
                    exec_cached(
                        &tx,
                        "INSERT INTO last_ports (service, port, seen_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (service) DO UPDATE SET
                             port = excluded.port, seen_ms = excluded.seen_ms",
                        params![service, port, *seen_ms as i64],
                    )
                }
            };
            if let Err(e) = done {
                if let (
                    Some(ErrorCode::ConstraintViolation),
                    Change::Reserve { service, port, .. }
                    | Change::Quarantine { service, port, .. },
                ) = (e.sqlite_error_code(), c)
                {
                    let holder: Option<String> = tx
                        .query_row(
                            "SELECT service FROM reservations WHERE port = ?1",
                            [port],
                            |r| r.get(0),
                        )
                        .optional()
                        .ok()
                        .flatten();
                    if let Some(holder) = holder {
                        return Err(StoreError::PortTaken {
                            path: path.to_path_buf(),
                            port: *port,
                            service: service.clone(),
                            holder,
                        });
                    }
                }
                return Err(StoreError::sql(path, "writing a change", e));
            }
        }
        let mut bound = self.history_bound.saturating_add(history);
        if bound > LAST_PORTS_LIMIT {
            // Oldest first by the seen_ms index (ties: oldest row first); no
            // sort of the whole history, which a 10k-service burst paid on
            // every write.
            let rows: i64 = tx
                .query_row("SELECT count(*) FROM last_ports", [], |r| r.get(0))
                .map_err(|e| StoreError::sql(path, "counting last ports", e))?;
            let excess = rows - LAST_PORTS_LIMIT as i64;
            if excess > 0 {
                exec_cached(
                    &tx,
                    "DELETE FROM last_ports WHERE rowid IN
                         (SELECT rowid FROM last_ports ORDER BY seen_ms LIMIT ?1)",
                    [excess],
                )
                .map_err(|e| StoreError::sql(path, "trimming last ports", e))?;
            }
            bound = usize::try_from(rows)
                .unwrap_or(usize::MAX)
                .min(LAST_PORTS_LIMIT);
        }
        tx.commit()
            .map_err(|e| StoreError::sql(path, "committing a write", e))?;
        self.history_bound = bound;
        Ok(())
    }

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
        if meta.len() == 0 && !sidecar(&path, "-wal").exists() {
            // Created, then the bridge stopped before writing anything:
            // `open` initialises it. Nothing to read, nothing inconsistent.
            return Ok(CheckReport::empty(path));
        }
        with_read_only(&path, |conn, p| check_conn(conn, p, ranges))
    }

    /// Renames the store under `dir` (and its `-wal` and `-shm`) to
    /// `state.db.damaged-<UTC YYYYMMDDTHHMMSSZ>` and returns the new path of
    /// the database file. Nothing is deleted. Call it only when no
    /// connection to the store is open.
    pub fn move_aside(dir: &Path, now: SystemTime) -> Result<PathBuf, StoreError> {
        let path = dir.join(FILE_NAME);
        let wal = sidecar(&path, "-wal");
        let shm = sidecar(&path, "-shm");
        if !path.exists() && !wal.exists() {
            return Err(StoreError::NotFound { path });
        }
        let stamp = utc_stamp(now);
        let mut target = None;
        for n in 0..1000u32 {
            let name = if n == 0 {
                format!("{FILE_NAME}{DAMAGED_INFIX}{stamp}")
            } else {
                format!("{FILE_NAME}{DAMAGED_INFIX}{stamp}-{n}")
            };
            let t = dir.join(name);
            if !t.exists() && !sidecar(&t, "-wal").exists() && !sidecar(&t, "-shm").exists() {
                target = Some(t);
                break;
            }
        }
        let Some(target) = target else {
            return Err(StoreError::Io {
                action: "cannot find a free name to move aside",
                path,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        };
        // The WAL goes first: left behind, it would be replayed into a new store.
        for (from, to) in [
            (wal, sidecar(&target, "-wal")),
            (shm, sidecar(&target, "-shm")),
            (path.clone(), target.clone()),
        ] {
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "cannot move aside",
                        path: from,
                        source,
                    });
                }
            }
        }
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        tracing::warn!(from = %path.display(), to = %target.display(), "store moved aside");
        Ok(target)
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn utc_stamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .min(MAX_MS / 1000);
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// `file:` URI of `path` with `query`, percent-encoding what a URI reserves.
fn file_uri(path: &Path, query: &str) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::from("file:");
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

fn open_read_only(path: &Path, query: &str) -> Result<Connection, StoreError> {
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
const WAL_HEADER: u64 = 32;
/// Size of a WAL frame's header (the page follows it; pages are >= 512 bytes).
const WAL_FRAME_HEADER: u64 = 24;

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
fn with_read_only<T>(
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

fn check_conn(
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

/// An exclusive advisory lock on a state directory: one daemon per
/// directory, and no import behind a running daemon's back. Released on drop
/// (and by the kernel when the process dies, even by SIGKILL).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

impl DirLock {
    /// Takes the lock for a daemon, creating the directory and the lock file.
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "cannot create state directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(LOCK_NAME);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "cannot open lock file",
                path: path.clone(),
                source,
            })?;
        Self::take(file, path)
    }

    /// Takes the lock if a daemon ever ran here (the lock file exists);
    /// creates nothing. `Ok(None)` when there is no lock file.
    pub fn probe(dir: &Path) -> Result<Option<DirLock>, StoreError> {
        let path = dir.join(LOCK_NAME);
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => Self::take(file, path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                action: "cannot open lock file",
                path,
                source,
            }),
        }
    }

    fn take(file: fs::File, path: PathBuf) -> Result<DirLock, StoreError> {
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
            Err(fs::TryLockError::Error(source)) => Err(StoreError::Io {
                action: "cannot lock",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
