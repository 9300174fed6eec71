"""Runs, resumes and inspects turns: the compiled turn graph plus its checkpointer in the sidecar's database.

The checkpointer is LangGraph's own (``langgraph-checkpoint-sqlite`` / ``-postgres``) opened on the same
database as everything else, so a run paused on an interrupt survives a sidecar restart. Thread ids are
scoped (``"<tenant>/<namespace>:<thread>"``) so one namespace never sees another's threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command, StateSnapshot
from sqlalchemy.engine import make_url

from core.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from core.sqlwrite import advisory_key
from runtime.agent.graph import TurnContext, TurnState, build_graph, new_turn_id, turn_input
from runtime.agent.llm import ChatClient
from runtime.agent.policy import LlmKey, TurnPolicy
from runtime.agent.ports import ALLOW, BLOCK, TurnPorts

Event = dict[str, Any]

log = logging.getLogger(__name__)


async def open_checkpointer(database_url: str) -> tuple[BaseCheckpointSaver[Any], Callable[[], Any]]:
    """A LangGraph async checkpointer on ``database_url`` (SQLite file or Postgres) and its async closer."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = url.database or ":memory:"
        conn = await aiosqlite.connect(path)
        # Same durability as the rest of the database (see runtime/db.py).
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA busy_timeout=30000")
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        return saver, conn.close
    if url.get_backend_name() == "postgresql":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo, open=False, min_size=1, max_size=8,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )
        await pool.open()
        pg = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        # Replicas starting together on a fresh database both ran LangGraph's migrations, and one failed its
        # start (a duplicate key in checkpoint_migrations): one replica at a time, as for our own migrations.
        # Polled, not waited for: a replica blocked in pg_advisory_lock holds a snapshot, and the holder's
        # CREATE INDEX CONCURRENTLY waits for every older snapshot to end, so both would wait for ever.
        key = advisory_key("agent-checkpointer", "setup")
        async with pool.connection() as conn:

            async def taken() -> bool:
                row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (key,))).fetchone()
                return bool(row and row["taken"])

            while not await taken():
                await asyncio.sleep(ThreadLocks.POLL_S)
            try:
                await pg.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return pg, pool.close
    raise InvalidArgumentError("storage.database_url", f"no checkpointer for database {url.get_backend_name()!r}")



def checkpoint_thread_key(scope: str, thread_id: str) -> str:
    """The checkpointer's thread key of ``thread_id`` in ``scope``: one-to-one, so no thread of one namespace can
    be named from another. Namespaces and thread ids may both hold ":", which ``scope:thread`` let collide
    (namespace ``a`` with thread ``b:c`` read the threads of namespace ``a:b``); the scope's ":" and "%" are
    escaped, so the first ":" always ends it. Keys of scopes without either read as before."""
    return scope.replace("%", "%25").replace(":", "%3A") + ":" + thread_id

