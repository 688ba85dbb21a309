//! Why the store refused or failed: [`StoreError`], each variant naming
//! the file and what to do.

use super::*;

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

pub(super) fn more(n: usize, shown: usize) -> String {
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
    pub(super) fn sql(path: &Path, action: &'static str, source: rusqlite::Error) -> Self {
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
