"""The change feed and leases on a real Postgres (runtime/replication.py)."""

from __future__ import annotations

import threading

from sqlalchemy import text

from runtime.db import Database
from runtime.replication import ChangeFeed, FeedTailer, PgLeases, wait_for


def _db(url: str) -> Database:
    db = Database(url)
    db.migrate()
    return db


def test_published_changes_reach_other_replicas_in_order_and_not_the_origin(pg_url: str) -> None:
    a_db, b_db = _db(pg_url), _db(pg_url)
    a, b = ChangeFeed(a_db, "replica-a"), ChangeFeed(b_db, "replica-b")
    seen_a: list[tuple[str, dict]] = []
    seen_b: list[tuple[str, dict]] = []
    tail_a = FeedTailer(a, {"memory": lambda s, p: seen_a.append((s, p))}, a.head(), poll_interval_s=5)
    tail_b = FeedTailer(b, {"memory": lambda s, p: seen_b.append((s, p))}, b.head(), poll_interval_s=5)
    tail_a.start()
    tail_b.start()
    try:
        for i in range(20):
            with a_db.engine.begin() as conn:
                a.publish(conn, "memory", "t/ns", {"i": i})
        # woken by NOTIFY well before the 5 s poll interval would have
        assert wait_for(lambda: len(seen_b) == 20, timeout=4)
        assert [p["i"] for _, p in seen_b] == list(range(20))
        assert seen_a == []  # the origin already applied its own change
    finally:
        tail_a.stop()
        tail_b.stop()
        a_db.dispose()
        b_db.dispose()


def test_a_rolled_back_transaction_publishes_nothing(pg_url: str) -> None:
    db = _db(pg_url)
    feed = ChangeFeed(db, "a")
    head = feed.head()
    try:
        with db.engine.begin() as conn:
            feed.publish(conn, "guards", "t/ns", {"x": 1})
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    assert feed.read_after(head) == []
    db.dispose()


