//! mesh-chaos: the reliability harness for mesh-bridge (faults, probes,
//! invariants, reports). See DESIGN.md section 4; filled in by the harness work.

pub mod stub;
