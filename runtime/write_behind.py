"""Write-behind for record rows nobody waits on (gate decisions, answer selections).

A durable INSERT on SQLite costs an fsync (several milliseconds); a gate decision or a selection is an
audit record that the caller does not need stored before it gets its answer. ``RowWriter`` queues the
rows, and one daemon thread inserts what piled up within ``linger_s`` of the first in one transaction.
``flush()`` waits until every row queued so far is stored — code that reads or updates those rows
calls it first, so a client always sees its own records — and ``close()`` (called on shutdown) flushes
and stops the thread.

A batch holds rows of unrelated calls, each already acknowledged to its caller, so one bad row must not cost
the others: a batch the database refuses is split in halves and retried until the refused row stands alone,
and only that row is dropped (logged with its id). A transient error (a lost connection, a lock timeout, a
Postgres restart or serialization failure: ``OperationalError``) is retried with bounded backoff before the
batch is given up. Neither ever blocks the callers; ``flush`` waits for the retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, insert
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)


T = TypeVar("T")

#: Pauses before the retries of a batch that failed with a transient error (about 3 s in all, then dropped).
RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 1.5)

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


def _first_line(exc: BaseException) -> str:
    """The driver's message of a database error without SQLAlchemy's statement and parameters."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


class RowWriter:
    """Queue of rows for one table, inserted in batches by a background thread."""

    def __init__(
        self,
        engine: Engine,
        table: Table,
        *,
        max_batch: int = 512,
        linger_s: float = 0.02,
        durable: bool = False,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ):
        # durable: ``add`` inserts the row in its caller's thread and returns once it is committed (raising
        # what the insert raised): for deployments where every id handed out must survive a kill -9.
        self._durable = durable
        self._engine = engine
        self._table = table
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._retry_delays_s = tuple(retry_delays_s)
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
                self._store(batch)
            except Exception:  # never let the thread die: later rows and flush() depend on it
                log.exception("could not write %d %s rows", len(batch), self._table.name)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """One transaction for ``rows``, retried after a transient error; raises what the last attempt raised."""
        for delay in (*self._retry_delays_s, None):
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(self._table), rows)
                return
            except OperationalError as exc:
                if delay is None:
                    raise
                log.warning("writing %d %s rows failed (%s); retrying in %.2f s", len(rows), self._table.name,
                            _first_line(exc), delay)
                time.sleep(delay)

    def _store(self, rows: list[dict[str, Any]]) -> None:
        """Store ``rows``; where the database refuses the batch, store every row it accepts and drop (and log)
        only the ones it refuses, found by halving. A transient error that outlasts the retries drops the
        batch, halving would only repeat it."""
        try:
            self._insert(rows)
        except OperationalError:
            log.exception("dropped %d %s rows: the database stayed unavailable", len(rows), self._table.name)
        except Exception as exc:
            if len(rows) == 1:
                # The key only: the row's other values are caller data and may be large.
                key = {col.name: rows[0].get(col.name) for col in self._table.primary_key.columns}
                log.error("dropped a %s row the database refused (%s): %s", self._table.name, key, _first_line(exc))
                return
            middle = len(rows) // 2
            self._store(rows[:middle])
            self._store(rows[middle:])

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
