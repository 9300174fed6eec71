"""``SessionPerLoop``: one pooled aiohttp session per event loop, closed when its loop ends."""

from __future__ import annotations

import asyncio
import gc
import warnings

import aiohttp

from core.http import SessionPerLoop


def test_a_session_is_reused_within_its_loop_and_closed_when_asyncio_run_ends() -> None:
    sessions = SessionPerLoop()
    seen: list[aiohttp.ClientSession] = []

    async def use() -> None:
        first = sessions.get()
        assert sessions.get() is first
        assert sessions.open_sessions() == 1
        seen.append(first)

    asyncio.run(use())
    asyncio.run(use())
    assert len(seen) == 2 and seen[0] is not seen[1]
    # Each loop's shutdown closed its session: no connector is left open behind an ended loop.
    assert all(s.closed for s in seen)
    assert sessions.open_sessions() == 0


def test_an_ended_loop_leaves_no_unclosed_session_warning() -> None:
    sessions = SessionPerLoop()

    async def use() -> None:
        sessions.get()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            asyncio.run(use())
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)], [str(w.message) for w in caught]


def test_a_loop_closed_without_shutdown_is_forgotten_and_the_next_loop_gets_its_own_session() -> None:
    sessions = SessionPerLoop()
    loop = asyncio.new_event_loop()

    async def grab() -> aiohttp.ClientSession:
        return sessions.get()

    stale = loop.run_until_complete(grab())
    loop.close()  # no shutdown_asyncgens: the session cannot be awaited closed any more
    assert sessions.open_sessions() == 0

    async def use() -> aiohttp.ClientSession:
        return sessions.get()

    fresh = asyncio.run(use())
    assert fresh is not stale
    assert fresh.closed


def test_aclose_closes_only_the_running_loops_session() -> None:
    sessions = SessionPerLoop()

    async def use_and_close() -> aiohttp.ClientSession:
        s = sessions.get()
        await sessions.aclose()
        assert s.closed
        again = sessions.get()  # a closed session is replaced on the next call
        assert again is not s and not again.closed
        return again

    last = asyncio.run(use_and_close())
    assert last.closed  # and that one closed with its loop
