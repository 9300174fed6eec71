"""A real stdio MCP server for the tests, written with the official SDK (run as a subprocess).

Tools: add, echo_text, slow, crash (kills the process), grow (adds a tool and sends tools/list_changed).
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("test-tools")


@server.tool(description="Add two integers and return their sum.", annotations=ToolAnnotations(idempotent_hint=True))
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Return the given text unchanged.", annotations=ToolAnnotations(read_only_hint=True))
def echo_text(text: str) -> str:
    return text


@server.tool(description="Sleep for the given number of seconds.")
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@server.tool(description="Delete every file in a directory.", annotations=ToolAnnotations(destructive_hint=True))
def wipe_directory(path: str) -> str:
    return f"pretended to wipe {path}"


@server.tool(description="Crash the server process (for fault tests).")
def crash() -> str:
    sys.stderr.write("crash requested by the test\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool(description="Add a 'multiply' tool to this server and notify the client.")
async def grow(ctx: Context) -> str:
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    server.add_tool(multiply, name="multiply", description="Multiply two integers.")
    await ctx.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    server.run("stdio")
