//! MCP's own names for a session on its HTTP transports, which the bridge
//! routes by and the harness (probes, the stub, tests) speaks.

/// The session header of the streamable HTTP transport: the server names
/// a new session in its `initialize` answer, the client names it in every
/// request after. Header names are case-insensitive; this is the form
/// HTTP/2 and `hyper` use.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Query parameters that carry the session on the `sse` transport: in the
/// `endpoint` event's URL and in the POSTs the client sends to it (the
/// Python SDK writes `session_id`, the TypeScript SDK `sessionId`).
pub const SESSION_PARAMS: [&str; 2] = ["session_id", "sessionId"];
