//! The pool's service records: one per service that holds a port or has a
//! last port, found by name through an interned-name hash index, plus the list
//! of records changed since the last take (for persistence).

use std::hash::BuildHasher;

use super::Millis;

/// Where a service's port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Reserved(u16),
    Quarantined(u16),
}

/// Everything the pool knows about one service: the port it holds and its
/// last port. A record exists while the service holds a port or has history;
/// freed records are reused.
#[derive(Debug, Clone)]
pub(super) struct Service {
    /// The name is `arena[name_at..name_at + name_len]` of [`Services`].
    pub(super) name_at: u32,
    pub(super) name_len: u32,
    /// Low 32 bits of the name's hash (its place in the index).
    pub(super) hash: u32,
    /// False while the record is free for reuse.
    pub(super) live: bool,
    pub(super) held: Option<Held>,
    /// Last port held (sticky reuse after grace).
    pub(super) last: Option<u16>,
    /// Quarantine deadline; meaningful while `held` is `Quarantined`.
    pub(super) until: Millis,
    /// Listed in [`Services::changed`] since the last [`Pool::take_changed`].
    pub(super) changed: bool,
}

impl Service {
    /// (port, None) when reserved, (port, Some(until)) when quarantined.
    pub(super) fn holding(&self) -> Option<(u16, Option<Millis>)> {
        match self.held? {
            Held::Reserved(p) => Some((p, None)),
            Held::Quarantined(p) => Some((p, Some(self.until))),
        }
    }
}

/// An empty place of [`Services::index`].
const EMPTY: u64 = u64::MAX;

/// The service records with their names interned: one arena string holds
/// every name, and an open-addressing index (linear probing, at most 3/8
/// full: short probe runs matter more than its 8 bytes a place) maps a name
/// to its record. An operation hashes the name once and, usually, touches one
/// index word and one record; a new service costs no allocation of its own.
///
/// The hash is foldhash, not SipHash: this lookup is most of the cost of an
/// allocation. Names come from container labels and the token-guarded API
/// (validated, at most 63 characters), and foldhash's `RandomState` is seeded
/// per process, so colliding names cannot be precomputed to flood the index.
#[derive(Debug, Clone, Default)]
pub(super) struct Services {
    pub(super) recs: Vec<Service>,
    /// Indices of free records in `recs`.
    vacant: Vec<u32>,
    /// Names of the records, back to back.
    pub(super) arena: String,
    /// Bytes of `arena` that belong to freed records (reclaimed by compaction).
    garbage: usize,
    /// `EMPTY` or `(hash << 32) | record index`; length a power of two.
    index: Vec<u64>,
    /// Live records.
    pub(super) live: usize,
    hasher: foldhash::fast::RandomState,
    /// Whether changes are listed at all ([`Pool::track_changes`]).
    pub(super) track: bool,
    /// Records whose holding may have changed since the last take (each once).
    pub(super) changed: Vec<u32>,
    /// Names of changed records freed before the take (they hold nothing now;
    /// rare: the bulk history prune keeps changed records until the take).
    pub(super) changed_freed: Vec<Box<str>>,
}

impl Services {
    #[inline]
    pub(super) fn hash(&self, name: &str) -> u32 {
        self.hasher.hash_one(name) as u32
    }

    pub(super) fn name(&self, i: u32) -> &str {
        let rec = &self.recs[i as usize];
        let at = rec.name_at as usize;
        &self.arena[at..at + rec.name_len as usize]
    }

    fn mask(&self) -> usize {
        self.index.len().wrapping_sub(1)
    }

    /// Whether record `i` is named `name`.
    fn is_named(&self, i: u32, name: &str) -> bool {
        let rec = &self.recs[i as usize];
        let at = rec.name_at as usize;
        // Bytes, not a str slice: no char-boundary checks on the hot path.
        self.arena.as_bytes().get(at..at + rec.name_len as usize) == Some(name.as_bytes())
    }

