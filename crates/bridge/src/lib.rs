//! mesh-bridge: gives each Docker service labelled `mesh-bridge.service` a
//! stable host port from a bounded pool, keeps it across restarts, and
//! measures it. See ARCHITECTURE.md for the map and docs/DESIGN.md for the contract.

pub mod api;
pub mod app;
pub mod config;
pub mod contract;
pub mod docker;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod labels;
pub mod metrics;
pub mod pool;
pub mod reconcile;
pub mod registry;
pub mod splice;
pub mod state;
pub mod stdio;
pub mod store;
pub mod token;
