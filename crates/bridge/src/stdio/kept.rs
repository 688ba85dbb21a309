//! What a bridge keeps in its state directory about the stdio servers it
//! serves, so that a bridge killed with -9 goes on where it stopped:
//!
//! - `stdio-secret`: 32 random bytes (hex), mode 0600, made once; it signs the
//!   session tokens ([`super::hub`]), so a restarted bridge recognises the
//!   sessions it issued before;
//! - `stdio-processes.json`: each process's `initialize` parameters and result and
//!   the process key (JSON), so a process that still runs is not
//!   initialised a second time (most stdio servers refuse that).
//!
//! Both are written whole to a temporary file, synced and renamed, so a
//! kill leaves the old or the new file, never half of one. A file that
//! cannot be read is renamed `NAME.damaged-<unix seconds>` (nothing is
//! deleted) and the bridge starts without it: the running processes are
//! then initialised again on their first session.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::hub::Kept;

use crate::contract::files::{STDIO_PROCESSES as PROCESSES, STDIO_SECRET as SECRET};

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Renames a file that cannot be read aside and says so.
fn move_aside(path: &Path, why: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut target = path.as_os_str().to_owned();
    target.push(format!("{}{stamp}", crate::contract::files::DAMAGED_INFIX));
    let target = PathBuf::from(target);
    match std::fs::rename(path, &target) {
        Ok(()) => {
            warn!(file = %path.display(), moved_to = %target.display(), reason = why, "stdio state file unreadable; moved aside, starting without it")
        }
        Err(e) => {
            warn!(file = %path.display(), reason = why, error = %e, "stdio state file unreadable and could not be moved aside; starting without it")
        }
    }
    target
}

fn parse_secret(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The secret in `dir`, made (and written) when there is none or it is
/// unreadable.
pub fn secret(dir: &Path) -> io::Result<[u8; 32]> {
    let path = dir.join(SECRET);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Some(s) = parse_secret(&text) {
                return Ok(s);
            }
            move_aside(&path, "not 64 hex digits");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let s: [u8; 32] = rand::random();
    let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(&path, format!("{hex}\n").as_bytes())?;
    Ok(s)
}

/// The processes kept in `dir` (none when there is no file; an unreadable
/// one is moved aside).
pub fn load(dir: &Path) -> Kept {
    let path = dir.join(PROCESSES);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Kept>(&bytes) {
            Ok(k) => k,
            Err(e) => {
                move_aside(&path, &e.to_string());
                Kept::new()
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Kept::new(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "stdio state file unreadable; starting without it");
            Kept::new()
        }
    }
}

/// Writes the kept processes to `dir`.
pub fn save(dir: &Path, kept: &Kept) -> io::Result<()> {
    let bytes = serde_json::to_vec(kept).map_err(io::Error::other)?;
    write_atomic(&dir.join(PROCESSES), &bytes)
}

/// How often the stdio processes' records are compared with the file.
pub const KEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Writes the stdio processes' records to the state directory when they
/// change (a new process initialised, a container gone), until shutdown,
/// and once more then. `written` is what the file holds now.
pub async fn keep(
    hub: std::sync::Arc<super::hub::Hub>,
    dir: std::path::PathBuf,
    mut written: Kept,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut failing = false;
    loop {
        let stop = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(KEEP_EVERY) => false,
        };
        let now = hub.kept();
        if now != written {
            match save(&dir, &now) {
                Ok(()) => {
                    if failing {
                        tracing::info!("stdio: records written again");
                        failing = false;
                    }
                    written = now;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "stdio: cannot write the processes' records; a bridge restart would initialise them again");
                        failing = true;
                    }
                }
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mux::InitRecord;
    use super::super::process::Durable;
    use super::*;

    #[test]
    fn the_secret_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = secret(dir.path()).unwrap();
        assert_eq!(secret(dir.path()).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only the owner reads it");
        }
    }

    #[test]
    fn a_damaged_file_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET), "short").unwrap();
        std::fs::write(dir.path().join(PROCESSES), "{not json").unwrap();
        let s = secret(dir.path()).unwrap();
        assert_eq!(secret(dir.path()).unwrap(), s, "a new secret is kept");
        assert!(load(dir.path()).is_empty());
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(crate::contract::files::DAMAGED_INFIX))
            .collect();
        assert_eq!(aside.len(), 2, "{aside:?}");
    }

    #[test]
    fn kept_processes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        let mut k = Kept::new();
        k.insert(
            "0123456789ab".into(),
            Durable {
                record: InitRecord {
                    params: serde_json::json!({"protocolVersion": "2025-06-18"}),
                    result: Some(serde_json::json!({"serverInfo": {"name": "x"}})),
                },
                key: Some("2026-12-06T20:00:00Z".into()),
            },
        );
        save(dir.path(), &k).unwrap();
        assert_eq!(load(dir.path()), k);
    }
}
