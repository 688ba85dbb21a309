//! The files of a bridge's state directory (`--state-dir`).

/// The SQLite store.
pub const STORE: &str = "state.db";
/// The lock file one running bridge holds (`flock`), so a second daemon, or
/// a tool that damages or rewrites the store, refuses while one runs.
pub const LOCK: &str = "bridge.lock";
/// The secret that signs stdio session ids (hex, mode 0600).
pub const STDIO_SECRET: &str = "stdio-secret";
/// The stdio processes' kept initialisations (JSON).
pub const STDIO_PROCESSES: &str = "stdio-processes.json";
/// Infix of a store moved aside because it was damaged:
/// `state.db.damaged-<UTC stamp>[-N]`, with its `-wal` and `-shm`.
pub const DAMAGED_INFIX: &str = ".damaged-";

/// The store's write-ahead log beside it.
pub fn wal() -> String {
    format!("{STORE}-wal")
}

/// The store's shared-memory index beside it.
pub fn shm() -> String {
    format!("{STORE}-shm")
}

/// Whether a file name in a state directory is a store moved aside.
pub fn is_damaged(name: &str) -> bool {
    name.starts_with(STORE) && name.contains(DAMAGED_INFIX)
}
