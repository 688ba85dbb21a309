//! Moving a damaged store aside, with its `-wal` and `-shm`: nothing is
//! ever deleted.

use super::*;

impl Store {
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
pub(super) fn utc_stamp(now: SystemTime) -> String {
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
