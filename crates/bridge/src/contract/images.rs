//! Tags of the images the harness builds locally (`cargo xtask images`);
//! nothing is pulled from a registry.

/// The bridge (`FROM scratch` around the static binary).
pub const BRIDGE: &str = "mesh-bridge/bridge:dev";
/// The MCP stub (`FROM scratch` around the static `mcp-stub`).
pub const STUB: &str = "mesh-bridge/mcp-stub:dev";
/// Docker-in-Docker, from a debootstrap rootfs.
pub const DIND: &str = "mesh-bridge/dind:dev";
/// The bridge with one known bug, built by `cargo xtask teeth`.
pub const BRIDGE_TEETH: &str = "mesh-bridge/bridge:teeth";
/// The stub's binary inside its image.
pub const STUB_BIN: &str = "/mcp-stub";
/// Real MCP servers (FastMCP) on the official Python SDK, from a debootstrap rootfs.
pub const MCP_PYTHON: &str = "mesh-bridge/mcp-python:dev";
