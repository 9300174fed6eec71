"""Replicas on one Postgres: a change feed every replica tails, and leases for background work.

Every replica keeps FAISS, lexical and guard indexes as caches of the shared database. A component that
changes cached state publishes a small payload inside its own write transaction (``ChangeFeed.publish``);
every other replica's ``FeedTailer`` reads the rows after its last sequence and hands each to the
component's ``apply_remote_change(scope, payload)``, which applies just that delta (no full rebuild).

- Ordering: on Postgres the insert takes a transaction-scoped advisory lock first, so rows commit in
  ``seq`` order and a reader that has seen ``seq = n`` can never later find a row ``< n`` appear.
- Wake-up: ``pg_notify`` in the same transaction (delivered at commit) wakes the tailers at once; they
  also poll every ``poll_interval_s`` in case a notification is lost (e.g. across a reconnect).
- Start-up: a replica records the feed head before rebuilding its caches from the database and replays
  everything after it, so nothing committed during the rebuild is missed (handlers are idempotent).
- Failures and growth: a handler that fails is retried before the rows after it (``FeedTailer``); rows older
  than ``FeedTailer.RETENTION`` (7 days) are pruned hourly by one replica at a time.
- Leases: ``PgLeases.hold(name)`` is ``pg_try_advisory_lock`` on a dedicated connection: background work
  runs on one replica per name, and the lease is released by Postgres if that replica dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import delete, func, insert, select, text

from core.sqlread import reading
from runtime.db import Database
from runtime.schema import change_feed

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "agentrt_changes"
# Constant key of the advisory lock that serialises feed inserts (commit order = seq order).
_FEED_LOCK_KEY = 0x61677274  # "agrt"

FEED_LAG = Histogram("agentrt_replication_lag_seconds", "Commit-to-apply lag of changes from other replicas",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FEED_APPLIED = Counter("agentrt_replication_applied_total", "Changes applied from other replicas", ["component"])
FEED_ERRORS = Counter("agentrt_replication_errors_total", "Changes whose handler failed", ["component"])

Handler = Callable[[str, dict[str, Any]], None]


class ChangeFeed:
    """Writes change rows (``publish``) and reads them back in order (``read_after``)."""

    def __init__(self, db: Database, replica_id: str):
        self.db = db
        self.replica_id = replica_id
        self._postgres = db.dialect == "postgresql"

    def publish(self, connection: Any, component: str, scope: str, payload: dict[str, Any]) -> None:
        """Record a change inside the caller's transaction (``connection`` is a SQLAlchemy Connection)."""
        if self._postgres:
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FEED_LOCK_KEY})
        connection.execute(insert(change_feed).values(
            component=component, scope=scope, origin=self.replica_id,
            payload=json.dumps(payload, separators=(",", ":")), created_at=datetime.now(UTC)))
        if self._postgres:
            connection.execute(text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})

    def head(self) -> int:
        """The newest sequence number (0 when the feed is empty)."""
        with reading(self.db.engine) as conn:
            return int(conn.execute(select(func.coalesce(func.max(change_feed.c.seq), 0))).scalar_one())

    def read_after(self, seq: int, limit: int = 1000) -> list[Any]:
        """Rows with ``seq > seq`` in order, at most ``limit``."""
        with reading(self.db.engine) as conn:
            return list(conn.execute(
                select(change_feed).where(change_feed.c.seq > seq).order_by(change_feed.c.seq).limit(limit)))

    def prune(self, older_than: timedelta) -> int:
        """Delete rows older than ``older_than`` (a replica down for longer rebuilds from the database)."""
        cutoff = datetime.now(UTC) - older_than
        with self.db.engine.begin() as conn:
            return int(conn.execute(delete(change_feed).where(change_feed.c.created_at < cutoff)).rowcount or 0)


