"""Write-behind for record rows nobody waits on (gate decisions, answer selections).

A durable INSERT on SQLite costs an fsync (several milliseconds); a gate decision or a selection is an
audit record that the caller does not need stored before it gets its answer. ``RowWriter`` queues the
rows, and one daemon thread inserts what piled up within ``linger_s`` of the first in one transaction.
``flush()`` waits until every row queued so far is stored — code that reads or updates those rows
calls it first, so a client always sees its own records — and ``close()`` (called on shutdown) flushes
and stops the thread. A batch that fails is logged and dropped; it never blocks the callers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, insert

log = logging.getLogger(__name__)


T = TypeVar("T")

#: How long a lookup of a written-behind row waits for another replica's writer before NOT_FOUND.
REMOTE_ROW_WAIT_S = 2.0


def find_row(engine: Engine, attempt: Callable[[], T | None], wait_s: float = REMOTE_ROW_WAIT_S) -> T | None:
    """``attempt()`` (a lookup of a written-behind row by the id a client was given), retried for up to ``wait_s``
    on a database that replicas share.

    This process's own rows are stored once its writer is flushed. A replica behind a load balancer may be asked
    about an id another replica handed out a moment ago, whose row is still in that replica's queue (``linger_s``
    plus a commit): it waits for it rather than answer NOT_FOUND. SQLite has a single writer process: no wait.
    """
    found = attempt()
    if found is not None or engine.dialect.name == "sqlite":
        return found
    until = time.monotonic() + wait_s
    while found is None and time.monotonic() < until:
        time.sleep(0.05)
        found = attempt()
    return found


class RowWriter:
    """Queue of rows for one table, inserted in batches by a background thread."""

    def __init__(
        self, engine: Engine, table: Table, *, max_batch: int = 512, linger_s: float = 0.02, durable: bool = False
    ):
        # durable: ``add`` inserts the row in its caller's thread and returns once it is committed (raising
        # what the insert raised): for deployments where every id handed out must survive a kill -9.
        self._durable = durable
        self._engine = engine
        self._table = table
        self._max_batch = max_batch
        self._linger_s = linger_s
        # Threads inside flush(): the writer stops lingering for them.
        self._waiting = 0
        self._rows: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        # Rows queued and rows done (stored or dropped) since the start; flush waits for done >= queued.
        self._queued = 0
        self._done = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, row: dict[str, Any]) -> None:
        """Queue one row (column -> value), or store it now on a durable writer. Raises RuntimeError after
        ``close``."""
        if self._durable:
            if self._closed:
                raise RuntimeError(f"the {self._table.name} writer is closed")
            with self._engine.begin() as conn:
                conn.execute(insert(self._table), [row])
            return
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self._table.name} writer is closed")
            self._rows.append(row)
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self._table.name}-writer", daemon=True)
                self._thread.start()
            # Wake the writer only when it has to act: the first row ends its idle wait, a full batch ends
            # its linger. Waking it for every row would cost a thread switch (and the GIL) per row.
            if len(self._rows) == 1 or len(self._rows) >= self._max_batch:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._rows and not self._closed:
                    self._cond.wait()
                if not self._rows:
                    return
                # Let a burst pile up so one transaction (one fsync, one hold of SQLite's write lock, which
                # the sidecar's other writers then need not wait for) stores it all.
                until = time.monotonic() + self._linger_s
                while not self._closed and not self._waiting and len(self._rows) < self._max_batch:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                n = min(len(self._rows), self._max_batch)
                batch = [self._rows.popleft() for _ in range(n)]
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(self._table), batch)
            except Exception:
                log.exception("could not write %d %s rows", len(batch), self._table.name)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every row queued before this call is stored (or its batch failed)."""
        with self._cond:
            target = self._queued
            self._waiting += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    self._cond.wait()
            finally:
                self._waiting -= 1

    def close(self) -> None:
        """Store what is queued and stop the thread; later ``add`` calls raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
