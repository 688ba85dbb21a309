//! Container labels mesh-bridge reads (validation lives in `crate::labels`).

/// Label naming the service a container belongs to.
pub const SERVICE: &str = "mesh-bridge.service";
/// Label naming the container port to dial.
pub const PORT: &str = "mesh-bridge.port";
/// Label naming the network whose address to dial.
pub const NETWORK: &str = "mesh-bridge.network";
/// Container port used when `mesh-bridge.port` is absent.
pub const DEFAULT_CONTAINER_PORT: u16 = 8080;
