"""Pooled HTTP client sessions for the sidecar's outgoing calls (tool endpoints, LLM endpoints).

aiohttp rather than httpx: on loopback its request path costs about 0.2 ms of CPU against httpx's 0.7–0.9 ms
(measured on the 2-core dev VM; docs/tools.md and docs/agent.md), which is a visible share of an Invoke's or an
agent turn's overhead.
"""

from __future__ import annotations

import asyncio

import aiohttp


class SessionPerLoop:
    """One pooled ``aiohttp.ClientSession`` per event loop, opened on first use.

    A session belongs to the loop it was opened on, and a client object (a tool executor, an LLM client) may be
    called from several loops in turn (the sidecar's, a test's, an embedding app's). Keeping connections alive
    between calls is most of the difference between a 1 ms and a 5 ms call to a local endpoint.
    """

    def __init__(self, *, max_connections: int = 100, keepalive_s: float = 30.0):
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def get(self) -> aiohttp.ClientSession:
        """The running loop's session (a new one if it has none, or its last one was closed)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_s),
                trust_env=False,
            )
            self._sessions[id(loop)] = session
        return session

    async def aclose(self) -> None:
        """Close the running loop's session."""
        session = self._sessions.pop(id(asyncio.get_running_loop()), None)
        if session is not None:
            await session.close()
