"""RowWriter: rows written behind in batches, or stored before ``add`` returns on a durable writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, exc, func, select

from runtime.db import create_db_engine
from runtime.write_behind import RowWriter

META = MetaData()
ROWS = Table("rows", META, Column("id", Integer, primary_key=True), Column("text", String(20)))


def _count(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ROWS)).scalar_one())


def test_durable_writer_stores_before_add_returns_and_raises_what_the_insert_raised(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    META.create_all(engine)
    durable = RowWriter(engine, ROWS, durable=True, linger_s=10.0)
    durable.add({"id": 1, "text": "a"})
    assert _count(engine) == 1  # no flush, and a linger that would hold a queued row for 10 s
    with pytest.raises(exc.IntegrityError):
        durable.add({"id": 1, "text": "again"})
    durable.close()
    with pytest.raises(RuntimeError, match="closed"):
        durable.add({"id": 2, "text": "b"})
    # Written behind, the row waits out the linger (or a flush); a failed batch is logged, not raised.
    behind = RowWriter(engine, ROWS, linger_s=10.0)
    behind.add({"id": 3, "text": "c"})
    assert _count(engine) == 1
    behind.flush()
    assert _count(engine) == 2
    behind.add({"id": 3, "text": "dup"})
    behind.flush()
    assert _count(engine) == 2
    behind.close()
    engine.dispose()


def test_a_row_the_database_refuses_costs_only_itself_not_its_batch(db_url: str) -> None:
    """A batch holds rows of unrelated, already acknowledged calls: one bad row (here a duplicate key; on
    Postgres also an over-long value) used to drop the whole batch."""
    engine = create_db_engine(db_url)
    META.create_all(engine)
    writer = RowWriter(engine, ROWS, linger_s=10.0)  # everything below lands in one batch
    writer.add({"id": 1, "text": "first"})
    writer.flush()
    rows = [{"id": i, "text": f"row {i}"} for i in range(2, 40)]
    rows.insert(17, {"id": 1, "text": "duplicate of a stored row"})
    if engine.dialect.name == "postgresql":  # SQLite does not enforce VARCHAR lengths
        rows.insert(30, {"id": 99, "text": "x" * 21})
    for row in rows:
        writer.add(row)
    writer.flush()
    with engine.connect() as conn:
        stored = dict(conn.execute(select(ROWS.c.id, ROWS.c.text)).all())
    writer.close()
    META.drop_all(engine)
    engine.dispose()
    assert stored == {1: "first", **{i: f"row {i}" for i in range(2, 40)}}


def test_a_transient_error_is_retried_before_the_batch_is_given_up(tmp_path: Path) -> None:
    """An OperationalError (lost connection, lock timeout, a restarting Postgres) passes: the batch is retried
    with backoff instead of being dropped at the first failure."""
    from sqlalchemy import event

    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    META.create_all(engine)
    failures = {"left": 2}

    @event.listens_for(engine, "before_cursor_execute")
    def _unavailable(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT") and failures["left"]:
            failures["left"] -= 1
            raise exc.OperationalError(statement, parameters, Exception("server closed the connection"))

    writer = RowWriter(engine, ROWS, linger_s=10.0, retry_delays_s=(0.01, 0.01, 0.01))
    for i in range(5):
        writer.add({"id": i, "text": str(i)})
    writer.flush()
    assert _count(engine) == 5 and failures["left"] == 0
    # An outage longer than the retries drops the batch (logged), and the writer keeps working afterwards.
    failures["left"] = 10
    writer.add({"id": 10, "text": "lost"})
    writer.flush()
    failures["left"] = 0
    writer.add({"id": 11, "text": "after"})
    writer.close()
    assert _count(engine) == 6
    engine.dispose()