class ThreadLocks:
    """One run per thread across replicas. The in-process lock of ``TurnRunner`` covers one sidecar; replicas
    on one Postgres database also hold a session advisory lock on the thread for the whole run. Without it, two
    replicas running turns on one thread both fork the same checkpoint and the thread keeps only one of the turns.
    A no-op on SQLite, which one sidecar process owns.

    All of a replica's thread locks live on ONE connection of their own (a session may hold any number of advisory
    locks), so the number of concurrent turns is not bounded by connections. The in-process lock already makes
    one run per thread at a time here; a lock another replica holds is polled with ``pg_try_advisory_lock``
    (every ``POLL_S``) rather than waited for, since a blocking wait would hold the shared connection. If that
    connection is lost, its locks go with it (and the next turn opens a new one): the worst case is the race this
    guards against, never a stuck thread.
    """

    POLL_S = 0.05

    def __init__(self, database_url: str | None = None):
        self._conn: Any = None
        self._conninfo = ""
        self._open_lock = asyncio.Lock()
        # Releases of locks taken by try-locks whose turn was cancelled meanwhile (see ``hold``).
        self._giving_back: set[asyncio.Future[None]] = set()
        if database_url and make_url(database_url).get_backend_name() == "postgresql":
            url = make_url(database_url)
            self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def _connection(self) -> Any:
        async with self._open_lock:
            if self._conn is None or self._conn.closed:
                import psycopg

                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            return self._conn

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        if not self._conninfo:
            yield
            return
        lock_id = advisory_key("agent-thread", key)
        while True:
            attempt = asyncio.ensure_future(self._try_lock(lock_id))
            try:
                conn, taken = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # Cancelled (client gone, deadline) while the try-lock ran: Postgres may have taken the lock all
                # the same. Left on the shared session it would outlive the turn, and every other replica would
                # wait for this thread for ever; give it back once the attempt ends.
                self._giving_back.add(task := asyncio.ensure_future(self._give_back(attempt, lock_id)))
                task.add_done_callback(self._giving_back.discard)
                raise
            if taken:
                break
            await asyncio.sleep(self.POLL_S)  # another replica runs a turn of this thread
        try:
            yield
        finally:
            if not conn.closed:
                try:
                    await asyncio.shield(conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,)))
                except BaseException:
                    # A lock that could not be released must not outlive the turn: ending the session releases
                    # it (and the other locks of this replica's running turns, whose guard is then lost).
                    await conn.close()
                    raise

    async def _try_lock(self, lock_id: int) -> tuple[Any, bool]:
        conn = await self._connection()
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,))).fetchone()
        return conn, bool(row and row[0])

    @staticmethod
    async def _give_back(attempt: asyncio.Future[tuple[Any, bool]], lock_id: int) -> None:
        """Release the lock a cancelled ``_try_lock`` took, if it took it."""
        try:
            conn, taken = await attempt
            if taken and not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        except Exception:
            log.warning("could not give back thread lock %s after a cancelled turn", lock_id, exc_info=True)

    async def aclose(self) -> None:
        if self._giving_back:
            await asyncio.gather(*self._giving_back, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


@dataclass
class ThreadView:
    """A thread's state for GetThread."""

    thread_id: str
    interrupted: bool
    messages: list[dict[str, Any]]
    pending_interrupt: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0


def _finished_turn(
    values: dict[str, Any], pending: tuple[str, ...], thread_id: str, turn_id: str, message: str
) -> Event | None:
    """The result to answer again for a retried turn ``turn_id``, None when it never finished on this thread.

    Raises AlreadyExistsError when the id belongs to an earlier turn, or to the latest with another message.
    """
    latest = values.get("turn_id") == turn_id and not pending and values.get("status") in ("completed", "blocked")
    if latest:
        if values.get("user") != message:
            raise AlreadyExistsError(
                f"turn {turn_id!r} already ran on thread {thread_id!r} with another message; a retry sends the same "
                "message, a new turn a new turn_id"
            )
        return {"type": "result", "status": values["status"], "answer": values.get("answer", ""),
                "turn_id": turn_id, "replayed": True}
    if turn_id in values.get("turn_ids", []):
        raise AlreadyExistsError(
            f"turn {turn_id!r} already ran on thread {thread_id!r} and is not its latest turn (its exchange is in "
            "GetThread's messages); a new turn needs a new turn_id"
        )
    return None


async def _check_turn_id_unused(ports: TurnPorts, thread_id: str, turn_id: str) -> None:
    """AlreadyExistsError when memory holds the messages of turn ``turn_id`` (``<turn_id>-u``/``-a``): the id is
    taken in the namespace, by a turn of another thread or one of this thread older than its kept turn ids. Run,
    the turn failed at its memory write (another thread's), or overwrote the old exchange (this thread's)."""
    if await ports.memory.existing([f"{turn_id}-u", f"{turn_id}-a"]):
        raise AlreadyExistsError(
            f"turn_id {turn_id!r} is already used in this namespace (its memory messages exist, from a turn of "
            f"another thread or an older turn of thread {thread_id!r}); a new turn needs a new turn_id"
        )


class TurnRunner:
    """Owns the compiled graph, the checkpointer and the LLM clients of one sidecar."""

    def __init__(self, checkpointer: BaseCheckpointSaver[Any], thread_locks: ThreadLocks | None = None):
        self.graph = build_graph().compile(checkpointer=checkpointer)
        self._thread_locks = thread_locks or ThreadLocks()
        # "exit": checkpoint when the run ends or pauses on an interrupt, not after every node. A turn that
        # crashes or is cancelled mid-way then leaves no partial state; paused runs are still persisted.
        self.durability: Literal["sync", "async", "exit"] = "exit"
        # Least recently used last out: clients are made per (base URL, key), and base URLs come from requests.
        self._clients: collections.OrderedDict[tuple[str, str], ChatClient] = collections.OrderedDict()
        # Evicted clients being closed (kept so the tasks are not collected before they end).
        self._closing: set[asyncio.Task[None]] = set()
        self._locks: dict[str, list[Any]] = {}

    #: LLM clients kept (each holds a connection pool); the least recently used is closed past this.
    MAX_CLIENTS = 32

    def llm(self, base_url: str, api_key: str = "") -> ChatClient:
        """The shared client of one endpoint (connections are kept alive across turns).

        At most ``MAX_CLIENTS`` are kept: every distinct base URL a request names made one, and none was ever
        closed. An evicted client is closed in the background; a turn still using it opens a new session.
        """
        key = (base_url, api_key)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = self._clients[key] = ChatClient(base_url, api_key=api_key or None)
        while len(self._clients) > self.MAX_CLIENTS:
            _, evicted = self._clients.popitem(last=False)
            task = asyncio.ensure_future(self._close_when_idle(evicted))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    @staticmethod
    async def _close_when_idle(client: ChatClient) -> None:
        """Close an evicted client once the calls it is making have ended (closing cuts them off)."""
        while client.in_flight:
            await asyncio.sleep(0.05)
        await client.aclose()

    async def aclose(self) -> None:
        """Close LLM clients."""
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._thread_locks.aclose()

    @staticmethod
    def _config(scope: str, thread_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": checkpoint_thread_key(scope, thread_id)}}

    @contextlib.asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """One run per thread at a time, in this process and across replicas (``ThreadLocks``); entries are dropped
        when no run uses them."""
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0], self._thread_locks.hold(key):
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    async def run_turn(
        self, scope: str, thread_id: str, message: str, speaker: str, policy: TurnPolicy, ports: TurnPorts,
        *, deadline: float | None = None, turn_id: str = "", llm_key: LlmKey | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Run one turn, yielding event dicts; the last one has ``type == "result"``.

        ``turn_id`` (optional, the client's) makes a retry safe: when it is the thread's latest finished turn,
        that turn's result is answered again (``replayed``) and nothing runs.

        Raises FailedPreconditionError if the thread is paused on an interrupt (Resume it first),
        AlreadyExistsError if ``turn_id`` is an earlier turn of the thread or its latest with another message.
        """
        config = self._config(scope, thread_id)
        async with self._lock(config["configurable"]["thread_id"]):
            snap, paused = await self._paused(config)
            if paused is not None:
                raise FailedPreconditionError(
                    f"thread {thread_id!r} is paused on an interrupt; call Resume before a new turn"
                )
            if turn_id:
                done = _finished_turn(snap.values, snap.next, thread_id, turn_id, message)
                if done is not None:
                    yield done
                    return
                await _check_turn_id_unused(ports, thread_id, turn_id)
            inp = cast(TurnState, turn_input(turn_id or new_turn_id(), message, speaker or "user", policy))
            async for ev in self._stream(inp, dict(inp), config, thread_id, llm_key or LlmKey(), ports, deadline):
                yield ev

    async def resume(
        self, scope: str, thread_id: str, decision: str, note: str, ports: TurnPorts,
        *, deadline: float | None = None, llm_key: LlmKey | None = None, interrupt_id: str = "",
    ) -> AsyncGenerator[Event, None]:
        """Continue a thread paused on an interrupt with ``decision`` ("allow" or "block").

        ``interrupt_id`` (optional): the interrupt the decision answers. Raises NotFoundError (no such thread),
        FailedPreconditionError (not paused, or paused on another interrupt than ``interrupt_id``).
        """
        if decision not in (ALLOW, BLOCK):
            raise InvalidArgumentError("decision", "must be DECISION_ALLOW or DECISION_BLOCK")
        config = self._config(scope, thread_id)
        async with self._lock(config["configurable"]["thread_id"]):
            snap, paused = await self._paused(config)
            if not snap.values:
                raise NotFoundError("thread", thread_id)
            if paused is None:
                raise FailedPreconditionError(f"thread {thread_id!r} is not paused on an interrupt")
            pending = paused.interrupts[0].id
            if interrupt_id and interrupt_id != pending:
                # Checked under the thread's lock: of two Resumes answering one interrupt, the second is refused
                # here rather than answering the next interrupt, which nobody was shown.
                raise FailedPreconditionError(
                    f"interrupt_id {interrupt_id!r} is not the interrupt thread {thread_id!r} is paused on (it was "
                    "answered already); read the pending one with GetThread"
                )
            cmd: Command[Any] = Command(resume={"decision": decision, "note": note})
            # From the paused checkpoint itself (``_paused``): a Resume that failed part-way left a later one.
            async for ev in self._stream(cmd, dict(paused.values), paused.config, thread_id, llm_key or LlmKey(),
                                         ports, deadline):
                yield ev

    async def _stream(
        self, inp: TurnState | Command[Any], values: dict[str, Any], config: RunnableConfig, thread_id: str,
        llm_key: LlmKey, ports: TurnPorts, deadline: float | None,
    ) -> AsyncGenerator[Event, None]:
        """Run the graph from ``inp`` and yield its events, then the turn's result.

        ``values`` is the state the run starts from (the turn input, or the paused state on resume); the
        nodes' updates are applied to it as they stream, so the result needs no read of the checkpoint.
        The graph runs in a task of its own and hands events over through a queue: it keeps going while
        the caller sends the previous events out (gRPC writes one message at a time). Errors, the
        deadline and cancellation of the caller all reach the graph task and the caller alike.
        """
        ctx = TurnContext(
            # The key of the configuration in force, and only for a URL it names (``LlmKey``).
            ports=ports, llm=lambda base_url: self.llm(base_url, llm_key.for_url(base_url)), thread_id=thread_id,
            deadline=deadline,
        )
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

        async def run() -> None:
            interrupted: dict[str, Any] | None = None
            try:
                # Memory's background work (the derivation the previous turn's write queued) waits for the turn.
                async with asyncio.timeout(remaining) as timer:
                    ctx.deadline_timer = timer  # lifted when the turn commits (graph._begin_commit)
                    with ports.memory.turn_in_flight():
                        async for mode, chunk in self.graph.astream(
                            inp, config, context=ctx, stream_mode=["custom", "updates"], durability=self.durability
                        ):
                            if mode == "custom":
                                queue.put_nowait(cast(Event, chunk))
                                continue
                            for node, update in cast(dict[str, Any], chunk).items():
                                if node == "__interrupt__":
                                    interrupted = {**update[0].value, "interrupt_id": update[0].id}
                                elif isinstance(update, dict):
                                    values.update(update)
            except DeadlineExceededError as exc:
                # Already says what ran late (an LLM call names its endpoint): keep it, not the generic message below.
                queue.put_nowait(exc)
                return
            except TimeoutError as exc:
                late = DeadlineExceededError(f"turn on thread {thread_id!r} ran past its deadline")
                late.__cause__ = exc
                queue.put_nowait(late)
                return
            except BaseException as exc:
                queue.put_nowait(exc)  # the caller raises it, so it never waits for events that will not come
                if not isinstance(exc, Exception):
                    raise  # cancellation (or exit) of the graph task itself
                return
            turn = values.get("turn_id", "")
            if interrupted is not None:
                queue.put_nowait({"type": "interrupt", **interrupted})
                queue.put_nowait({"type": "result", "status": "interrupted", "answer": "", "interrupt": interrupted,
                                  "turn_id": turn})
            else:
                queue.put_nowait({"type": "result", "status": values.get("status", "completed"),
                                  "answer": values.get("answer", ""), "turn_id": turn})
            queue.put_nowait(None)

        task = asyncio.create_task(run(), name=f"turn {thread_id}")
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if ctx.committing and not task.done():
                # The turn is writing its memory: it runs to its end (milliseconds) so that memory and thread agree
                # (graph._begin_commit). Cancelled again while waiting, it is stopped below all the same.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
            # The caller stopped early (cancelled RPC, error): the graph stops too, before any later node.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _paused(self, config: RunnableConfig) -> tuple[StateSnapshot, StateSnapshot | None]:
        """The thread's latest snapshot, and the snapshot its unfinished turn is paused at (None: not paused).

        Usually the latest itself. A Resume that failed after its first step (the LLM down, the client's deadline)
        leaves an exit checkpoint without the interrupt: the turn is unfinished but no longer looks paused, and
        it could never be resumed again. The pause is then the newest earlier snapshot of the same turn that has
        an interrupt, and a Resume continues from it (an approved tool that already ran then runs again: tools
        run at least once, not exactly once).
        """
        snap = await self.graph.aget_state(config)
        if snap.interrupts:
            return snap, snap
        values = snap.values or {}
        if values.get("status") != "running" or not values.get("turn_id"):
            return snap, None
        async for earlier in self.graph.aget_state_history(config, limit=self.PAUSE_LOOKBACK):
            if (earlier.values or {}).get("turn_id") != values["turn_id"]:
                break  # an earlier turn's: this turn never paused
            if earlier.interrupts:
                return snap, earlier
        return snap, None

    #: Checkpoints of one unfinished turn searched for its pause (each run writes one or two at exit).
    PAUSE_LOOKBACK = 50

    async def get_thread(self, scope: str, thread_id: str, history_limit: int = 20) -> ThreadView:
        """A thread's conversation, pending interrupt and newest checkpoints. Raises NotFoundError."""
        config = self._config(scope, thread_id)
        snap, paused = await self._paused(config)
        if not snap.values:
            raise NotFoundError("thread", thread_id)
        history = []
        async for h in self.graph.aget_state_history(config, limit=max(1, history_limit)):
            history.append({
                "checkpoint_id": h.config["configurable"].get("checkpoint_id", ""),
                "step": int((h.metadata or {}).get("step", 0)),
                "next": list(h.next),
                "created_at": h.created_at or "",
            })
        pending = None
        if paused is not None:
            first = paused.interrupts[0]
            pending = {**first.value, "interrupt_id": first.id}
        return ThreadView(
            thread_id=thread_id, interrupted=paused is not None, messages=list(snap.values.get("messages", [])),
            pending_interrupt=pending, history=history, turns=int(snap.values.get("turns", 0)),
        )
