"""Guard and tool changes announce themselves to other replicas inside the transaction that makes them.

A publisher that fails must take the change down with it (so a change is never committed without its
feed row), and only changes of cached state publish — audit records and no-op re-registrations do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection

from guards.model import Decision, Exemplar, Label, PolicyRule
from guards.sql import SqlGuardStore
from runtime.db import Database
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition, ToolPolicy
from tools.sql_store import SqlToolStore


class Recorder:
    def __init__(self) -> None:
        self.scopes: list[str] = []
        self.fail = False

    def __call__(self, conn: Connection, scope: str) -> None:
        assert conn.in_transaction()
        if self.fail:
            raise RuntimeError("feed insert failed")
        self.scopes.append(scope)


@pytest.fixture()
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'agentrt.db'}")
    database.migrate()
    yield database
    database.dispose()


def _tool(description: str = "Send an e-mail") -> ToolDefinition:
    return ToolDefinition("send_email", description, {"type": "object"}, ExecutorSpec(ExecutorKind.HTTP, url="http://x/"))


def test_tool_changes_publish_once_each_and_a_failed_publish_undoes_the_change(db: Database) -> None:
    publisher = Recorder()
    store = SqlToolStore(db.engine, publisher=publisher)
    store.put_tool("t/a", _tool())
    store.put_tool("t/a", _tool())  # same content: no new version, nothing to announce
    store.set_policy("t/a", ToolPolicy())
    store.delete_tool("t/a", "send_email")
    assert publisher.scopes == ["t/a", "t/a", "t/a"]

    publisher.fail = True
    with pytest.raises(RuntimeError, match="feed insert failed"):
        store.put_tool("t/b", _tool("A new version"))
    assert store.list_tools("t/b") == []  # rolled back with its feed row


def test_guard_changes_publish_and_a_failed_publish_undoes_the_change(db: Database) -> None:
    publisher = Recorder()
    store = SqlGuardStore(db.engine, create_tables=False, publisher=publisher)
    rule = PolicyRule("no-rm", Decision.BLOCK, spec={"tools": ["shell.*"]})
    store.put_rules("t/a", [rule])
    leaf = Exemplar(id=0, category="destructive", text="rm -rf /", label=Label.HARMFUL, stage_group="action")
    store.add_leaves("t/a", [leaf], np.ones((1, 4), dtype=np.float32))
    store.append_event("t/a", "feedback", "one leaf", {})
    assert publisher.scopes == ["t/a", "t/a", "t/a"]

    publisher.fail = True
    with pytest.raises(RuntimeError, match="feed insert failed"):
        store.put_rules("t/b", [rule])
    with pytest.raises(RuntimeError, match="feed insert failed"):
        store.add_leaves("t/b", [leaf], np.ones((1, 4), dtype=np.float32))
    assert store.list_rules("t/b") == []
    assert store.load_leaves("t/b")[0] == []
