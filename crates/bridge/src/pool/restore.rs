//! Reshaping the pool: putting back what the store held at start-up, and
//! new ranges on a configuration reload (widen at once, narrow only when
//! nothing outside the new ranges is held).

use super::*;

impl Pool {
    /// Puts back a reservation loaded from the store.
    pub fn restore(
        &mut self,
        service: &str,
        port: u16,
        state: &RestoreState,
    ) -> Result<(), PoolError> {
        let off = self.offset_in_ranges(port)?;
        if self.slots[off] != Slot::FREE {
            return Err(PoolError::PortTaken {
                port,
                state: describe(&self.state(port)),
            });
        }
        if let Some(Held::Reserved(held) | Held::Quarantined(held)) = self.held(service) {
            return Err(PoolError::ServiceHoldsOther {
                service: service.to_string(),
                held,
                port,
            });
        }
        let i = self.intern(service);
        match *state {
            RestoreState::Reserved => {
                self.set_slot(off, Slot::reserved(i));
                self.record_mut(i).held = Some(Held::Reserved(port));
            }
            RestoreState::Quarantined(until) => {
                self.set_slot(off, Slot::quarantined(i));
                let rec = self.record_mut(i);
                rec.held = Some(Held::Quarantined(port));
                rec.until = until;
                self.deadlines.insert((until, port), ());
            }
        }
        self.remember(i, port);
        Ok(())
    }

    /// Remembers a service's last port (history from the store).
    pub fn restore_last_port(&mut self, service: &str, port: u16) {
        if self.ranges.contains(port) {
            let i = self.intern(service);
            self.remember(i, port);
        }
    }

    /// Replaces the ranges while running (a configuration reload). Widening
    /// always works; narrowing works while no port outside the new ranges
    /// is reserved, quarantined or conflicted (the error names each). Every
    /// holding, quarantine, conflict, deadline and the history are kept.
    pub fn set_ranges(&mut self, ranges: PortRanges) -> Result<(), PoolError> {
        let mut held = Vec::new();
        for (off, &slot) in self.slots.iter().enumerate() {
            let port = self.port_at(off);
            if ranges.contains(port) {
                continue;
            }
            match slot.get() {
                SlotState::Free => {}
                SlotState::Reserved(i) => held.push(format!("{} holds {port}", self.name_of(i))),
                SlotState::Quarantined(i) => {
                    held.push(format!("{port} is quarantined for {}", self.name_of(i)))
                }
                SlotState::Conflicted => held.push(format!("{port} is held by another process")),
            }
        }
        if !held.is_empty() {
            const SHOWN: usize = 10;
            let more = held.len().saturating_sub(SHOWN);
            held.truncate(SHOWN);
            let mut held = held.join(", ");
            if more > 0 {
                held.push_str(&format!(" and {more} more"));
            }
            return Err(PoolError::Narrowing {
                old: self.ranges.to_string(),
                new: ranges.to_string(),
                held,
            });
        }
        let mut next = Pool::new(ranges, self.grace_ms);
        for (off, &slot) in self.slots.iter().enumerate() {
            if slot != Slot::FREE {
                let noff = next
                    .offset_of(self.port_at(off))
                    .expect("every used port lies in the new ranges (checked above)");
                next.set_slot(noff, slot);
            }
        }
        next.services = std::mem::take(&mut self.services);
        next.last_len = self.last_len;
        next.history_kept = self.history_kept;
        next.conflicts = std::mem::take(&mut self.conflicts);
        next.deadlines = std::mem::take(&mut self.deadlines);
        if let Some(off) = next.offset_of(self.port_at(self.cursor)) {
            next.cursor = off;
        }
        *self = next;
        Ok(())
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
