"""MCP sessions through a mesh port, driven by the official MCP Python SDK.

Run by the bridge's e2e tests (tests/e2e/sdk.rs) with PYTHONPATH set to the
SDK that `cargo xtask provision` installs. Each of --sessions concurrent
sessions (streamable HTTP, over fresh connections: no keep-alive) does
initialize, tools/list and --calls tools/call of `whoami`, which names the
replica that answered; the SDK also keeps the session's GET stream open.
With --pause, every session stops after its first half of calls, the script
prints "PAUSED" and waits for a line on stdin (the test kills the bridge
meanwhile), then the sessions go on without initializing again. With
--reinit, a session whose calls fail starts a new session once and tries
again. The last stdout line is a JSON report; the exit status is 0 unless
the script itself broke. --transport sse uses the SDK's 2024-11-05 HTTP+SSE
client instead (the URL is then the stream's, e.g. /sse). --tool NAME with
--arguments JSON calls another tool instead of `whoami` (a third-party
server's, such as mcp-server-time's `get_current_time`); the replica is then
unknown and recorded as "-".
"""

import argparse
import asyncio
import json
import sys

import httpx
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamablehttp_client


def fresh_connections(headers=None, timeout=None, auth=None):
    """An httpx client that opens a new connection for every request."""
    return httpx.AsyncClient(
        headers=headers,
        timeout=timeout or httpx.Timeout(30, read=300),
        auth=auth,
        follow_redirects=True,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def connect(url, transport):
    """The SDK's client transport: (read, write, ...) streams."""
    if transport == "sse":
        return sse_client(url, httpx_client_factory=fresh_connections)
    return streamablehttp_client(url, httpx_client_factory=fresh_connections)


def describe(e):
    """An exception as text, the sub-exceptions of a group included."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, BaseExceptionGroup):
        text += " [" + "; ".join(describe(x) for x in e.exceptions) + "]"
    return text


TOOL = {"name": "whoami", "arguments": {}}


async def calls(session, n):
    """n tools/call of the tool; the replicas that answered ("-": unknown)."""
    seen = []
    for _ in range(n):
        r = await session.call_tool(TOOL["name"], TOOL["arguments"])
        if r.isError:
            raise RuntimeError(f"{TOOL['name']} failed: {r.content}")
        seen.append(r.content[0].text if TOOL["name"] == "whoami" else "-")
    return seen


async def one(url, transport, n_calls, gate, reinit):
    rec = {"replicas": [], "error": None, "reinitialized": False, "first": None}
    gated = False

    async def pass_gate():
        nonlocal gated
        if not gated:
            gated = True
            await gate()

    try:
        try:
            async with connect(url, transport) as streams:
                r, w = streams[0], streams[1]
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    tools = await s.list_tools()
                    names = sorted(t.name for t in tools.tools)
                    if TOOL["name"] not in names:
                        raise RuntimeError(f"no {TOOL['name']} tool in {names}")
                    half = n_calls // 2
                    rec["replicas"] += await calls(s, half)
                    rec["first"] = rec["replicas"][0] if rec["replicas"] else None
                    await pass_gate()
                    try:
                        rec["replicas"] += await calls(s, n_calls - half)
                    except Exception as e:  # the session ended under us
                        if not reinit:
                            raise
                        rec["error"] = describe(e)
        except Exception as e:
            # Closing a session that already ended can fail too (the SDK's
            # stream tasks see its replica gone); the session's end is what
            # was recorded. Anything else is a failure.
            if rec["error"] is None:
                raise
            rec["close_error"] = describe(e)
        if rec["error"] is not None:
            rec["reinitialized"] = True
            async with connect(url, transport) as streams:
                r, w = streams[0], streams[1]
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    rec["after"] = await calls(s, n_calls - n_calls // 2)
    except Exception as e:
        rec["error"] = describe(e)
        rec["failed"] = True
        await pass_gate()
    return rec


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--pause", action="store_true")
    p.add_argument("--reinit", action="store_true")
    p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    p.add_argument("--tool", default="whoami")
    p.add_argument("--arguments", default="{}")
    a = p.parse_args()
    TOOL["name"] = a.tool
    TOOL["arguments"] = json.loads(a.arguments)

    arrived = 0
    released = asyncio.Event()

    async def gate():
        nonlocal arrived
        if not a.pause:
            return
        arrived += 1
        if arrived == a.sessions:
            print("PAUSED", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            released.set()
        await released.wait()

    recs = await asyncio.gather(*(one(a.url, a.transport, a.calls, gate, a.reinit) for _ in range(a.sessions)))
    report = {
        "sessions": len(recs),
        "failed": [r for r in recs if r.get("failed")],
        "moved": [r for r in recs if len(set(r["replicas"])) > 1],
        "reinitialized": [r for r in recs if r["reinitialized"]],
        "calls": sum(len(r["replicas"]) + len(r.get("after", [])) for r in recs),
        "by_replica": {},
    }
    for r in recs:
        if r["first"]:
            report["by_replica"][r["first"]] = report["by_replica"].get(r["first"], 0) + 1
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
