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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Milliseconds since the Unix epoch. The pool never reads a clock itself.
pub type Millis = u64;

/// One inclusive range of ports, `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.end) - usize::from(self.start) + 1
    }

    /// Ranges are never empty once validated; kept for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A validated, sorted, non-overlapping, non-empty set of port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRanges(Vec<PortRange>);

/// Why a set of port ranges was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Nothing was given.
    #[error("no port range given; write at least one range such as 11100-11199")]
    Empty,
    /// A range did not parse.
    #[error(
        "`{0}` is not a port range; write START-END (inclusive) or a single port, e.g. 11100-11199"
    )]
    Syntax(String),
    /// A port outside 1..=65535.
    #[error("`{0}` is outside 1-65535; ports must be between 1 and 65535")]
    OutOfBounds(String),
    /// START greater than END.
    #[error("range {start}-{end} is inverted; write it as {end}-{start}")]
    Inverted {
        /// The given start.
        start: u16,
        /// The given end.
        end: u16,
    },
    /// Two ranges share ports.
    #[error("ranges {0} and {1} overlap; merge them into one range or make them disjoint")]
    Overlap(PortRange, PortRange),
}

impl PortRanges {
    /// Validates ranges: each within 1..=65535, start <= end, none overlapping.
    pub fn new(mut ranges: Vec<PortRange>) -> Result<Self, RangeError> {
        if ranges.is_empty() {
            return Err(RangeError::Empty);
        }
        for r in &ranges {
            if r.start == 0 {
                return Err(RangeError::OutOfBounds(r.to_string()));
            }
            if r.start > r.end {
                return Err(RangeError::Inverted {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[1].start <= w[0].end {
                return Err(RangeError::Overlap(w[0], w[1]));
            }
        }
        Ok(Self(ranges))
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// Total number of ports.
    pub fn capacity(&self) -> usize {
        self.0.iter().map(PortRange::len).sum()
    }

    /// Whether `port` lies in one of the ranges.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// Whether every port of `self` is also in `other`.
    pub fn is_subset_of(&self, other: &PortRanges) -> bool {
        self.0
            .iter()
            .all(|r| other.0.iter().any(|o| o.start <= r.start && r.end <= o.end))
    }

    /// `[[start, end], ...]`, as the HTTP API shows them.
    pub fn as_pairs(&self) -> Vec<[u16; 2]> {
        self.0.iter().map(|r| [r.start, r.end]).collect()
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for PortRanges {
    type Err = RangeError;

    /// Parses `11100-11199[,12000-12049]`; a single port `N` means `N-N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |t: &str| -> Result<u16, RangeError> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RangeError::Syntax(s.trim().to_string()));
            }
            match t.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(RangeError::OutOfBounds(t.to_string())),
            }
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(part)?;
                    (p, p)
                }
            };
            out.push(PortRange { start: a, end: b });
        }
        Self::new(out)
    }
}

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
            Outcome::New => "new",
            Outcome::Sticky => "sticky",
            Outcome::Restored => "restored",
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

/// Why the pool refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No free port in any range.
    #[error(
        "port pool exhausted: no free port in {ranges} (capacity {}, in use {}, quarantined {}, conflicted {}); \
         widen --ports, shorten --grace so released ports return sooner, or remove unused services",
        counts.capacity, counts.in_use, counts.quarantined, counts.conflicted
    )]
    Exhausted {
        /// The configured ranges, for the message.
        ranges: String,
        /// The counts when it happened.
        counts: PoolCounts,
    },
    /// A port outside the configured ranges.
    #[error("port {port} is outside the configured ranges {ranges}; widen --ports to include it")]
    OutsideRanges {
        /// The port.
        port: u16,
        /// The ranges.
        ranges: String,
    },
    /// A port that is not free.
    #[error("port {port} is not free: {state}")]
    PortTaken {
        /// The port.
        port: u16,
        /// Its state, described.
        state: String,
    },
    /// Restoring a second port for one service.
    #[error("service `{service}` already holds port {held}; it cannot also hold {port}")]
    ServiceHoldsOther {
        /// The service.
        service: String,
        /// Port it holds.
        held: u16,
        /// Port asked for.
        port: u16,
    },
    /// New ranges that drop ports.
    #[error(
        "new ranges {new} do not contain the current ranges {old}; ranges can only be widened while running"
    )]
    Narrowing {
        /// Current ranges.
        old: String,
        /// Proposed ranges.
        new: String,
    },
}

/// Internal per-port slot. `Free` slots have their bitmap bit cleared.
#[derive(Debug, Clone)]
enum Slot {
    Free,
    Reserved(Arc<str>),
    Quarantined(Arc<str>, Millis),
    Conflicted(Millis),
}

