//! The contract mesh-bridge keeps with everything outside it, in one place:
//! the HTTP API's types ([`api`]), the container labels ([`labels`]), the
//! files of a state directory ([`files`]), the metric names and their label
//! values ([`metric`]), the image tags the harness builds ([`images`]) and
//! MCP's names for a session on HTTP ([`mcp`]).
//!
//! The bridge, `mesh-chaos` (probes, invariants, faults) and `xtask`
//! (dashboards check, bench, scenarios) import these; none of them spells a
//! label, file, metric or API field itself. docs/DESIGN.md section 3 is the
//! prose of the same contract.

pub mod api;
pub mod files;
pub mod images;
pub mod labels;
pub mod mcp;
pub mod metric;
