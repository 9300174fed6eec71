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
