//! The API's bearer token file: read with its checks (length, not readable
//! by every user), written the way the checks want (mode 0600), and the
//! constant-time comparison of a request's token with it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Shortest token accepted.
pub const MIN_LEN: usize = 16;

/// Whether `given` is `expected`, in time that depends on neither: both
/// are hashed to SHA-256 (so their lengths do not show either) and the
/// digests compared with `subtle`'s constant-time equality. An empty
/// `expected` matches nothing.
pub fn matches(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    bool::from(a.ct_eq(&b)) && !expected.is_empty()
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read --api-token-file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Every user of the machine could read the token.
    #[error(
        "--api-token-file {path} is readable by every user (mode {mode:o}); `chmod 600 {path}` and start again"
    )]
    WorldReadable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is too short to be a secret.
    #[error("--api-token-file {path}: the token must be at least {MIN_LEN} characters")]
    TooShort {
        /// The file.
        path: String,
    },
}

/// The token in `path` (surrounding whitespace dropped), refused when the
/// file is readable by every user or the token is shorter than [`MIN_LEN`].
pub fn read(path: &Path) -> Result<Arc<str>, TokenError> {
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| TokenError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            return Err(TokenError::WorldReadable { path: shown, mode });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let t = text.trim();
    if t.len() < MIN_LEN {
        return Err(TokenError::TooShort { path: shown });
    }
    Ok(Arc::from(t))
}

/// Writes `token` to `path` readable by its owner only (mode 0600), as
/// [`read`] wants it; an existing file is replaced.
pub fn write(path: &Path, token: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_very_token_matches() {
        let t = b"0123456789abcdef";
        assert!(matches(t, t));
        for wrong in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789abcdef0",
            b"1123456789abcdef",
            b"0123456789abcdeF",
            b"0123456789abcdef\0",
        ] {
            assert!(!matches(wrong, t), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(!matches(b"", b""), "an empty token matches nothing");
    }

    #[test]
    fn a_written_token_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "0123456789abcdef-token").unwrap();
        assert_eq!(&*read(&p).unwrap(), "0123456789abcdef-token");
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_token_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "0123456789abcdef-token").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(
            matches!(e, TokenError::WorldReadable { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Group-readable is the operator's choice.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read(&p).is_ok());
    }

    #[test]
    fn short_and_missing_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "short").unwrap();
        assert!(matches!(read(&p), Err(TokenError::TooShort { .. })));
        assert!(matches!(
            read(&dir.path().join("absent")),
            Err(TokenError::Unreadable { .. })
        ));
    }
}
