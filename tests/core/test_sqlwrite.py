"""lock_for_write: two transactions on one key run one after the other, on every backend."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from core.sqlwrite import advisory_key, lock_for_write


def test_keys_are_stable_signed_64_bit_and_distinct() -> None:
    a, b = advisory_key("gates", "ns", "retrieve"), advisory_key("gates", "ns", "escalate")
    assert a == advisory_key("gates", "ns", "retrieve") and a != b
    assert all(-(2**63) <= k < 2**63 for k in (a, b))
    assert advisory_key("a", "bc") != advisory_key("ab", "c")


def test_read_then_write_under_the_lock_loses_no_update(db_url: str) -> None:
    from runtime.db import create_db_engine

    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO counter VALUES (1, 0)"))

    def bump() -> None:
        for _ in range(10):
            with engine.begin() as conn:
                lock_for_write(conn, "counter", "1")
                n = conn.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar_one()
                time.sleep(0.002)  # widen the window between the read and the write
                conn.execute(sa.text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar_one() == 40
    engine.dispose()