def test_concurrent_publishers_commit_in_sequence_order(pg_url: str) -> None:
    db = _db(pg_url)
    feeds = [ChangeFeed(db, f"r{i}") for i in range(4)]
    seen: list[int] = []
    reader = FeedTailer(ChangeFeed(db, "reader"), {"memory": lambda s, p: seen.append(p["n"])}, 0,
                        poll_interval_s=0.01)
    reader.start()

    def publish(feed: ChangeFeed, base: int) -> None:
        for n in range(base, base + 50):
            with db.engine.begin() as conn:
                feed.publish(conn, "memory", "t/ns", {"n": n})
                conn.execute(text("SELECT pg_sleep(0.001)"))  # widen the commit window

    threads = [threading.Thread(target=publish, args=(f, i * 1000)) for i, f in enumerate(feeds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_for(lambda: len(seen) == 200, timeout=10)
    reader.stop()
    # the reader never skipped a row that committed late: every change arrived exactly once
    assert sorted(seen) == sorted(n for i in range(4) for n in range(i * 1000, i * 1000 + 50))
    db.dispose()


def test_a_lease_is_held_by_one_replica_and_freed_when_its_holder_dies(pg_url: str) -> None:
    a_db, b_db = _db(pg_url), _db(pg_url)
    a, b = PgLeases(a_db), PgLeases(b_db)
    with a.hold("memory-consolidate:t/ns") as got_a:
        assert got_a
        with b.hold("memory-consolidate:t/ns") as got_b:
            assert not got_b
        with b.hold("memory-consolidate:t/other") as other:
            assert other
    with b.hold("memory-consolidate:t/ns") as got_b:
        assert got_b

    # the holder's connection dies (replica killed): Postgres frees the lease
    cm = a.hold("guards-evolve:t/ns")
    assert cm.__enter__()
    with b_db.engine.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = :lo"),
            {"lo": PgLeases.key("guards-evolve:t/ns") & 0xFFFFFFFF})
        conn.commit()
    assert wait_for(lambda: b.hold("guards-evolve:t/ns").__enter__(), timeout=5)
    a_db.dispose()
    b_db.dispose()


def test_scope_reloads_coalesce_within_a_batch_while_deltas_apply_in_order(pg_url: str) -> None:
    db = _db(pg_url)
    writer, reader = ChangeFeed(db, "writer"), ChangeFeed(db, "reader")
    reloads: list[str] = []
    deltas: list[int] = []
    tailer = FeedTailer(
        reader,
        {"guards": lambda s, _p: reloads.append(s), "memory": lambda _s, p: deltas.append(p["i"])},
        reader.head(),
    )
    try:
        # One guard feedback commits several reload rows; memory deltas are interleaved with them.
        for i in range(4):
            with db.engine.begin() as conn:
                writer.publish(conn, "guards", "t/a", {})
                writer.publish(conn, "memory", "t/a", {"i": i})
        with db.engine.begin() as conn:
            writer.publish(conn, "guards", "t/b", {})
        assert tailer.apply_available() == 9
        assert sorted(reloads) == ["t/a", "t/b"]
        assert deltas == [0, 1, 2, 3]
        assert tailer.last_seq == reader.head()
    finally:
        db.dispose()


def test_a_change_whose_handler_fails_is_retried_before_the_changes_after_it(pg_url: str) -> None:
    """A handler that fails once (the database briefly gone while a gate reloads its policy) used to lose the
    change for good: the tailer moved past it and the replica kept the stale policy."""
    db = _db(pg_url)
    writer, reader = ChangeFeed(db, "writer"), ChangeFeed(db, "reader")
    applied: list[int] = []
    failures = {1: 1}  # change 1 fails once

    def handler(_scope: str, payload: dict) -> None:
        if failures.get(payload["i"], 0) > 0:
            failures[payload["i"]] -= 1
            raise RuntimeError("database unreachable")
        applied.append(payload["i"])

    tailer = FeedTailer(reader, {"gates": handler}, reader.head())
    try:
        for i in range(3):
            with db.engine.begin() as conn:
                writer.publish(conn, "gates", "t/a", {"i": i})
        tailer.apply_available()
        assert applied == [0] and tailer.retry_pending
        tailer.apply_available()
        assert applied == [0, 1, 2] and not tailer.retry_pending
        assert tailer.last_seq == reader.head()
    finally:
        db.dispose()


def test_a_change_that_keeps_failing_is_given_up_so_later_changes_still_apply(pg_url: str) -> None:
    db = _db(pg_url)
    writer, reader = ChangeFeed(db, "writer"), ChangeFeed(db, "reader")
    applied: list[int] = []

    def handler(_scope: str, payload: dict) -> None:
        if payload["i"] == 0:
            raise ValueError("a payload this replica cannot apply")
        applied.append(payload["i"])

    tailer = FeedTailer(reader, {"memory": handler}, reader.head())
    try:
        for i in range(2):
            with db.engine.begin() as conn:
                writer.publish(conn, "memory", "t/a", {"i": i})
        for _ in range(FeedTailer.MAX_ATTEMPTS - 1):
            tailer.apply_available()
            assert applied == [] and tailer.retry_pending
        tailer.apply_available()
        assert applied == [1] and not tailer.retry_pending
        assert tailer.last_seq == reader.head()
    finally:
        db.dispose()


def test_old_feed_rows_are_pruned_by_one_replica_at_a_time(pg_url: str) -> None:
    db = _db(pg_url)
    writer, reader = ChangeFeed(db, "writer"), ChangeFeed(db, "reader")
    tailer = FeedTailer(reader, {}, reader.head())
    try:
        for i in range(3):
            with db.engine.begin() as conn:
                writer.publish(conn, "memory", "t/a", {"i": i})
        with db.engine.begin() as conn:  # the first two are eight days old
            conn.execute(text("UPDATE change_feed SET created_at = created_at - interval '8 days' WHERE seq <= "
                              "(SELECT min(seq) + 1 FROM change_feed)"))
        # Another replica prunes right now: this one leaves it to that replica.
        with PgLeases(db).hold("change-feed-prune") as held:
            assert held
            assert tailer.prune() == 0
        assert tailer.prune() == 2
        assert [r.payload for r in reader.read_after(0)] == ['{"i":2}']
    finally:
        db.dispose()
