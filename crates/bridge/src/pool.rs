//! The port pool: which service holds which host port.
//!
//! Pure and synchronous: no I/O and no clock. Every call that depends on time
//! takes `now` (milliseconds since the Unix epoch, see [`Millis`]) so tests
//! control time and the store can persist deadlines as plain integers.
//!
//! A port of the configured ranges is in exactly one state ([`PortState`]):
//! free, reserved by a service, quarantined for a service until a deadline
//! (released, waiting out `grace` so the service can get it back), or
//! conflicted until a deadline (another process held it when we tried to bind).
//!
//! Allocation is next-fit over a bitmap with wrap-around: a cursor remembers
//! where the last allocation ended and the scan wraps to the start of the
//! ranges, so a port freed anywhere is found again. The seed system's bug (a
//! counter that only grows until the range is "exhausted" with most ports
//! free) cannot happen by construction: [`Pool::reserve`] fails only when no
//! port of any range is free.
//!
//! Each service known to the pool has one record (the port it holds, its
//! quarantine deadline, its last port), found by a single hash lookup of its
//! name; a port's 4-byte slot names the record by index. The last-port
//! history is bounded (see `remember`), so records of departed services are
//! dropped and reused.
//!
//! Submodules: `ranges` parses and validates the configured port ranges;
//! `services` holds the records, their interned names and the name index;
//! `slot` the packed per-port slot; `error` the refusals; `restore` the
//! store's holdings put back and ranges replaced on a reload.

use crate::contract::metric::outcome;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Milliseconds since the Unix epoch. The pool never reads a clock itself.
pub type Millis = u64;

mod error;
mod ranges;
mod restore;
mod services;
mod slot;

pub use error::PoolError;
pub use ranges::{PortRange, PortRanges, RangeError};
pub use restore::RestoreState;
use services::{Held, Service, Services};
use slot::{Slot, SlotState};

/// The state of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// Nobody holds it.
    Free,
    /// Held by a service.
    Reserved(Arc<str>),
    /// Released by a service; kept for it until the deadline.
    Quarantined(Arc<str>, Millis),
    /// Another process held it; not handed out until the deadline.
    Conflicted(Millis),
}

/// How a reservation was satisfied (the `outcome` label of `port_allocations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A port the service never had (or whose last port was taken).
    New,
    /// The service got its previous port back (from quarantine or its last port).
    Sticky,
    /// Loaded from the durable store at start.
    Restored,
}

impl Outcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::New => outcome::NEW,
            Outcome::Sticky => outcome::STICKY,
            Outcome::Restored => outcome::RESTORED,
        }
    }
}

/// Result of a successful [`Pool::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A port was assigned now.
    Assigned {
        /// The port.
        port: u16,
        /// New or sticky.
        outcome: Outcome,
    },
    /// The service already held this port: nothing changed (a duplicate attempt).
    AlreadyHeld(u16),
}

impl Reservation {
    /// The port the service holds after the call.
    pub fn port(&self) -> u16 {
        match *self {
            Reservation::Assigned { port, .. } | Reservation::AlreadyHeld(port) => port,
        }
    }
}

/// Counts of ports by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PoolCounts {
    /// Total ports in the ranges.
    pub capacity: usize,
    /// Reserved.
    pub in_use: usize,
    /// Quarantined.
    pub quarantined: usize,
    /// Conflicted.
    pub conflicted: usize,
    /// Free.
    pub free: usize,
}

/// A port that changed from quarantined or conflicted back to free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The port now free.
    pub port: u16,
    /// The service whose quarantine ended (None for a conflict that expired).
    pub service: Option<Arc<str>>,
}

