"""reading(): read-only transactions see committed data and, on SQLite, do not queue behind a writer."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from core.sqlread import reading


def _counter(db_url: str) -> sa.Engine:
    from runtime.db import create_db_engine

    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO counter VALUES (1, 0)"))
    return engine


def test_a_read_does_not_wait_for_a_write_in_flight_and_sees_the_last_commit(db_url: str) -> None:
    engine = _counter(db_url)
    read: list[int] = []

    def read_counter() -> None:
        with reading(engine) as conn:
            read.append(conn.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar_one())

    with engine.begin() as writer:  # holds SQLite's write lock (BEGIN IMMEDIATE) until it commits
        writer.execute(sa.text("UPDATE counter SET n = 1 WHERE id = 1"))
        reader = threading.Thread(target=read_counter)
        reader.start()
        # With BEGIN IMMEDIATE the read would wait for this commit (up to the 30 s busy timeout).
        reader.join(timeout=10)
        assert not reader.is_alive(), "the read queued behind the open write transaction"
        assert read == [0]  # the snapshot before the uncommitted write
    read_counter()
    assert read == [0, 1]  # the committed write, once it is committed
    engine.dispose()


def test_sqlite_writes_keep_queueing_behind_each_other(tmp_path: Path) -> None:
    """Only connections from reading() begin deferred: a write transaction still takes SQLite's lock at BEGIN,
    so a second writer waits instead of failing on a stale snapshot. (Postgres writers serialise per key with
    core.sqlwrite.lock_for_write instead.)"""
    engine = _counter(f"sqlite:///{tmp_path / 'db.sqlite'}")
    done = threading.Event()

    def second_writer() -> None:
        with engine.begin() as conn:
            n = conn.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar_one()
            conn.execute(sa.text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 10})
        done.set()

    with engine.begin() as writer:
        n = writer.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar_one()
        other = threading.Thread(target=second_writer)
        other.start()
        assert not done.wait(0.3)  # queued on the lock
        writer.execute(sa.text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 1})
    other.join(timeout=30)
    with reading(engine) as conn:
        assert conn.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar_one() == 11
    engine.dispose()
