//! mesh-chaos: the reliability harness for mesh-bridge (faults, probes,
//! invariants, reports). See docs/DESIGN.md section 4.

pub mod binds;
pub mod docker_query;
pub mod docker_relay;
pub mod faults;
pub mod http;
pub mod invariants;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod session;
pub mod stub;
pub mod wait;
