//! One port's slot in the pool, packed into 4 bytes.

/// Internal per-port slot, packed into 4 bytes: the low two bits are the
/// state, the rest the index of the service record (reserved, quarantined).
/// `Free` slots have their bitmap bit cleared. Deadlines live elsewhere: a
/// quarantine's in its service record (a service holds at most one port), a
/// conflict's in [`Pool::conflicts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot(pub(super) u32);

/// A [`Slot`], unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    Reserved(u32),
    Quarantined(u32),
    Conflicted,
}

impl Slot {
    pub(super) const FREE: Slot = Slot(0);
    pub(super) const CONFLICTED: Slot = Slot(1);

    pub(super) fn reserved(service: u32) -> Slot {
        debug_assert!(service < 1 << 30);
        Slot((service << 2) | 2)
    }

    pub(super) fn quarantined(service: u32) -> Slot {
        debug_assert!(service < 1 << 30);
        Slot((service << 2) | 3)
    }

    pub(super) fn get(self) -> SlotState {
        match self.0 & 3 {
            0 => SlotState::Free,
            1 => SlotState::Conflicted,
            2 => SlotState::Reserved(self.0 >> 2),
            _ => SlotState::Quarantined(self.0 >> 2),
        }
    }
}
