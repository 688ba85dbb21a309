//! Why the pool refuses a call: one variant per cause, each message saying
//! what to do.

use super::PoolCounts;

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
    /// New ranges that would drop ports still in use.
    #[error(
        "new ranges {new} drop ports still in use under {old}: {held}; \
         remove those services (or wait for the quarantine to end) first, or keep their ports in the ranges"
    )]
    Narrowing {
        /// Current ranges.
        old: String,
        /// Proposed ranges.
        new: String,
        /// What holds ports outside the new ranges (`docs holds 20005`, ...).
        held: String,
    },
}
