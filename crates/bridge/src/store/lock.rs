//! The state directory's lock: one daemon per directory, and no import or
//! fault behind a running daemon's back.

use super::*;

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
