"""ThreadLocks on Postgres: one run per thread across replicas, and no lock outliving a cancelled turn."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from core.sqlwrite import advisory_key
from runtime.agent.runner import ThreadLocks

pytestmark = pytest.mark.postgres


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_a_turn_cancelled_while_it_takes_its_thread_lock_leaves_no_lock_behind(pg_url: str) -> None:
    """Cancelled while ``pg_try_advisory_lock`` runs, the query may take the lock all the same; left on the
    replica's shared lock session, no other replica could ever run that thread again."""

    async def main() -> list[str]:
        locks = ThreadLocks(pg_url)
        other = await psycopg.AsyncConnection.connect(_conninfo(pg_url), autocommit=True)  # another replica
        leaked = []
        try:
            for i in range(600):
                key = f"thread-{i}"

                async def turn(key: str = key) -> None:
                    async with locks.hold(key):
                        await asyncio.sleep(1)

                task = asyncio.create_task(turn())
                # Land the cancel at different points of the try-lock's round trip (about a millisecond here).
                await asyncio.sleep((i % 10) * 0.0002)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                lock_id = advisory_key("agent-thread", key)
                for _ in range(100):  # a give-back of the lock is a round trip of its own: wait up to 1 s for it
                    row = await (await other.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,))).fetchone()
                    if row and row[0]:
                        await other.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
                        break
                    await asyncio.sleep(0.01)
                else:
                    leaked.append(key)
        finally:
            await other.close()
            await locks.aclose()
        return leaked

    assert asyncio.run(main()) == []


def test_a_thread_held_by_one_replica_waits_for_it_on_another(pg_url: str) -> None:
    async def main() -> list[str]:
        first, second = ThreadLocks(pg_url), ThreadLocks(pg_url)
        order: list[str] = []

        async def run(locks: ThreadLocks, name: str, hold_s: float) -> None:
            async with locks.hold("shared-thread"):
                order.append(f"{name} in")
                await asyncio.sleep(hold_s)
                order.append(f"{name} out")

        try:
            one = asyncio.create_task(run(first, "a", 0.3))
            await asyncio.sleep(0.1)
            await asyncio.gather(one, run(second, "b", 0))
        finally:
            await first.aclose()
            await second.aclose()
        return order

    assert asyncio.run(main()) == ["a in", "a out", "b in", "b out"]


def test_replicas_opening_the_checkpointer_of_a_fresh_database_at_once_all_succeed(pg_url: str) -> None:
    """LangGraph's own migrations ran unlocked: of replicas starting together, one failed (a duplicate key in
    ``checkpoint_migrations``)."""
    from runtime.agent.runner import open_checkpointer

    async def main() -> list[BaseException | None]:
        async def start() -> BaseException | None:
            try:
                _saver, close = await open_checkpointer(pg_url)
            except Exception as exc:
                return exc
            await close()
            return None

        return list(await asyncio.gather(*(start() for _ in range(4))))

    assert asyncio.run(main()) == [None] * 4
