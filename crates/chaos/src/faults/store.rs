//! Damage to the bridge's store: the one meaning of `store-corrupt` and
//! `store-truncate`, for the CLI and the scenario runner alike.
//!
//! - `store-corrupt`: XOR [`CORRUPTION_RUNS`] runs of [`CORRUPTION_RUN`]
//!   bytes at seeded offsets; the first run always covers the file's start
//!   (SQLite's header), so the damage is seen when the store is opened. The
//!   WAL and shared-memory files are left as they are: a disk that corrupts
//!   one file does not delete its neighbours.
//! - `store-truncate`: cut the file to [`truncated_len`] bytes, inside its
//!   first page (a torn write of the header page); the WAL is left.
//!
//! Both take the bridge's lock for their duration, so they refuse while a
//! bridge runs and no bridge starts meanwhile; a dry run only reads (the
//! store's length, the lock).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mesh_bridge::contract::files;
use rand::{Rng, SeedableRng};

/// Length of each run of bytes [`corruption_patches`] changes.
pub const CORRUPTION_RUN: u64 = 64;
/// How many runs [`corruption_patches`] changes.
pub const CORRUPTION_RUNS: usize = 8;
/// Most bytes `store-truncate` keeps: less than SQLite's smallest page, so
/// the schema page is always cut.
pub const TRUNCATE_KEEP_MAX: u64 = 700;

/// What a store fault does to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDamage {
    /// Seeded XOR runs, the first over the header.
    Corrupt {
        /// Seed of the offsets and masks.
        seed: u64,
    },
    /// Cut inside the first page.
    Truncate,
}

/// Where `store-corrupt` damages a store of `len` bytes: up to
/// [`CORRUPTION_RUNS`] `(offset, masks)` runs, the first at offset 0, the
/// others at offsets drawn from `seed`, sorted and never overlapping. Each
/// byte at `offset + i` is XORed with `masks[i]`, which is never zero, so
/// every byte covered changes. The same `len` and `seed` give the same runs.
pub fn corruption_patches(len: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    if len == 0 {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run = CORRUPTION_RUN.min(len);
    // Slots of `run` bytes; distinct slots never overlap.
    let slots = len / run;
    let want = (CORRUPTION_RUNS as u64).min(slots) as usize;
    let mut starts: Vec<u64> = vec![0];
    while starts.len() < want {
        let s = rng.random_range(0..slots) * run;
        if !starts.contains(&s) {
            starts.push(s);
        }
    }
    starts.sort_unstable();
    starts
        .into_iter()
        .map(|off| {
            let masks = (0..run).map(|_| rng.random_range(1..=255u8)).collect();
            (off, masks)
        })
        .collect()
}

/// Bytes `store-truncate` keeps of a store of `len` bytes: half, at most
/// [`TRUNCATE_KEEP_MAX`].
pub fn truncated_len(len: u64) -> u64 {
    (len / 2).min(TRUNCATE_KEEP_MAX)
}

/// The state directory checked and locked for damage.
#[derive(Debug)]
pub struct Locked {
    /// The lock (None when the directory has no lock file: no bridge ever
    /// ran there, or an old one).
    _lock: Option<File>,
    /// The store's path.
    pub store: PathBuf,
    /// Whether a lock file existed (and was free).
    pub lock_existed: bool,
}

/// Checks the state directory and takes the bridge's lock (held while the
/// store is damaged, so a bridge cannot start meanwhile). Refuses while a
/// bridge holds it, saying how to stop it.
pub fn lock_state_dir(dir: &Path) -> Result<Locked> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_string()
        } else {
            format!("cannot be read ({e})")
        };
        anyhow::anyhow!(
            "state dir {} {what}; pass the bridge's --state-dir \
             (the host path of its state volume)",
            dir.display()
        )
    })?;
    ensure!(
        meta.is_dir(),
        "state dir {} is not a directory; pass the bridge's --state-dir",
        dir.display()
    );
    let store = dir.join(files::STORE);
    ensure!(
        store.is_file(),
        "no store at {}; is {} the bridge's state directory?",
        store.display(),
        dir.display()
    );
    let lock_path = dir.join(files::LOCK);
    let lock = match OpenOptions::new().write(true).open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Locked {
                _lock: None,
                store,
                lock_existed: false,
            });
        }
        Err(e) => bail!(
            "cannot open {} ({e}); run as a user who may write the state directory",
            lock_path.display()
        ),
    };
    match lock.try_lock() {
        Ok(()) => Ok(Locked {
            _lock: Some(lock),
            store,
            lock_existed: true,
        }),
        Err(TryLockError::WouldBlock) => bail!(
            "the bridge is running: {} is locked by a live process; stop the bridge first \
             (docker stop NAME, or mesh-chaos bridge-kill --bridge-container NAME --hold 0) \
             and retry",
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => {
            bail!("cannot lock {} ({e})", lock_path.display())
        }
    }
}

/// What [`damage`] tells its caller, line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Something it found (true in a dry run too).
    Found(String),
    /// Something it does (or, in a dry run, would do).
    Does(String),
}