class FeedTailer:
    """Background thread applying other replicas' changes to this replica's caches.

    A handler that fails (the database briefly unreachable while it reloads a policy or a model) is retried,
    with the rows after it, after a back-off that doubles from ``poll_interval_s`` up to ``MAX_BACKOFF_S``; had
    the tailer moved past it, that replica would serve the stale policy or model until the next change of that
    scope. A change that still fails after ``MAX_ATTEMPTS`` is given up (logged and counted), so that one
    poisoned row cannot stop every later change.
    """

    MAX_ATTEMPTS = 8
    MAX_BACKOFF_S = 30.0
    #: Rows older than this are deleted (by one replica at a time, every PRUNE_EVERY_S): every replica reads
    #: the feed within seconds, and one that starts rebuilds its caches from the tables, not from the feed.
    #: Without it the table grew by a row per change for ever.
    RETENTION = timedelta(days=7)
    PRUNE_EVERY_S = 3600.0

    def __init__(self, feed: ChangeFeed, handlers: dict[str, Handler], start_seq: int, *,
                 poll_interval_s: float = 1.0):
        self.feed = feed
        self.handlers = handlers
        self.last_seq = start_seq
        self.poll_interval_s = poll_interval_s
        # (seq, failed attempts) of the row being retried.
        self._failing: tuple[int, int] = (0, 0)
        self._next_prune = time.monotonic() + self.PRUNE_EVERY_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replication-tailer", daemon=True)
        self._listen_conn: Any = None
        self.caught_up = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                self._listen_conn.close()

    def apply_available(self) -> int:
        """Apply every row after ``last_seq`` now; returns how many rows were read.

        An empty payload means "reload this scope" (guards, tools): one guard feedback commits several
        such rows, and within a batch only the last of each (component, scope) needs applying. Rows with a
        payload (memory deltas) are applied one by one, in order.
        When a handler fails it stops there: ``last_seq`` stays just before that row, ``retry_pending`` is true,
        and the tailer's thread tries again after a back-off.
        """
        total = 0
        while True:
            rows = self.feed.read_after(self.last_seq)
            foreign = [row for row in rows if row.origin != self.feed.replica_id]
            last_reload = {(row.component, row.scope): i for i, row in enumerate(foreign) if row.payload in ("{}", "")}
            for i, row in enumerate(foreign):
                wanted = last_reload.get((row.component, row.scope), i) == i or row.payload not in ("{}", "")
                if wanted and not self._apply(row):
                    # Handlers are idempotent: rows before this one that are read again apply harmlessly.
                    self.last_seq = int(row.seq) - 1
                    return total
            if rows:
                self.last_seq = int(rows[-1].seq)
            total += len(rows)
            if len(rows) < 1000:
                return total

    @property
    def retry_pending(self) -> bool:
        """Whether a change failed and waits to be applied again."""
        return self._failing[1] > 0

    def _apply(self, row: Any) -> bool:
        """Apply one row; False when its handler failed and it is to be retried."""
        handler = self.handlers.get(row.component)
        if handler is None:
            return True
        seq = int(row.seq)
        try:
            handler(row.scope, json.loads(row.payload))
            FEED_APPLIED.labels(row.component).inc()
        except Exception:
            FEED_ERRORS.labels(row.component).inc()
            attempts = (self._failing[1] if self._failing[0] == seq else 0) + 1
            where = {"component": row.component, "scope": row.scope, "seq": seq, "attempts": attempts}
            if attempts < self.MAX_ATTEMPTS:
                self._failing = (seq, attempts)
                log.warning("applying a replicated change failed; retrying it", exc_info=True, extra=where)
                return False
            log.exception("applying a replicated change failed %d times; giving it up", attempts, extra=where)
        self._failing = (0, 0)
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        FEED_LAG.observe(max(0.0, (datetime.now(UTC) - created).total_seconds()))
        return True

    def _listen(self) -> Any:
        import psycopg

        url = self.feed.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def _wait(self) -> None:
        """Sleep until a notification arrives or the poll interval passes."""
        if self.feed.db.dialect != "postgresql":
            self._stop.wait(self.poll_interval_s)
            return
        try:
            if self._listen_conn is None or self._listen_conn.closed:
                self._listen_conn = self._listen()
            for _ in self._listen_conn.notifies(timeout=self.poll_interval_s, stop_after=1):
                pass
        except Exception as exc:  # database restarting: back off, reconnect next time
            log.warning("change feed listener lost its connection: %s", exc.__class__.__name__)
            with contextlib.suppress(Exception):
                if self._listen_conn is not None:
                    self._listen_conn.close()
            self._listen_conn = None
            self._stop.wait(self.poll_interval_s)

    def prune(self) -> int:
        """Delete feed rows older than ``RETENTION`` unless another replica holds the pruning lease; returns how
        many rows were deleted."""
        with PgLeases(self.feed.db).hold("change-feed-prune") as held:
            return self.feed.prune(self.RETENTION) if held else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.PRUNE_EVERY_S
                try:
                    pruned = self.prune()
                    if pruned:
                        log.info("change feed pruned", extra={"rows": pruned})
                except Exception as exc:
                    log.warning("change feed prune failed: %s", exc.__class__.__name__)
            try:
                self.apply_available()
                if self.retry_pending:
                    self._stop.wait(min(self.MAX_BACKOFF_S, self.poll_interval_s * 2 ** (self._failing[1] - 1)))
                    continue
                self.caught_up.set()
            except Exception as exc:
                log.warning("change feed read failed: %s", exc.__class__.__name__)
                self._stop.wait(self.poll_interval_s)
                continue
            self._wait()


class PgLeases:
    """Leases as Postgres session-level advisory locks on dedicated connections."""

    def __init__(self, db: Database):
        self.db = db

    @staticmethod
    def key(name: str) -> int:
        """A stable signed 64-bit key for a lease name."""
        high = zlib.crc32(name.encode())
        low = zlib.crc32(name.encode()[::-1])
        value = (high << 32) | low
        return value - (1 << 64) if value >= (1 << 63) else value

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        key = self.key(name)
        with self.db.engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    with contextlib.suppress(Exception):
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until true or ``timeout`` passes (used by tests and the replica benchmark)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