/// The port pool. See the module documentation.
#[derive(Debug, Clone)]
pub struct Pool {
    ranges: PortRanges,
    /// Offset at which each range starts in the flat index space.
    starts: Vec<usize>,
    capacity: usize,
    /// Bit set = port not free.
    bits: Vec<u64>,
    slots: Vec<Slot>,
    cursor: usize,
    /// Service records, by name and by index (from the slots).
    services: Services,
    /// Number of records with a last port (the bounded history).
    last_len: usize,
    /// History entries the last prune kept.
    history_kept: usize,
    /// Deadline of each conflicted port.
    conflicts: HashMap<u16, Millis>,
    /// Deadlines: (until, port). Quarantine and conflicts; stale entries are skipped.
    deadlines: BTreeMap<(Millis, u16), ()>,
    grace_ms: Millis,
    counts: PoolCounts,
}

impl Pool {
    /// An empty pool over `ranges`; a released port stays quarantined for `grace_ms`.
    pub fn new(ranges: PortRanges, grace_ms: Millis) -> Self {
        let capacity = ranges.capacity();
        let mut starts = Vec::with_capacity(ranges.ranges().len());
        let mut acc = 0;
        for r in ranges.ranges() {
            starts.push(acc);
            acc += r.len();
        }
        let words = capacity.div_ceil(64);
        let mut bits = vec![0u64; words];
        // Bits past capacity in the last word are permanently set so scans skip them.
        let tail = capacity % 64;
        if tail != 0 {
            bits[words - 1] = !0u64 << tail;
        }
        Self {
            ranges,
            starts,
            capacity,
            bits,
            slots: vec![Slot::FREE; capacity],
            cursor: 0,
            services: Services::default(),
            last_len: 0,
            history_kept: 0,
            conflicts: HashMap::new(),
            deadlines: BTreeMap::new(),
            grace_ms,
            counts: PoolCounts {
                capacity,
                free: capacity,
                ..PoolCounts::default()
            },
        }
    }

    /// The configured ranges.
    pub fn ranges(&self) -> &PortRanges {
        &self.ranges
    }

    /// The quarantine length in milliseconds.
    pub fn grace_ms(&self) -> Millis {
        self.grace_ms
    }

    /// Counts of ports by state.
    pub fn counts(&self) -> PoolCounts {
        self.counts
    }

    /// [`Self::offset_of`], or the error naming the ranges.
    fn offset_in_ranges(&self, port: u16) -> Result<usize, PoolError> {
        self.offset_of(port)
            .ok_or_else(|| PoolError::OutsideRanges {
                port,
                ranges: self.ranges.to_string(),
            })
    }

    fn offset_of(&self, port: u16) -> Option<usize> {
        self.ranges
            .ranges()
            .iter()
            .zip(&self.starts)
            .find(|(r, _)| r.contains(port))
            .map(|(r, s)| s + usize::from(port - r.start))
    }

    fn port_at(&self, off: usize) -> u16 {
        // Ranges are few; a linear scan is faster than a binary search here.
        let mut i = self.starts.len() - 1;
        while self.starts[i] > off {
            i -= 1;
        }
        self.ranges.ranges()[i].start + (off - self.starts[i]) as u16
    }

    fn set_slot(&mut self, off: usize, slot: Slot) {
        let c = &mut self.counts;
        match self.slots[off].get() {
            SlotState::Free => c.free -= 1,
            SlotState::Reserved(_) => c.in_use -= 1,
            SlotState::Quarantined(_) => c.quarantined -= 1,
            SlotState::Conflicted => c.conflicted -= 1,
        }
        match slot.get() {
            SlotState::Free => c.free += 1,
            SlotState::Reserved(_) => c.in_use += 1,
            SlotState::Quarantined(_) => c.quarantined += 1,
            SlotState::Conflicted => c.conflicted += 1,
        }
        let (w, b) = (off / 64, off % 64);
        if slot == Slot::FREE {
            self.bits[w] &= !(1u64 << b);
        } else {
            self.bits[w] |= 1u64 << b;
        }
        self.slots[off] = slot;
    }

