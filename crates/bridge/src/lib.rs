//! mesh-bridge: gives each Docker service labelled `mesh-bridge.service` a
//! stable host port from a bounded pool, keeps it across restarts, and
//! measures it. See ARCHITECTURE.md for the map and DESIGN.md for the contract.

pub mod config;
pub mod labels;
pub mod pool;
pub mod registry;
