"""A stateful MCP server on the official SDK's FastMCP, for the bridge's tests.

`fastmcp_server.py [streamable-http|sse]` serves on 0.0.0.0:$PORT (default
8080) with the SDK's defaults (stateful sessions; streamable HTTP answers as
SSE). Tools: `whoami` (the replica: $HOSTNAME, which Docker sets to the
container's short id) and `echo`.
"""

import os
import sys

from mcp.server.fastmcp import FastMCP

TRANSPORTS = ("streamable-http", "sse")

transport = sys.argv[1] if len(sys.argv) > 1 else "streamable-http"
if transport not in TRANSPORTS:
    sys.exit(f"fastmcp_server.py: transport {transport!r} is not one of {TRANSPORTS}")

mcp = FastMCP("fastmcp", host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))


@mcp.tool()
def whoami() -> str:
    """The replica that answered."""
    return os.environ.get("HOSTNAME", "unknown")


@mcp.tool()
def echo(text: str) -> str:
    """Returns its argument."""
    return text


mcp.run(transport=transport)