    /// The state of the port at `off`.
    fn state_at(&self, off: usize) -> PortState {
        match self.slots[off].get() {
            SlotState::Free => PortState::Free,
            SlotState::Reserved(i) => PortState::Reserved(self.name_of(i)),
            SlotState::Quarantined(i) => {
                PortState::Quarantined(self.name_of(i), self.record(i).until)
            }
            SlotState::Conflicted => {
                let port = self.port_at(off);
                PortState::Conflicted(self.conflicts.get(&port).copied().unwrap_or(0))
            }
        }
    }

    /// The state of `port` (Free also for ports outside the ranges: check with
    /// [`PortRanges::contains`] first when it matters).
    pub fn state(&self, port: u16) -> PortState {
        match self.offset_of(port) {
            None => PortState::Free,
            Some(off) => self.state_at(off),
        }
    }

    fn record(&self, i: u32) -> &Service {
        &self.services.recs[i as usize]
    }

    /// The record, for a change: every change of a holding goes through
    /// here, which lists the record for [`Pool::take_changed`].
    fn record_mut(&mut self, i: u32) -> &mut Service {
        let s = &mut self.services;
        let rec = &mut s.recs[i as usize];
        if s.track && !rec.changed {
            rec.changed = true;
            s.changed.push(i);
        }
        rec
    }

    /// The name of record `i`, as the public API hands it out.
    fn name_of(&self, i: u32) -> Arc<str> {
        Arc::from(self.services.name(i))
    }

    /// The record of `service`, if it has one.
    fn lookup(&self, service: &str) -> Option<u32> {
        self.services.find(service, self.services.hash(service))
    }

    /// What `service` holds, if anything.
    fn held(&self, service: &str) -> Option<Held> {
        self.lookup(service).and_then(|i| self.record(i).held)
    }

    /// The record of `service`, created (holding nothing, no history) if needed.
    fn intern(&mut self, service: &str) -> u32 {
        let hash = self.services.hash(service);
        match self.services.find(service, hash) {
            Some(i) => i,
            None => self.services.insert(service, hash),
        }
    }

    /// Frees the record if it holds nothing and has no history.
    fn release_record_if_unused(&mut self, i: u32) {
        let rec = self.record(i);
        if rec.held.is_none() && rec.last.is_none() {
            self.services.remove(i);
        }
    }

    /// The port a service holds as reserved, if any.
    pub fn port_of(&self, service: &str) -> Option<u16> {
        match self.held(service) {
            Some(Held::Reserved(p)) => Some(p),
            _ => None,
        }
    }

    /// The port held in quarantine for a service, if any.
    pub fn quarantined_port_of(&self, service: &str) -> Option<u16> {
        match self.held(service) {
            Some(Held::Quarantined(p)) => Some(p),
            _ => None,
        }
    }

    /// The last port a service held, if known (for sticky reuse after grace).
    pub fn last_port_of(&self, service: &str) -> Option<u16> {
        self.lookup(service).and_then(|i| self.record(i).last)
    }

    /// All last-port history, for persistence.
    pub fn last_ports(&self) -> impl Iterator<Item = (&str, u16)> {
        self.services
            .iter()
            .filter_map(|(s, rec)| rec.last.map(|p| (s, p)))
    }

    /// Every port that is not free, with its state, in port order.
    pub fn entries(&self) -> Vec<(u16, PortState)> {
        let mut out = Vec::with_capacity(self.capacity - self.counts.free);
        for (off, slot) in self.slots.iter().enumerate() {
            if *slot != Slot::FREE {
                out.push((self.port_at(off), self.state_at(off)));
            }
        }
        out
    }

