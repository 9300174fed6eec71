"""One conformance suite for the rate-limit counters (``guards.rules.RateCounter``): the in-process
``RateLimiter`` and ``SqlRateLimiter`` on SQLite and Postgres count the same windows the same way; the SQL one
also shares its counts between limiters on one database (replicas) and stays exact under concurrent calls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from guards import schema as t
from guards.rules import RateCounter, RateLimiter
from guards.sql import SqlRateLimiter
from runtime.db import Database
from tests.conftest import backend_url

KEY = ("t/a", "rl", "send_mail")


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_counter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], RateCounter]]:
    """A factory of counters sharing one store: the same in-process limiter, or limiters on one database (each
    with its own engine, as replicas have)."""
    if request.param == "memory":
        shared = RateLimiter()
        yield lambda: shared
        return
    with backend_url(request.param, tmp_path) as url:
        Database(url).migrate()
        dbs: list[Database] = []

        def make() -> RateCounter:
            dbs.append(Database(url))
            return SqlRateLimiter(dbs[-1].engine)

        yield make
        for db in dbs:
            db.dispose()


def test_calls_leave_the_window_once_it_has_passed(make_counter) -> None:
    counter = make_counter()
    assert [counter.hit(KEY, 3, 10.0, now=at) for at in (100.0, 101.0, 102.0)] == [1, 2, 3]
    # A call exactly per_seconds old is out (the window is (now - per_seconds, now]).
    assert counter.hit(KEY, 3, 10.0, now=110.0) == 3  # 101, 102, 110
    assert counter.hit(KEY, 3, 10.0, now=112.5) == 2  # 110, 112.5
    assert counter.hit(KEY, 3, 10.0, now=200.0) == 1


def test_every_part_of_the_key_counts_apart(make_counter) -> None:
    counter = make_counter()
    assert counter.hit(KEY, 5, 60.0, now=1.0) == 1
    assert counter.hit(KEY, 5, 60.0, now=2.0) == 2
    for other in (("t/b", "rl", "send_mail"), ("t/a", "rl2", "send_mail"), ("t/a", "rl", "send_sms")):
        assert counter.hit(other, 5, 60.0, now=3.0) == 1, other
    assert counter.hit(KEY, 5, 60.0, now=4.0) == 3


def test_peek_and_a_dry_run_read_the_live_counts_and_record_nothing(make_counter) -> None:
    counter = make_counter()
    dry = counter.dry()
    assert counter.peek(KEY, 2, 60.0, now=1.0) == 1
    assert [dry.hit(KEY, 2, 60.0, now=1.0 + i) for i in range(3)] == [1, 1, 1]
    counter.hit(KEY, 2, 60.0, now=5.0)
    assert dry.hit(KEY, 2, 60.0, now=6.0) == 2 and dry.peek(KEY, 2, 60.0, now=6.0) == 2
    assert counter.peek(KEY, 2, 60.0, now=6.0) == 2
    assert counter.hit(KEY, 2, 60.0, now=7.0) == 2  # the dry calls were never counted


def test_a_second_counter_on_the_same_store_sees_the_calls_of_the_first(make_counter) -> None:
    """Two replicas behind a load balancer: a limit of 3 holds for both together, not 3 on each."""
    a, b = make_counter(), make_counter()
    seen = [(a if i % 2 else b).hit(KEY, 5, 60.0, now=10.0 + i) for i in range(6)]
    assert seen == [1, 2, 3, 4, 5, 6]


def test_counts_stop_at_one_past_the_limit(make_counter) -> None:
    """All a limit needs to know; counting on cost a database scan of every call a blocked loop piled up."""
    counter = make_counter()
    assert [counter.hit(KEY, 2, 60.0, now=float(i)) for i in range(6)] == [1, 2, 3, 3, 3, 3]
    assert counter.peek(KEY, 2, 60.0, now=6.0) == 3 and counter.dry().hit(KEY, 2, 60.0, now=6.0) == 3
    # The blocked calls were counted all the same: the window holds six calls until they age out.
    assert counter.hit(KEY, 10, 60.0, now=7.0) == 7


def test_concurrent_calls_each_get_their_own_count(make_counter) -> None:
    """Calls racing on one key from several threads (and, for SQL, several engines) are counted one after the
    other: the counts are exactly 1..n, so exactly max_calls of them pass a limit."""
    counters = [make_counter() for _ in range(4)]
    n = 24
    barrier = threading.Barrier(8)

    def one(i: int) -> int:
        if i < 8:
            barrier.wait()
        return counters[i % 4].hit(KEY, n, 3600.0)  # the store's own clock

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(one, range(n)))
    assert sorted(counts) == list(range(1, n + 1))


def test_a_tool_name_of_any_length_is_a_key(make_counter) -> None:
    counter = make_counter()
    long_name = ("t/a", "rl", "x" * 5000 + "é\x00")
    assert [counter.hit(long_name, 1, 60.0, now=float(i)) for i in range(2)] == [1, 2]
    assert counter.hit(("t/a", "rl", "x" * 5000), 1, 60.0, now=2.0) == 1


def test_the_store_clock_counts_calls_without_an_explicit_time(make_counter) -> None:
    counter = make_counter()
    assert [counter.hit(KEY, 3, 3600.0) for _ in range(3)] == [1, 2, 3]
    assert counter.peek(KEY, 3, 3600.0) == 4


# --- SQL only ----------------------------------------------------------------------------------------------------
@pytest.fixture
def sql_db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.migrate()
    yield db
    db.dispose()


def _rows(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.guard_rate_calls)).scalar_one())


def test_a_key_keeps_only_the_calls_of_its_window_and_the_sweep_drops_abandoned_keys(sql_db: Database) -> None:
    counter = SqlRateLimiter(sql_db.engine)
    for i in range(50):
        counter.hit(KEY, 3, 10.0, now=float(i))
    assert _rows(sql_db) == 10  # 40..49: a hit drops its key's calls that left the window
    for i in range(5):
        counter.hit(("t/a", "rl", f"tool{i}"), 3, 10.0, now=49.0)
    assert counter.sweep(now=100.0) == 15 and _rows(sql_db) == 0


def test_the_sweep_keeps_every_call_of_a_key_whose_newest_call_is_in_its_window(sql_db: Database) -> None:
    """A widened window (10 s -> 100 s) keeps the calls made under the old one: the sweep used to drop each row
    at its own old expiry, and the next call under the wider window counted too few."""
    counter = SqlRateLimiter(sql_db.engine)
    for i in range(5):
        counter.hit(KEY, 50, 10.0, now=float(i))
    counter.hit(KEY, 50, 100.0, now=5.0)
    assert counter.sweep(now=50.0) == 0
    assert counter.hit(KEY, 50, 100.0, now=60.0) == 7


class _FailingSweep(SqlRateLimiter):
    SWEEP_EVERY = 2

    def sweep(self, now: float | None = None) -> int:
        raise RuntimeError("the sweep's transaction failed")


def test_a_failed_sweep_does_not_fail_the_counted_call(sql_db: Database) -> None:
    counter = _FailingSweep(sql_db.engine)
    assert [counter.hit(KEY, 5, 60.0, now=float(i)) for i in range(4)] == [1, 2, 3, 4]


@pytest.mark.postgres
def test_a_call_waits_for_the_keys_lock_only_so_long(pg_url: str) -> None:
    """A replica stalled inside its call's transaction held every other replica's checks of the key (and their
    worker threads) until Postgres dropped its session; now a check waits LOCK_TIMEOUT_S and fails UNAVAILABLE."""
    import time

    from sqlalchemy.exc import OperationalError

    from core.sqlwrite import lock_for_write

    db = Database(pg_url)
    db.migrate()
    counter = SqlRateLimiter(db.engine)
    counter.LOCK_TIMEOUT_S = 0.2
    try:
        with db.engine.begin() as stalled:
            lock_for_write(stalled, "guard-rate", SqlRateLimiter._digest(KEY))
            started = time.monotonic()
            with pytest.raises(OperationalError, match="lock timeout"):
                counter.hit(KEY, 5, 60.0)
            assert time.monotonic() - started < 5
        assert counter.hit(KEY, 5, 60.0) == 1  # the timed-out call was not counted
    finally:
        db.dispose()


def test_the_sweep_runs_by_itself_every_so_many_calls(sql_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SqlRateLimiter, "SWEEP_EVERY", 8)
    counter = SqlRateLimiter(sql_db.engine)
    for i in range(7):
        counter.hit(("t/a", "rl", f"once{i}"), 3, 1.0, now=float(i))
    assert _rows(sql_db) == 7
    counter.hit(KEY, 3, 1.0, now=100.0)  # the eighth call sweeps every key whose window is over
    assert _rows(sql_db) == 1