    /// The record named `name` (whose hash is `hash`), if any.
    #[inline]
    pub(super) fn find(&self, name: &str, hash: u32) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut pos = hash as usize & mask;
        loop {
            let e = self.index[pos];
            if e == EMPTY {
                return None;
            }
            if (e >> 32) as u32 == hash && self.is_named(e as u32, name) {
                return Some(e as u32);
            }
            pos = (pos + 1) & mask;
        }
    }

    fn place(&mut self, hash: u32, i: u32) {
        let mask = self.mask();
        let mut pos = hash as usize & mask;
        while self.index[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.index[pos] = (u64::from(hash) << 32) | u64::from(i);
    }

    /// Rebuilds the index with `len` places from the live records.
    fn rebuild_index(&mut self, len: usize) {
        self.index.clear();
        self.index.resize(len, EMPTY);
        for i in 0..self.recs.len() {
            if self.recs[i].live {
                self.place(self.recs[i].hash, i as u32);
            }
        }
    }

    /// Adds a record for `name`, which has none (hash `hash`).
    pub(super) fn insert(&mut self, name: &str, hash: u32) -> u32 {
        if 8 * (self.live + 1) > 3 * self.index.len() {
            self.rebuild_index((2 * self.index.len()).max(64));
        }
        let rec = Service {
            name_at: u32::try_from(self.arena.len()).expect("names fit in 4 GiB"),
            name_len: u32::try_from(name.len()).expect("names fit in 4 GiB"),
            hash,
            live: true,
            held: None,
            last: None,
            until: 0,
            changed: false,
        };
        self.arena.push_str(name);
        let i = match self.vacant.pop() {
            Some(i) => {
                self.recs[i as usize] = rec;
                i
            }
            None => {
                let i = u32::try_from(self.recs.len()).expect("service records fit in u32");
                assert!(i < 1 << 30, "at most 2^30 service records");
                self.recs.push(rec);
                i
            }
        };
        self.place(hash, i);
        self.live += 1;
        i
    }

    /// Frees record `i`.
    pub(super) fn remove(&mut self, i: u32) {
        let mask = self.mask();
        let mut hole = self.recs[i as usize].hash as usize & mask;
        while self.index[hole] as u32 != i {
            hole = (hole + 1) & mask;
        }
        // Backward-shift deletion: pull later entries of the probe run into
        // the hole when their ideal place is not after it.
        let mut j = (hole + 1) & mask;
        loop {
            let e = self.index[j];
            if e == EMPTY {
                break;
            }
            let ideal = (e >> 32) as usize & mask;
            if j.wrapping_sub(ideal) & mask >= j.wrapping_sub(hole) & mask {
                self.index[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.index[hole] = EMPTY;
        self.free(i);
        if self.garbage > 4096 && 2 * self.garbage > self.arena.len() {
            self.compact_arena();
        }
    }

    pub(super) fn free(&mut self, i: u32) {
        if self.recs[i as usize].changed {
            // The record may be reused under another name before the take.
            let name = Box::from(self.name(i));
            self.changed_freed.push(name);
        }
        let rec = &mut self.recs[i as usize];
        rec.changed = false;
        rec.live = false;
        rec.held = None;
        rec.last = None;
        self.garbage += rec.name_len as usize;
        self.vacant.push(i);
        self.live -= 1;
    }

    /// Drops the names of freed records from the arena.
    fn compact_arena(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.garbage);
        for rec in self.recs.iter_mut().filter(|r| r.live) {
            let at = rec.name_at as usize;
            let name = &self.arena[at..at + rec.name_len as usize];
            rec.name_at = arena.len() as u32;
            arena.push_str(name);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Frees every record `keep` refuses, then rebuilds index and arena.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Service) -> bool) {
        for i in 0..self.recs.len() {
            if self.recs[i].live && !keep(&self.recs[i]) {
                self.free(i as u32);
            }
        }
        self.rebuild_index(self.index.len());
        self.compact_arena();
    }

    /// Live records with their names.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.recs.iter().filter(|r| r.live).map(|r| {
            let at = r.name_at as usize;
            (&self.arena[at..at + r.name_len as usize], r)
        })
    }
}
