"""Batched, asynchronous audit writing: an invocation never waits for an fsync.

Records are queued and written by one background task per event loop in batches (one transaction
each); ``flush()`` waits until everything queued so far is stored, and reads flush first, so a client
always sees its own invocations in ListAudit. A batch whose transaction fails is written again one record at
a time, so a transient error or one bad record does not take the others with it; ``record`` returns a future
that says whether that record was stored (an Invoke with durable records waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tools.model import AuditRecord
from tools.store import ToolStore

log = logging.getLogger(__name__)


class AuditLog:
    """Queue in front of ``ToolStore.append_audits``."""

    def __init__(
        self,
        store: ToolStore,
        offload: Callable[..., Awaitable[Any]],
        *,
        max_batch: int = 512,
        linger_s: float = 0.02,
    ):
        self._store = store
        self._offload = offload
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._pending: list[tuple[str, AuditRecord, asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        # Set by a flush: the writer stops lingering (a caller is waiting for the records to be stored).
        self._urgent: asyncio.Event | None = None

    def record(self, scope: str, record: AuditRecord) -> asyncio.Future[None]:
        """Queue one record (call on the event loop); the writer task is started on first use. The future is
        done once the record is stored, or holds the error that kept it from being stored."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        # Most callers never look: an error is logged by the writer, not again as "never retrieved".
        stored.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append((scope, record, stored))
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._idle = asyncio.Event()
            self._urgent = asyncio.Event()
            self._task = loop.create_task(self._run(), name="tool-audit")
        assert self._wakeup is not None and self._idle is not None
        self._idle.clear()
        self._wakeup.set()
        return stored

    async def _write(self, batch: list[tuple[str, AuditRecord, asyncio.Future[None]]]) -> None:
        try:
            await self._offload(self._store.append_audits, [(scope, record) for scope, record, _ in batch])
        except Exception:
            # One transaction per record: a transient error gets a second try, a bad record fails alone.
            log.warning("a batch of %d tool audit records failed; writing them one at a time", len(batch))
            for item in batch:
                await self._write_one(item)
            return
        for _, _, stored in batch:
            if not stored.done():
                stored.set_result(None)

    async def _write_one(self, item: tuple[str, AuditRecord, asyncio.Future[None]]) -> None:
        scope, record, stored = item
        try:
            await self._offload(self._store.append_audits, [(scope, record)])
        except Exception as exc:
            # Losing an audit record is logged loudly but must not break the writer.
            log.exception("could not write tool audit record %s", record.id)
            if not stored.done():
                stored.set_exception(exc)
            return
        if not stored.done():
            stored.set_result(None)

    async def _run(self) -> None:
        assert self._wakeup is not None and self._idle is not None and self._urgent is not None
        while True:
            await self._wakeup.wait()
            # Let a burst of invocations pile up so one transaction (one fsync) stores them all, unless someone
            # waits for them.
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._linger_s)
            self._urgent.clear()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                await self._write(batch)  # never raises: a record it could not store holds the error
            self._idle.set()

    async def flush(self) -> None:
        """Wait until every queued record is stored."""
        if self._task is None or self._idle is None or not (self._pending or not self._idle.is_set()):
            return
        if self._urgent is not None:
            self._urgent.set()
        await self._idle.wait()

    async def aclose(self) -> None:
        """Flush and stop the writer."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