/// Where a service's port is, for the per-service index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Reserved(u16),
    Quarantined(u16),
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
    services: HashMap<Arc<str>, Held>,
    /// Last port each service held (sticky reuse after grace).
    last: HashMap<Arc<str>, u16>,
    /// Deadlines: (until, port). Quarantine and conflicts; stale entries are skipped.
    deadlines: BTreeMap<(Millis, u16), ()>,
    grace_ms: Millis,
    counts: PoolCounts,
}

impl Pool {
    /// An empty pool over `ranges`; a released port stays quarantined for `grace_ms`.
    pub fn new(ranges: PortRanges, grace_ms: Millis) -> Self {
        let capacity = ranges.capacity();
        let mut starts = Vec::with_capacity(ranges.0.len());
        let mut acc = 0;
        for r in &ranges.0 {
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
            slots: vec![Slot::Free; capacity],
            cursor: 0,
            services: HashMap::new(),
            last: HashMap::new(),
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

    fn offset_of(&self, port: u16) -> Option<usize> {
        self.ranges
            .0
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
        self.ranges.0[i].start + (off - self.starts[i]) as u16
    }

    fn set_slot(&mut self, off: usize, slot: Slot) {
        let c = &mut self.counts;
        match &self.slots[off] {
            Slot::Free => c.free -= 1,
            Slot::Reserved(_) => c.in_use -= 1,
            Slot::Quarantined(..) => c.quarantined -= 1,
            Slot::Conflicted(_) => c.conflicted -= 1,
        }
        match &slot {
            Slot::Free => c.free += 1,
            Slot::Reserved(_) => c.in_use += 1,
            Slot::Quarantined(..) => c.quarantined += 1,
            Slot::Conflicted(_) => c.conflicted += 1,
        }
        let (w, b) = (off / 64, off % 64);
        if matches!(slot, Slot::Free) {
            self.bits[w] &= !(1u64 << b);
        } else {
            self.bits[w] |= 1u64 << b;
        }
        self.slots[off] = slot;
    }

    /// The state of `port` (Free also for ports outside the ranges: check with
    /// [`PortRanges::contains`] first when it matters).
    pub fn state(&self, port: u16) -> PortState {
        match self.offset_of(port).map(|o| &self.slots[o]) {
            None | Some(Slot::Free) => PortState::Free,
            Some(Slot::Reserved(s)) => PortState::Reserved(s.clone()),
            Some(Slot::Quarantined(s, u)) => PortState::Quarantined(s.clone(), *u),
            Some(Slot::Conflicted(u)) => PortState::Conflicted(*u),
        }
    }

    /// The port a service holds as reserved, if any.
    pub fn port_of(&self, service: &str) -> Option<u16> {
        match self.services.get(service) {
            Some(Held::Reserved(p)) => Some(*p),
            _ => None,
        }
    }

    /// The port held in quarantine for a service, if any.
    pub fn quarantined_port_of(&self, service: &str) -> Option<u16> {
        match self.services.get(service) {
            Some(Held::Quarantined(p)) => Some(*p),
            _ => None,
        }
    }

    /// The last port a service held, if known (for sticky reuse after grace).
    pub fn last_port_of(&self, service: &str) -> Option<u16> {
        self.last.get(service).copied()
    }

    /// All last-port history, for persistence.
    pub fn last_ports(&self) -> impl Iterator<Item = (&str, u16)> {
        self.last.iter().map(|(s, p)| (&**s, *p))
    }

    /// Every port that is not free, with its state, in port order.
    pub fn entries(&self) -> Vec<(u16, PortState)> {
        let mut out = Vec::with_capacity(self.capacity - self.counts.free);
        for (off, slot) in self.slots.iter().enumerate() {
            let st = match slot {
                Slot::Free => continue,
                Slot::Reserved(s) => PortState::Reserved(s.clone()),
                Slot::Quarantined(s, u) => PortState::Quarantined(s.clone(), *u),
                Slot::Conflicted(u) => PortState::Conflicted(*u),
            };
            out.push((self.port_at(off), st));
        }
        out
    }

    fn intern(&self, service: &str) -> Arc<str> {
        match self.services.get_key_value(service) {
            Some((k, _)) => k.clone(),
            None => match self.last.get_key_value(service) {
                Some((k, _)) => k.clone(),
                None => Arc::from(service),
            },
        }
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
            match &self.slots[off] {
                Slot::Quarantined(s, u) if *u == until => {
                    let s = s.clone();
                    self.services.remove(&s);
                    self.remember(s.clone(), port);
                    self.set_slot(off, Slot::Free);
                    out.push(Expired {
                        port,
                        service: Some(s),
                    });
                }
                Slot::Conflicted(u) if *u == until => {
                    self.set_slot(off, Slot::Free);
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
        match self.services.get(service) {
            Some(Held::Reserved(p)) => return Ok(Reservation::AlreadyHeld(*p)),
            Some(Held::Quarantined(p)) => {
                let p = *p;
                let name = self.intern(service);
                let off = self.offset_of(p).expect("held ports lie in the ranges");
                self.set_slot(off, Slot::Reserved(name.clone()));
                self.services.insert(name, Held::Reserved(p));
                return Ok(Reservation::Assigned {
                    port: p,
                    outcome: Outcome::Sticky,
                });
            }
            None => {}
        }
        let name = self.intern(service);
        if let Some(&p) = self.last.get(service)
            && let Some(off) = self.offset_of(p)
            && matches!(self.slots[off], Slot::Free)
        {
            self.set_slot(off, Slot::Reserved(name.clone()));
            self.services.insert(name, Held::Reserved(p));
            return Ok(Reservation::Assigned {
                port: p,
                outcome: Outcome::Sticky,
            });
        }
        let off = self.next_free().ok_or_else(|| self.exhausted())?;
        self.set_slot(off, Slot::Reserved(name.clone()));
        self.cursor = (off + 1) % self.capacity;
        let port = self.port_at(off);
        self.services.insert(name.clone(), Held::Reserved(port));
        self.remember(name, port);
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
        let off = self
            .offset_of(port)
            .ok_or_else(|| PoolError::OutsideRanges {
                port,
                ranges: self.ranges.to_string(),
            })?;
        match self.services.get(service).copied() {
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
        if !matches!(self.slots[off], Slot::Free) {
            return Err(PoolError::PortTaken {
                port,
                state: describe(&self.state(port)),
            });
        }
        // Give up a quarantined other port: the caller chose this one.
        if let Some(Held::Quarantined(q)) = self.services.get(service).copied()
            && let Some(qoff) = self.offset_of(q)
        {
            self.set_slot(qoff, Slot::Free);
        }
        let name = self.intern(service);
        self.set_slot(off, Slot::Reserved(name.clone()));
        self.services.insert(name.clone(), Held::Reserved(port));
        let sticky = self.last.get(service) == Some(&port);
        self.remember(name, port);
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
        let Some(Held::Reserved(port)) = self.services.get(service).copied() else {
            return None;
        };
        let name = self.intern(service);
        let off = self.offset_of(port).expect("held ports lie in the ranges");
        if self.grace_ms == 0 {
            self.set_slot(off, Slot::Free);
            self.services.remove(service);
        } else {
            let until = now.saturating_add(self.grace_ms);
            self.set_slot(off, Slot::Quarantined(name.clone(), until));
            self.services.insert(name.clone(), Held::Quarantined(port));
            self.deadlines.insert((until, port), ());
        }
        self.remember(name, port);
        Some(port)
    }

    /// Drops a service's quarantined port at once (an operator's DELETE of a
    /// quarantined reservation). Returns the port freed.
    pub fn forget(&mut self, service: &str) -> Option<u16> {
        let held = self.services.get(service).copied()?;
        let port = match held {
            Held::Reserved(p) | Held::Quarantined(p) => p,
        };
        let off = self.offset_of(port).expect("held ports lie in the ranges");
        self.set_slot(off, Slot::Free);
        self.services.remove(service);
        Some(port)
    }

    /// Marks `port` conflicted (another process holds it) until `until`.
    /// Returns the service that lost it, if one held it (reserved or
    /// quarantined); that service should be reserved again. Ports outside the
    /// ranges are ignored (None).
    pub fn mark_conflicted(&mut self, port: u16, until: Millis) -> Option<Arc<str>> {
        let off = self.offset_of(port)?;
        let lost = match &self.slots[off] {
            Slot::Reserved(s) | Slot::Quarantined(s, _) => Some(s.clone()),
            Slot::Free | Slot::Conflicted(_) => None,
        };
        if let Some(s) = &lost {
            self.services.remove(s);
            // Do not try this port first next time: it is held by someone else.
            if self.last.get(s) == Some(&port) {
                self.last.remove(s);
            }
        }
        self.set_slot(off, Slot::Conflicted(until));
        self.deadlines.insert((until, port), ());
        lost
    }

    /// Puts back a reservation loaded from the store.
    pub fn restore(
        &mut self,
        service: &str,
        port: u16,
        state: &RestoreState,
    ) -> Result<(), PoolError> {
        let off = self
            .offset_of(port)
            .ok_or_else(|| PoolError::OutsideRanges {
                port,
                ranges: self.ranges.to_string(),
            })?;
        if !matches!(self.slots[off], Slot::Free) {
            return Err(PoolError::PortTaken {
                port,
                state: describe(&self.state(port)),
            });
        }
        if let Some(Held::Reserved(held) | Held::Quarantined(held)) = self.services.get(service) {
            return Err(PoolError::ServiceHoldsOther {
                service: service.to_string(),
                held: *held,
                port,
            });
        }
        let name = self.intern(service);
        match *state {
            RestoreState::Reserved => {
                self.set_slot(off, Slot::Reserved(name.clone()));
                self.services.insert(name.clone(), Held::Reserved(port));
            }
            RestoreState::Quarantined(until) => {
                self.set_slot(off, Slot::Quarantined(name.clone(), until));
                self.services.insert(name.clone(), Held::Quarantined(port));
                self.deadlines.insert((until, port), ());
            }
        }
        self.remember(name, port);
        Ok(())
    }

    /// Remembers a service's last port (history from the store).
    pub fn restore_last_port(&mut self, service: &str, port: u16) {
        if self.ranges.contains(port) {
            let name = self.intern(service);
            self.remember(name, port);
        }
    }

    /// Replaces the ranges with a superset (widening while running).
    pub fn widen(&mut self, ranges: PortRanges) -> Result<(), PoolError> {
        if !self.ranges.is_subset_of(&ranges) {
            return Err(PoolError::Narrowing {
                old: self.ranges.to_string(),
                new: ranges.to_string(),
            });
        }
        let mut next = Pool::new(ranges, self.grace_ms);
        for (port, st) in self.entries() {
            let off = next.offset_of(port).expect("subset checked above");
            let slot = match st {
                PortState::Free => Slot::Free,
                PortState::Reserved(s) => Slot::Reserved(s),
                PortState::Quarantined(s, u) => Slot::Quarantined(s, u),
                PortState::Conflicted(u) => Slot::Conflicted(u),
            };
            next.set_slot(off, slot);
        }
        next.services = std::mem::take(&mut self.services);
        next.last = std::mem::take(&mut self.last);
        next.deadlines = std::mem::take(&mut self.deadlines);
        if let Some(off) = next.offset_of(self.port_at(self.cursor)) {
            next.cursor = off;
        }
        *self = next;
        Ok(())
    }

    /// Records a service's last port. The history is bounded: past
    /// `2 * capacity + 1024` entries, the history of services that hold
    /// nothing is dropped (amortised O(1); sticky-after-grace is best effort).
    fn remember(&mut self, name: Arc<str>, port: u16) {
        self.last.insert(name, port);
        if self.last.len() > 2 * self.capacity + 1024 {
            let services = &self.services;
            self.last.retain(|s, _| services.contains_key(s));
        }
    }

    /// Every service holding a port: (service, port, None) when reserved,
    /// (service, port, Some(until)) when quarantined. For persistence.
    pub fn holdings(&self) -> impl Iterator<Item = (&str, u16, Option<Millis>)> {
        self.services.iter().map(|(s, h)| match *h {
            Held::Reserved(p) => (&**s, p, None),
            Held::Quarantined(p) => {
                let until = self
                    .offset_of(p)
                    .and_then(|off| match self.slots[off] {
                        Slot::Quarantined(_, u) => Some(u),
                        _ => None,
                    })
                    .unwrap_or(0);
                (&**s, p, Some(until))
            }
        })
    }

    /// Services holding a reserved port, with it.
    pub fn reserved(&self) -> impl Iterator<Item = (&str, u16)> {
        self.services.iter().filter_map(|(s, h)| match h {
            Held::Reserved(p) => Some((&**s, *p)),
            Held::Quarantined(_) => None,
        })
    }
}

/// The state a restored reservation comes back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreState {
    /// Reserved.
    Reserved,
    /// Quarantined until the deadline.
    Quarantined(Millis),
}

fn describe(st: &PortState) -> String {
    match st {
        PortState::Free => "free".into(),
        PortState::Reserved(s) => format!("reserved by `{s}`"),
        PortState::Quarantined(s, u) => format!("quarantined for `{s}` until {u} ms"),
        PortState::Conflicted(u) => format!("held by another process (conflicted until {u} ms)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(spec: &str, grace: Millis) -> Pool {
        Pool::new(spec.parse().expect("valid ranges"), grace)
    }

    #[test]
    fn last_port_history_is_bounded() {
        let mut p = pool("100-109", 0);
        for i in 0..10_000 {
            let name = format!("s{i}");
            p.reserve(&name, 0).unwrap();
            p.release(&name, 0);
        }
        assert!(p.last.len() <= 2 * 10 + 1024 + 1, "{}", p.last.len());
    }

    #[test]
    fn parse_errors_name_the_fix() {
        let e = "11199-11100".parse::<PortRanges>().unwrap_err();
        assert!(e.to_string().contains("write it as 11100-11199"), "{e}");
        let e = "1-10,5-20".parse::<PortRanges>().unwrap_err();
        assert!(matches!(e, RangeError::Overlap(..)), "{e}");
        let e = "0-10".parse::<PortRanges>().unwrap_err();
        assert!(matches!(e, RangeError::OutOfBounds(_)), "{e}");
        let e = "1-70000".parse::<PortRanges>().unwrap_err();
        assert!(matches!(e, RangeError::OutOfBounds(_)), "{e}");
        let e = "a-b".parse::<PortRanges>().unwrap_err();
        assert!(matches!(e, RangeError::Syntax(_)), "{e}");
        assert_eq!("".parse::<PortRanges>().unwrap_err(), RangeError::Empty);
        let r: PortRanges = "12000-12049, 11100-11199".parse().unwrap();
        assert_eq!(r.to_string(), "11100-11199,12000-12049");
        assert_eq!(r.capacity(), 150);
    }

    #[test]
    fn freed_port_is_found_again_after_wrap() {
        let mut p = pool("100-102", 0);
        for s in ["a", "b", "c"] {
            p.reserve(s, 0).unwrap();
        }
        assert!(matches!(
            p.reserve("d", 0),
            Err(PoolError::Exhausted { .. })
        ));
        assert_eq!(p.release("a", 0), Some(100));
        assert_eq!(p.reserve("d", 0).unwrap().port(), 100);
    }

    #[test]
    fn sticky_within_and_after_grace() {
        let mut p = pool("100-199", 1000);
        let a = p.reserve("a", 0).unwrap().port();
        assert_eq!(p.reserve("a", 0).unwrap(), Reservation::AlreadyHeld(a));
        p.release("a", 10);
        assert_eq!(p.counts().quarantined, 1);
        // Another service can't take it while quarantined.
        assert_ne!(p.reserve("b", 20).unwrap().port(), a);
        assert_eq!(
            p.reserve("a", 500).unwrap(),
            Reservation::Assigned {
                port: a,
                outcome: Outcome::Sticky
            }
        );
        p.release("a", 600);
        let freed = p.expire(1600);
        assert_eq!(freed.len(), 1);
        assert_eq!(p.counts().quarantined, 0);
        assert_eq!(
            p.reserve("a", 2000).unwrap(),
            Reservation::Assigned {
                port: a,
                outcome: Outcome::Sticky
            }
        );
    }

    #[test]
    fn exhaustion_message_names_counts_and_fix() {
        let mut p = pool("100-101", 1000);
        p.reserve("a", 0).unwrap();
        p.reserve("b", 0).unwrap();
        p.release("b", 0);
        let e = p.reserve("c", 0).unwrap_err().to_string();
        assert!(e.contains("100-101"), "{e}");
        assert!(e.contains("in use 1, quarantined 1, conflicted 0"), "{e}");
        assert!(e.contains("widen --ports"), "{e}");
    }

    #[test]
    fn conflict_moves_the_service_and_expires() {
        let mut p = pool("100-101", 0);
        let a = p.reserve("a", 0).unwrap().port();
        assert_eq!(p.mark_conflicted(a, 50).as_deref(), Some("a"));
        let again = p.reserve("a", 0).unwrap().port();
        assert_ne!(again, a);
        assert_eq!(p.counts().conflicted, 1);
        p.expire(50);
        assert_eq!(p.counts().conflicted, 0);
        assert_eq!(p.counts().free, 1);
    }

    #[test]
    fn widen_keeps_everything() {
        let mut p = pool("100-101", 1000);
        p.reserve("a", 0).unwrap();
        p.reserve("b", 0).unwrap();
        p.release("b", 0);
        p.widen("100-101,200-201".parse().unwrap()).unwrap();
        assert_eq!(p.port_of("a"), Some(100));
        assert_eq!(p.quarantined_port_of("b"), Some(101));
        assert_eq!(p.reserve("c", 0).unwrap().port(), 200);
        assert!(matches!(
            p.widen("100-100".parse().unwrap()),
            Err(PoolError::Narrowing { .. })
        ));
    }
}