    /// Ends every quarantine and conflict whose deadline is `<= now`; returns the
    /// ports that became free.
    pub fn expire(&mut self, now: Millis) -> Vec<Expired> {
        let mut out = Vec::new();
        while let Some((&(until, port), ())) = self.deadlines.first_key_value() {
            if until > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(off) = self.offset_of(port) else {
                continue;
            };
            match self.slots[off].get() {
                SlotState::Quarantined(i) if self.record(i).until == until => {
                    self.set_slot(off, Slot::FREE);
                    self.record_mut(i).held = None;
                    let s = self.name_of(i);
                    self.remember(i, port);
                    out.push(Expired {
                        port,
                        service: Some(s),
                    });
                }
                SlotState::Conflicted if self.conflicts.get(&port) == Some(&until) => {
                    self.conflicts.remove(&port);
                    self.set_slot(off, Slot::FREE);
                    out.push(Expired {
                        port,
                        service: None,
                    });
                }
                _ => {} // stale deadline: the slot changed since
            }
        }
        out
    }

    /// The earliest pending deadline (quarantine or conflict), if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.keys().next().map(|(u, _)| *u)
    }

    /// Finds the next free offset at or after the cursor, wrapping around.
    fn next_free(&self) -> Option<usize> {
        if self.counts.free == 0 {
            return None;
        }
        let words = self.bits.len();
        let (w0, b0) = (self.cursor / 64, self.cursor % 64);
        // First word: only bits at or above the cursor.
        let masked = !self.bits[w0] & (!0u64 << b0);
        if masked != 0 {
            return Some(w0 * 64 + masked.trailing_zeros() as usize);
        }
        for i in 1..=words {
            let w = (w0 + i) % words;
            let free = !self.bits[w];
            if free != 0 {
                return Some(w * 64 + free.trailing_zeros() as usize);
            }
        }
        None
    }

    fn exhausted(&self) -> PoolError {
        PoolError::Exhausted {
            ranges: self.ranges.to_string(),
            counts: self.counts,
        }
    }

    /// Reserves a port for `service` at time `now`.
    ///
    /// Order: a port the service already holds is returned unchanged
    /// ([`Reservation::AlreadyHeld`]); a port quarantined for it comes back
    /// (sticky); its last port is tried if free (sticky); otherwise the next
    /// free port after the cursor (new). Expired quarantines are ended first.
    pub fn reserve(&mut self, service: &str, now: Millis) -> Result<Reservation, PoolError> {
        if self.next_deadline().is_some_and(|d| d <= now) {
            self.expire(now);
        }
        let hash = self.services.hash(service);
        let found = self.services.find(service, hash);
        if let Some(i) = found {
            let rec = self.record(i);
            let sticky = match rec.held {
                Some(Held::Reserved(p)) => return Ok(Reservation::AlreadyHeld(p)),
                Some(Held::Quarantined(p)) => Some(p),
                None => rec.last.filter(|&p| {
                    self.offset_of(p)
                        .is_some_and(|off| self.slots[off] == Slot::FREE)
                }),
            };
            if let Some(p) = sticky {
                let off = self.offset_of(p).expect("held ports lie in the ranges");
                self.set_slot(off, Slot::reserved(i));
                self.record_mut(i).held = Some(Held::Reserved(p));
                return Ok(Reservation::Assigned {
                    port: p,
                    outcome: Outcome::Sticky,
                });
            }
        }
        let off = self.next_free().ok_or_else(|| self.exhausted())?;
        let i = match found {
            Some(i) => i,
            None => self.services.insert(service, hash),
        };
        self.set_slot(off, Slot::reserved(i));
        self.cursor = (off + 1) % self.capacity;
        let port = self.port_at(off);
        self.record_mut(i).held = Some(Held::Reserved(port));
        self.remember(i, port);
        Ok(Reservation::Assigned {
            port,
            outcome: Outcome::New,
        })
    }

    /// Reserves a specific `port` for `service` (API reservations that name a
    /// port). Fails if the port is outside the ranges or not free for it.
    pub fn reserve_port(
        &mut self,
        service: &str,
        port: u16,
        now: Millis,
    ) -> Result<Reservation, PoolError> {
        if self.next_deadline().is_some_and(|d| d <= now) {
            self.expire(now);
        }
        let off = self.offset_in_ranges(port)?;
        let held = self.held(service);
        match held {
            Some(Held::Reserved(p)) if p == port => return Ok(Reservation::AlreadyHeld(p)),
            Some(Held::Reserved(held)) => {
                return Err(PoolError::ServiceHoldsOther {
                    service: service.to_string(),
                    held,
                    port,
                });
            }
            Some(Held::Quarantined(p)) if p == port => return self.reserve(service, now),
            Some(Held::Quarantined(_)) | None => {}
        }
        if self.slots[off] != Slot::FREE {
            return Err(PoolError::PortTaken {
                port,
                state: describe(&self.state(port)),
            });
        }
        // Give up a quarantined other port: the caller chose this one.
        if let Some(Held::Quarantined(q)) = held
            && let Some(qoff) = self.offset_of(q)
        {
            self.set_slot(qoff, Slot::FREE);
        }
        let i = self.intern(service);
        self.set_slot(off, Slot::reserved(i));
        let rec = self.record_mut(i);
        rec.held = Some(Held::Reserved(port));
        let sticky = rec.last == Some(port);
        self.remember(i, port);
        Ok(Reservation::Assigned {
            port,
            outcome: if sticky {
                Outcome::Sticky
            } else {
                Outcome::New
            },
        })
    }

    /// Releases the service's port into quarantine until `now + grace`.
    /// Returns the port, or None when the service held nothing (a no-op).
    pub fn release(&mut self, service: &str, now: Millis) -> Option<u16> {
        let i = self.lookup(service)?;
        let Some(Held::Reserved(port)) = self.record(i).held else {
            return None;
        };
        let off = self.offset_of(port).expect("held ports lie in the ranges");
        if self.grace_ms == 0 {
            self.set_slot(off, Slot::FREE);
            self.record_mut(i).held = None;
        } else {
            let until = now.saturating_add(self.grace_ms);
            self.set_slot(off, Slot::quarantined(i));
            let rec = self.record_mut(i);
            rec.held = Some(Held::Quarantined(port));
            rec.until = until;
            self.deadlines.insert((until, port), ());
        }
        self.remember(i, port);
        Some(port)
    }

    /// Drops a service's quarantined port at once (an operator's DELETE of a
    /// quarantined reservation). Returns the port freed.
    pub fn forget(&mut self, service: &str) -> Option<u16> {
        let i = self.lookup(service)?;
        let port = match self.record(i).held? {
            Held::Reserved(p) | Held::Quarantined(p) => p,
        };
        let off = self.offset_of(port).expect("held ports lie in the ranges");
        self.set_slot(off, Slot::FREE);
        self.record_mut(i).held = None;
        self.release_record_if_unused(i);
        Some(port)
    }

    /// Marks `port` conflicted (another process holds it) until `until`.
    /// Returns the service that lost it, if one held it (reserved or
    /// quarantined); that service should be reserved again. Ports outside the
    /// ranges are ignored (None).
    pub fn mark_conflicted(&mut self, port: u16, until: Millis) -> Option<Arc<str>> {
        let off = self.offset_of(port)?;
        let lost = match self.slots[off].get() {
            SlotState::Reserved(i) | SlotState::Quarantined(i) => Some(i),
            SlotState::Free | SlotState::Conflicted => None,
        };
        self.set_slot(off, Slot::CONFLICTED);
        self.conflicts.insert(port, until);
        self.deadlines.insert((until, port), ());
        let i = lost?;
        let name = self.name_of(i);
        let rec = self.record_mut(i);
        rec.held = None;
        // Do not try this port first next time: it is held by someone else.
        if rec.last == Some(port) {
            rec.last = None;
            self.last_len -= 1;
        }
        self.release_record_if_unused(i);
        Some(name)
    }

    /// Records a service's last port. The history is bounded: past
    /// `2 * capacity + 1024` entries, the history of services that hold
    /// nothing is dropped (amortised O(1); sticky-after-grace is best effort).
    fn remember(&mut self, i: u32, port: u16) {
        let rec = self.record_mut(i);
        if rec.last.replace(port).is_none() {
            self.last_len += 1;
        }
        // Past twice what the last prune kept, too: changed records wait for
        // the take, and a prune that frees little must not run on every call.
        if self.last_len > (2 * self.capacity + 1024).max(2 * self.history_kept) {
            self.forget_history_of_idle();
        }
    }

    /// Drops the history (and so the records) of services that hold nothing.
    #[cold]
    #[inline(never)]
    fn forget_history_of_idle(&mut self) {
        let mut kept = 0;
        self.services.retain(|rec| {
            // A changed record stays until the take, so the take still knows
            // its name (no copy of thousands of names in a prune).
            let keep = rec.held.is_some() || rec.changed;
            kept += usize::from(keep && rec.last.is_some());
            keep
        });
        self.last_len = kept;
        self.history_kept = kept;
    }

    /// Every service holding a port: (service, port, None) when reserved,
    /// (service, port, Some(until)) when quarantined. For persistence.
    pub fn holdings(&self) -> impl Iterator<Item = (&str, u16, Option<Millis>)> {
        self.services
            .iter()
            .filter_map(|(s, rec)| rec.holding().map(|(p, until)| (s, p, until)))
    }

    /// What `service` holds: (port, None) reserved, (port, Some(until))
    /// quarantined, None when nothing.
    pub fn holding_of(&self, service: &str) -> Option<(u16, Option<Millis>)> {
        self.record(self.lookup(service)?).holding()
    }

    /// Starts listing the services whose holding changes, for
    /// [`Pool::take_changed`]. Off by default: a pool nobody takes from must
    /// not grow a list (the daemon turns it on; so does the P1 bench).
    pub fn track_changes(&mut self) {
        self.services.track = true;
    }

    /// Calls `f(service, holding now)` for each service whose holding may have
    /// changed since the last call (holding as [`Pool::holding_of`] gives it),
    /// each name once. Lets a writer persist what changed without walking
    /// every holding, and without copying a name.
    pub fn take_changed(&mut self, mut f: impl FnMut(&str, Option<(u16, Option<Millis>)>)) {
        let mut freed = std::mem::take(&mut self.services.changed_freed);
        // A name freed, taken again and freed again before this take is
        // listed once per free: report it once.
        freed.sort_unstable();
        freed.dedup();
        for name in freed {
            match self.lookup(&name) {
                // Taken again under a record of its own: reported below.
                Some(i) if self.record(i).changed => {}
                _ => f(&name, self.holding_of(&name)),
            }
        }
        let s = &mut self.services;
        for i in std::mem::take(&mut s.changed) {
            let rec = &mut s.recs[i as usize];
            if rec.changed {
                rec.changed = false;
                let holding = rec.holding();
                let at = rec.name_at as usize;
                f(&s.arena[at..at + rec.name_len as usize], holding);
            }
        }
    }

    /// Services holding a reserved port, with it.
    pub fn reserved(&self) -> impl Iterator<Item = (&str, u16)> {
        self.services.iter().filter_map(|(s, rec)| match rec.held {
            Some(Held::Reserved(p)) => Some((s, p)),
            _ => None,
        })
    }
}

/// A port's state in words, for refusals.
fn describe(st: &PortState) -> String {
    match st {
        PortState::Free => "free".into(),
        PortState::Reserved(s) => format!("reserved by `{s}`"),
        PortState::Quarantined(s, u) => format!("quarantined for `{s}` until {u} ms"),
        PortState::Conflicted(u) => format!("held by another process (conflicted until {u} ms)"),
    }
}

#[cfg(test)]
mod tests;
