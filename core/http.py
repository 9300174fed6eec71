"""Pooled HTTP client sessions for the sidecar's outgoing calls (tool endpoints, LLM endpoints).

aiohttp rather than httpx: on loopback its request path costs about 0.2 ms of CPU against httpx's 0.7–0.9 ms
(measured on the 2-core dev VM; docs/tools.md and docs/agent.md), which is a visible share of an Invoke's or an
agent turn's overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator

import aiohttp


class SessionPerLoop:
    """One pooled ``aiohttp.ClientSession`` per event loop, opened on first use and closed when its loop ends.

    A session belongs to the loop it was opened on, and a client object (a tool executor, an LLM client) may be
    called from several loops in turn (the sidecar's, a test's, an embedding app's). Keeping connections alive
    between calls is most of the difference between a 1 ms and a 5 ms call to a local endpoint.

    A loop that ends through ``asyncio.run`` (or any runner that calls ``loop.shutdown_asyncgens()``, as
    pytest-asyncio's does) closes its session on its way out: ``get`` parks a small async generator on the loop
    whose ``finally`` closes the session, and the shutdown runs it while the loop can still await. A loop
    closed without that shutdown leaves its session to the garbage collector; either way the entry is dropped,
    so a later loop that happens to reuse the ended loop's ``id`` gets a session of its own.
    """

    def __init__(self, *, max_connections: int = 100, keepalive_s: float = 30.0):
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._sessions: dict[int, _LoopSession] = {}

    def get(self) -> aiohttp.ClientSession:
        """The running loop's session (a new one if it has none, or its last one was closed)."""
        loop = asyncio.get_running_loop()
        entry = self._sessions.get(id(loop))
        if entry is not None and entry.loop() is loop and not entry.session.closed:
            return entry.session
        self._forget_ended_loops()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_s),
            trust_env=False,
        )
        self._sessions[id(loop)] = _LoopSession(loop, session)
        return session

    async def aclose(self) -> None:
        """Close the running loop's session."""
        loop = asyncio.get_running_loop()
        entry = self._sessions.get(id(loop))
        if entry is not None and entry.loop() is loop:
            del self._sessions[id(loop)]
            await entry.session.close()

    def open_sessions(self) -> int:
        """Sessions held for loops that are still alive and open (for tests and diagnostics)."""
        return sum(1 for e in self._sessions.values() if e.alive() and not e.session.closed)

    def _forget_ended_loops(self) -> None:
        for key in [k for k, e in self._sessions.items() if not e.alive()]:
            del self._sessions[key]


class _LoopSession:
    """A session, its loop (weakly: the loop must stay collectable) and the generator that closes the session
    at the loop's ``shutdown_asyncgens``. The loop holds its async generators in a weak set, so the strong
    reference to the generator lives here."""

    __slots__ = ("closer", "loop", "session")

    def __init__(self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession):
        self.loop = weakref.ref(loop)
        self.session = session
        self.closer = _close_at_loop_shutdown(session)
        # Run the generator to its ``yield`` now: its first step registers it with the running loop (the
        # loop's first-iteration hook), which is what ``shutdown_asyncgens`` walks.
        step = self.closer.asend(None)
        with contextlib.suppress(StopIteration):
            step.send(None)

    def alive(self) -> bool:
        loop = self.loop()
        return loop is not None and not loop.is_closed()


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if not session.closed:
            await session.close()
