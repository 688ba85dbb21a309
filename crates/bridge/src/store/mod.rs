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

mod aside;
mod check;
mod error;
mod lock;
mod schema;

pub use check::CheckReport;
use check::{integrity, with_read_only};
pub use error::StoreError;
pub use lock::DirLock;
pub use schema::SCHEMA_VERSION;
use schema::{MIGRATIONS, migrate, require_tables, user_version};

/// How many `last_ports` rows are kept (the newest by `seen_ms`).
pub const LAST_PORTS_LIMIT: usize = 4096;
/// Latest representable time: 9999-12-31T23:59:59.999Z (RFC 3339 cannot go further).
pub const MAX_MS: u64 = 253_402_300_799_999;
/// How long a statement waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        // Judge an existing file read-only first, so that refusing it (damaged,
        // foreign, missing a table, or newer) changes nothing: a read-write
        // open would switch it to WAL mode and create a WAL.
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
                integrity(conn, p, "quick_check")?;
                if found == 0 {
                    schema::refuse_foreign(conn, p)
                } else {
                    require_tables(conn, p)
                }
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
}

#[cfg(test)]
mod tests;
