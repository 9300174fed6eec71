"""The tests' MCP server (``mcp_server.py``) over streamable HTTP in its own process.

``python mcp_http_server.py PORT``.

A process, not a thread, so a test can freeze it (SIGSTOP) or restart it on the same port.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvicorn

from tests.tools.mcp_server import server

if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
