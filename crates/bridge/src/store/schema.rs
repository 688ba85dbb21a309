//! The schema: ordered, append-only migrations (the version lives in
//! `PRAGMA user_version`) and the tables each version must hold.

use super::*;

/// Ordered schema migrations: entry `i` takes `user_version` from `i` to `i + 1`.
/// Append only; never edit a released entry.
pub(super) const MIGRATIONS: &[&str] = &[
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

/// Runs the pending migrations of `migrations` in one IMMEDIATE transaction,
/// re-reading the version inside it so that two processes opening a fresh
/// store at once migrate it once.
pub(super) fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &[&str],
) -> Result<u32, StoreError> {
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
        refuse_foreign(&tx, path)?;
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

pub(super) fn user_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| StoreError::sql(path, "reading the schema version", e))?;
    u32::try_from(v).map_err(|_| StoreError::Damaged {
        path: path.to_path_buf(),
        reason: format!("schema version {v} is not a version"),
    })
}

/// A file at schema version 0 must be empty: our schema is never written
/// into someone else's database.
pub(super) fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let foreign: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| StoreError::sql(path, "reading the schema", e))?;
    match foreign {
        Some(name) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            reason: format!(
                "schema version 0 but the file holds `{name}`: not a mesh-bridge store"
            ),
        }),
        None => Ok(()),
    }
}

pub(super) fn require_tables(conn: &Connection, path: &Path) -> Result<(), StoreError> {
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
