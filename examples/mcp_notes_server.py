"""A small stdio MCP server to import into the sidecar (README, "Tools over MCP").

    grpcurl -plaintext -d '{"namespace": "demo", "server": {"name": "notes", "command": "python",
      "args": ["examples/mcp_notes_server.py"]}}' 127.0.0.1:50051 agentrt.v1.ToolService/ImportMcp

imports ``notes.add_note`` and ``notes.find_notes``. Notes live in this process's memory only.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("notes")
_notes: list[str] = []


@server.tool(description="Save a short note for later.")
def add_note(text: str) -> str:
    _notes.append(text)
    return f"saved note {len(_notes)}"


@server.tool(
    description="Return the saved notes that contain the given words.",
    annotations=ToolAnnotations(read_only_hint=True),
)
def find_notes(words: str) -> list[str]:
    terms = words.lower().split()
    return [n for n in _notes if all(t in n.lower() for t in terms)]


if __name__ == "__main__":
    server.run("stdio")
