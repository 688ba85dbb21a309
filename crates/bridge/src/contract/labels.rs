//! Container labels mesh-bridge reads (validation lives in `crate::labels`).

/// Label naming the service a container belongs to.
pub const SERVICE: &str = "mesh-bridge.service";
/// Label naming the container port to dial.
pub const PORT: &str = "mesh-bridge.port";
/// Label naming the network whose address to dial.
pub const NETWORK: &str = "mesh-bridge.network";
/// Container port used when `mesh-bridge.port` is absent.
pub const DEFAULT_CONTAINER_PORT: u16 = 8080;
/// Label naming the protocol the service speaks on its container port.
pub const TRANSPORT: &str = "mesh-bridge.transport";

/// What a service speaks, with the MCP ecosystem's names
/// (`mesh-bridge.transport`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// MCP streamable HTTP (2025-03-26 and later): requests routed one by
    /// one, a session pinned to the replica that created it. The default.
    #[default]
    StreamableHttp,
    /// The 2024-11-05 HTTP+SSE transport: a GET event stream and the POSTs
    /// to the URL its `endpoint` event names, pinned to one replica.
    Sse,
    /// A stdio MCP server (`docker run -d -i`): the bridge attaches to its
    /// stdin and stdout and serves streamable HTTP for it.
    Stdio,
    /// Opaque bytes: each connection spliced to a replica.
    Tcp,
}

impl Transport {
    /// Every transport, in the order of the docs.
    pub const ALL: [Transport; 4] = [
        Transport::StreamableHttp,
        Transport::Sse,
        Transport::Stdio,
        Transport::Tcp,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
            Transport::Stdio => "stdio",
            Transport::Tcp => "tcp",
        }
    }

    /// Reads a label value (exact, lower case).
    pub fn parse(s: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the bridge reads HTTP on the mesh port (routes per request).
    pub fn is_http(self) -> bool {
        !matches!(self, Transport::Tcp)
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