/// Damages the store in `dir` (the bridge must be down). Every finding and
/// step is passed to `say` ("overwrite 64 bytes at offset 0 of ..."); steps
/// are performed unless `dry`.
pub fn damage(dir: &Path, how: StoreDamage, dry: bool, say: &mut dyn FnMut(Said)) -> Result<()> {
    let locked = lock_state_dir(dir)?;
    say(Said::Found(
        if locked.lock_existed {
            "bridge.lock is free: the bridge is down"
        } else {
            "no bridge.lock: the bridge is down"
        }
        .into(),
    ));
    let store = &locked.store;
    let mut f = OpenOptions::new()
        .read(true)
        .write(!dry)
        .open(store)
        .with_context(|| format!("opening {}", store.display()))?;
    let len = f.metadata()?.len();
    ensure!(
        len > 0,
        "{} is empty: nothing to damage (start the bridge once to create it)",
        store.display()
    );
    match how {
        StoreDamage::Corrupt { seed } => {
            for (off, masks) in corruption_patches(len, seed) {
                say(Said::Does(format!(
                    "overwrite {} bytes at offset {off} of {} ({len} bytes)",
                    masks.len(),
                    store.display()
                )));
                if dry {
                    continue;
                }
                let mut buf = vec![0u8; masks.len()];
                f.seek(SeekFrom::Start(off))?;
                f.read_exact(&mut buf)?;
                for (b, m) in buf.iter_mut().zip(&masks) {
                    *b ^= m;
                }
                f.seek(SeekFrom::Start(off))?;
                f.write_all(&buf)?;
            }
        }
        StoreDamage::Truncate => {
            let keep = truncated_len(len);
            say(Said::Does(format!(
                "truncate {} from {len} to {keep} bytes",
                store.display()
            )));
            if !dry {
                f.set_len(keep)
                    .with_context(|| format!("truncating {}", store.display()))?;
            }
        }
    }
    if !dry {
        f.sync_all()
            .with_context(|| format!("syncing {}", store.display()))?;
    }
    let wal = dir.join(files::wal());
    if let Ok(m) = std::fs::metadata(&wal)
        && m.len() > 0
    {
        say(Said::Found(format!(
            "{} ({} bytes) is left as it is",
            wal.display(),
            m.len()
        )));
    }
    Ok(())
}

/// Files of `dir` that are stores moved aside by the bridge.
pub fn damaged_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| files::is_damaged(n))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_is_seeded_covers_the_header_and_changes_every_byte_it_covers() {
        let a = corruption_patches(100_000, 7);
        assert_eq!(a, corruption_patches(100_000, 7));
        assert_ne!(a, corruption_patches(100_000, 8));
        assert_eq!(a.len(), CORRUPTION_RUNS);
        assert_eq!(a[0].0, 0, "the first run covers the header");
        for w in a.windows(2) {
            assert!(w[0].0 + CORRUPTION_RUN <= w[1].0, "runs overlap: {a:?}");
        }
        for (off, masks) in &a {
            assert!(off + masks.len() as u64 <= 100_000);
            assert!(masks.iter().all(|m| *m != 0));
        }
        // Small stores: one run covering what there is; empty: nothing.
        let small = corruption_patches(10, 1);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].0, 0);
        assert_eq!(small[0].1.len(), 10);
        assert!(corruption_patches(0, 1).is_empty());
        assert_eq!(corruption_patches(200, 3).len(), 3);
    }

    #[test]
    fn truncation_cuts_inside_the_first_page() {
        assert_eq!(truncated_len(20_000), TRUNCATE_KEEP_MAX);
        assert_eq!(truncated_len(1_000), 500);
        assert_eq!(truncated_len(1), 0);
    }

    fn store_dir(bytes: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(files::STORE), bytes).expect("store");
        std::fs::write(dir.path().join(files::LOCK), b"").expect("lock");
        dir
    }

    #[test]
    fn damage_does_what_its_dry_run_says_and_a_dry_run_nothing() {
        let orig: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let dir = store_dir(&orig);
        let mut dry = Vec::new();
        damage(
            dir.path(),
            StoreDamage::Corrupt { seed: 3 },
            true,
            &mut |l| dry.push(l),
        )
        .expect("dry");
        let path = dir.path().join(files::STORE);
        assert_eq!(std::fs::read(&path).expect("read"), orig, "dry run wrote");
        let mut real = Vec::new();
        damage(
            dir.path(),
            StoreDamage::Corrupt { seed: 3 },
            false,
            &mut |l| real.push(l),
        )
        .expect("damage");
        assert_eq!(dry, real, "the dry run names exactly what is done");
        let now = std::fs::read(&path).expect("read");
        let changed = now.iter().zip(&orig).filter(|(a, b)| a != b).count();
        assert_eq!(changed, CORRUPTION_RUNS * CORRUPTION_RUN as usize);
        assert_ne!(now[..16], orig[..16], "the header is damaged");

        damage(dir.path(), StoreDamage::Truncate, false, &mut |_| {}).expect("truncate");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            now[..TRUNCATE_KEEP_MAX as usize]
        );
    }

    #[test]
    fn damage_refuses_while_a_bridge_holds_the_lock_and_changes_nothing() {
        let dir = store_dir(b"SQLite format 3\0 and the rest");
        let lock = File::options()
            .write(true)
            .open(dir.path().join(files::LOCK))
            .expect("open lock");
        lock.try_lock().expect("lock as a running bridge does");
        for dry in [true, false] {
            let e =
                damage(dir.path(), StoreDamage::Truncate, dry, &mut |_| {}).expect_err("refused");
            assert!(format!("{e:#}").contains("stop the bridge first"), "{e:#}");
        }
        assert_eq!(
            std::fs::read(dir.path().join(files::STORE)).expect("read"),
            b"SQLite format 3\0 and the rest"
        );
    }
}
