"""One conformance suite for every ToolStore backend: in-memory, SQLite and Postgres."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select

from core.errors import NotFoundError
from runtime.db import create_db_engine
from tests.conftest import backend_url
from tools.model import (
    AuditRecord,
    ExecutorKind,
    ExecutorSpec,
    McpServerSpec,
    McpTransport,
    Outcome,
    Step,
    ToolDefinition,
    ToolPolicy,
    ToolPolicyPatch,
    utcnow,
)
from tools.schema import metadata, tool_mcp_servers
from tools.sql_store import SqlToolStore
from tools.store import InMemoryToolStore, ToolStore

A, B = "t1/ns", "t2/ns"


@contextmanager
def _engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    with backend_url(backend, tmp_path, "tools.db") as url:
        engine = create_db_engine(url)
        metadata.create_all(engine)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ToolStore]:
    if request.param == "memory":
        yield InMemoryToolStore()
        return
    with _engine(request.param, tmp_path) as engine:
        yield SqlToolStore(engine)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database with the tool tables, for SQL-only cases (a store with a publisher)."""
    with _engine(request.param, tmp_path) as engine:
        yield engine


def tool(name: str = "weather", description: str = "Get the weather", **kw: object) -> ToolDefinition:
    return ToolDefinition(
        name=name,
        description=description,
        input_schema={"type": "object", "properties": {"city": {"type": "string"}}},
        executor=ExecutorSpec(ExecutorKind.HTTP, url="http://127.0.0.1:9/weather"),
        **kw,  # type: ignore[arg-type]
    )


def test_versions_count_up_and_same_content_is_a_no_op(store: ToolStore) -> None:
    v1, created = store.put_tool(A, tool())
    assert (v1.version, created) == (1, True) and v1.created_at is not None
    again, created = store.put_tool(A, tool())
    assert (again.version, created) == (1, False)
    v2, created = store.put_tool(A, tool(description="Get the weather forecast"))
    assert (v2.version, created) == (2, True)
    assert store.get_tool(A, "weather").description == "Get the weather forecast"
    assert store.get_tool(A, "weather", 1).description == "Get the weather"
    assert [v.version for v in store.list_versions(A, "weather")] == [1, 2]


def test_definition_round_trips_every_field(store: ToolStore) -> None:
    d = tool(
        output_schema={"type": "object"},
        risk_tags=("network", "pii"),
        idempotent=True,
        timeout_s=2.5,
        max_concurrency=3,
        max_output_bytes=1000,
        max_retries=4,
    )
    d = replace(d, executor=replace(d.executor, headers={"x-key": "v"}, method="PUT"))
    stored, _ = store.put_tool(A, d)
    got = store.get_tool(A, "weather")
    assert got == stored
    assert replace(got, version=0, created_at=None) == d


def test_unregister_hides_tool_but_keeps_versions(store: ToolStore) -> None:
    store.put_tool(A, tool())
    assert store.delete_tool(A, "weather") == 1
    with pytest.raises(NotFoundError):
        store.get_tool(A, "weather")
    with pytest.raises(NotFoundError):
        store.delete_tool(A, "weather")
    assert store.list_tools(A) == []
    assert store.get_tool(A, "weather", 1).version == 1
    # Same content after an unregister is a new version: version numbers are never reused.
    again, created = store.put_tool(A, tool())
    assert (again.version, created) == (2, True)


def test_list_is_sorted_latest_live(store: ToolStore) -> None:
    store.put_tool(A, tool("b"))
    store.put_tool(A, tool("a"))
    store.put_tool(A, tool("a", description="newer"))
    store.put_tool(A, tool("c"))
    store.delete_tool(A, "c")
    assert [(t.name, t.version) for t in store.list_tools(A)] == [("a", 2), ("b", 1)]


def test_scopes_are_isolated(store: ToolStore) -> None:
    store.put_tool(A, tool())
    store.put_server(A, McpServerSpec("files", McpTransport.STDIO, command="x"))
    store.set_policy(A, ToolPolicy(memory_write=True))
    assert store.list_tools(B) == []
    with pytest.raises(NotFoundError):
        store.get_tool(B, "weather")
    with pytest.raises(NotFoundError):
        store.delete_tool(B, "weather")
    assert store.list_servers(B) == []
    with pytest.raises(NotFoundError):
        store.get_server(B, "files")
    assert store.get_policy(B) is None
    assert store.list_audit(B) == []


def test_unknown_names_raise_not_found(store: ToolStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_tool(A, "nope")
    with pytest.raises(NotFoundError):
        store.get_tool(A, "nope", 3)
    with pytest.raises(NotFoundError):
        store.remove_server(A, "nope")
    assert store.list_versions(A, "nope") == []


def test_servers_round_trip_and_replace(store: ToolStore) -> None:
    s = McpServerSpec(
        "files", McpTransport.STDIO, command="python", args=("-m", "srv"), env={"K": "v"}, risk_tags=("fs",)
    )
    store.put_server(A, s)
    store.put_server(A, replace(s, args=("-m", "srv2")))
    assert store.get_server(A, "files").args == ("-m", "srv2")
    h = McpServerSpec("web", McpTransport.STREAMABLE_HTTP, url="http://127.0.0.1:1/mcp", headers={"a": "b"})
    store.put_server(B, h)
    assert [(sc, sp.name) for sc, sp in store.list_servers()] == [(A, "files"), (B, "web")]
    assert store.list_servers(B) == [(B, h)]
    assert store.remove_server(A, "files") == []
    assert store.list_servers(A) == []


def mcp_tool(name: str, server: str = "lab", description: str = "d") -> ToolDefinition:
    executor = ExecutorSpec(ExecutorKind.MCP, mcp_server=server, mcp_tool=name)
    return replace(tool(name, description), executor=executor)


def test_sync_server_tools_puts_changed_and_unregisters_unlisted_ones(store: ToolStore) -> None:
    first = store.sync_server_tools(A, "lab", [mcp_tool("lab.add"), mcp_tool("lab.mul")])
    assert (first.created, first.removed, first.changed) == (["lab.add", "lab.mul"], [], True)
    # Another server's tool, a user's MCP tool without the prefix and a non-MCP "lab." tool are not the server's.
    store.put_tool(A, mcp_tool("other.add", server="other"))
    store.put_tool(A, mcp_tool("adder"))
    store.put_tool(A, tool("lab.http"))

    again = store.sync_server_tools(A, "lab", [mcp_tool("lab.add"), mcp_tool("lab.mul")])
    assert (again.created, again.removed, again.changed) == ([], [], False)
    second = store.sync_server_tools(A, "lab", [mcp_tool("lab.add", description="new"), mcp_tool("lab.sub")])
    assert (second.created, second.removed) == (["lab.add", "lab.sub"], ["lab.mul"])

    assert [t.name for t in store.list_tools(A)] == ["adder", "lab.add", "lab.http", "lab.sub", "other.add"]
    assert store.get_tool(A, "lab.add").version == 2
    assert store.sync_server_tools(B, "lab", []) == ([], [])


def _lab_with_neighbours(store: ToolStore) -> None:
    """Server "lab" (two imported tools, one by hand) next to server "other", a plain HTTP tool and scope B."""
    for scope in (A, B):
        store.put_server(scope, McpServerSpec("lab", McpTransport.STDIO, command="x"))
        store.sync_server_tools(scope, "lab", [mcp_tool("lab.add"), mcp_tool("lab.mul")])
    store.put_tool(A, mcp_tool("lab.add", description="v2"))  # a second version: all of them go
    store.put_tool(A, mcp_tool("adder"))  # registered by hand, but runs on lab
    store.put_server(A, McpServerSpec("other", McpTransport.STDIO, command="y"))
    store.sync_server_tools(A, "other", [mcp_tool("other.add", server="other")])
    store.put_tool(A, tool("lab.http"))  # named like lab's, but HTTP


def test_remove_server_unregisters_exactly_its_tools(store: ToolStore) -> None:
    _lab_with_neighbours(store)
    assert store.remove_server(A, "lab") == ["adder", "lab.add", "lab.mul"]

    assert [name for _, s in store.list_servers(A) for name in [s.name]] == ["other"]
    with pytest.raises(NotFoundError):
        store.get_server(A, "lab")
    assert [t.name for t in store.list_tools(A)] == ["lab.http", "other.add"]
    # Unregistered as by delete_tool: every version is kept but none is live, and a new one counts on.
    assert [v.version for v in store.list_versions(A, "lab.add")] == [1, 2]
    with pytest.raises(NotFoundError):
        store.delete_tool(A, "lab.add")
    assert store.put_tool(A, mcp_tool("lab.add"))[0].version == 3
    # Scope B's server of the same name is untouched.
    assert store.get_server(B, "lab").name == "lab"
    assert [t.name for t in store.list_tools(B)] == ["lab.add", "lab.mul"]

    with pytest.raises(NotFoundError):
        store.remove_server(A, "lab")
    with pytest.raises(NotFoundError):
        store.remove_server(A, "nope")
    assert [t.name for t in store.list_tools(A)] == ["lab.add", "lab.http", "other.add"]


def _all_at_once(n: int, call: Callable[[int], None]) -> None:
    """``call(0)`` ... ``call(n - 1)`` in n threads released together, and wait for them."""
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_removes_of_one_server_remove_it_once(store: ToolStore) -> None:
    _lab_with_neighbours(store)
    n = 6
    results: list[list[str] | str] = []

    def remove(_: int) -> None:
        try:
            results.append(store.remove_server(A, "lab"))
        except NotFoundError:
            results.append("not found")

    _all_at_once(n, remove)
    assert sorted(results, key=str) == [["adder", "lab.add", "lab.mul"]] + ["not found"] * (n - 1)
    assert [t.name for t in store.list_tools(A)] == ["lab.http", "other.add"]


def test_concurrent_puts_of_one_server_all_succeed_and_one_wins(store: ToolStore) -> None:
    n = 6
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            store.put_server(A, McpServerSpec("lab", McpTransport.STDIO, command=f"server-{i}"))
        except BaseException as exc:  # an IntegrityError from two inserts of one name, before the lock
            errors.append(exc)

    _all_at_once(n, put)
    assert errors == []
    assert [(scope, spec.name) for scope, spec in store.list_servers(A)] == [(A, "lab")]
    assert store.get_server(A, "lab").command in {f"server-{i}" for i in range(n)}


def test_remove_server_is_one_transaction(sql_engine: Engine) -> None:
    """A failure once the server row is gone (the change-feed publisher, called inside the write, fails when
    its transaction no longer sees the server) leaves the server and all its tools in place; a success
    announces the change once."""
    announced: list[str] = []
    fail = True

    def publisher(conn: Connection, scope: str) -> None:
        lab = select(tool_mcp_servers).where(tool_mcp_servers.c.scope == scope, tool_mcp_servers.c.name == "lab")
        gone = conn.execute(lab).first() is None
        if fail and gone:
            raise RuntimeError("feed insert failed")
        announced.append(scope)

    _lab_with_neighbours(SqlToolStore(sql_engine))
    store = SqlToolStore(sql_engine, publisher=publisher)
    before = ([t.name for t in store.list_tools(A)], store.list_servers(A), store.list_versions(A, "lab.add"))
    with pytest.raises(RuntimeError, match="feed insert failed"):
        store.remove_server(A, "lab")
    assert ([t.name for t in store.list_tools(A)], store.list_servers(A), store.list_versions(A, "lab.add")) == before
    assert store.get_server(A, "lab").name == "lab"

    fail = False
    announced.clear()
    assert store.remove_server(A, "lab") == ["adder", "lab.add", "lab.mul"]
    assert announced == [A]
    with pytest.raises(NotFoundError):
        store.remove_server(A, "lab")
    assert announced == [A]  # an unknown server changes (and announces) nothing


def test_update_policy_merges_into_what_is_stored(store: ToolStore) -> None:
    seen: list[ToolPolicy | None] = []

    def patch(p: ToolPolicyPatch) -> Callable[[ToolPolicy | None], ToolPolicy]:
        def change(stored: ToolPolicy | None) -> ToolPolicy:
            seen.append(stored)
            return p.apply(stored or ToolPolicy())

        return change

    assert store.update_policy(A, patch(ToolPolicyPatch(guard_calls=False))) == ToolPolicy(guard_calls=False)
    merged = store.update_policy(A, patch(ToolPolicyPatch(memory_session_id="s")))
    assert merged == ToolPolicy(guard_calls=False, memory_session_id="s") == store.get_policy(A)
    assert seen == [None, ToolPolicy(guard_calls=False)]
    assert store.get_policy(B) is None


def test_update_policy_stores_nothing_when_the_change_raises(store: ToolStore) -> None:
    store.set_policy(A, ToolPolicy(memory_write=True))

    def refuse(stored: ToolPolicy | None) -> ToolPolicy:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        store.update_policy(A, refuse)
    assert store.get_policy(A) == ToolPolicy(memory_write=True)


def test_concurrent_puts_of_one_name_get_distinct_contiguous_versions(store: ToolStore) -> None:
    n = 12
    versions: list[int] = []

    def put(i: int) -> None:
        versions.append(store.put_tool(A, tool(description=f"variant {i}"))[0].version)

    _all_at_once(n, put)
    assert sorted(versions) == list(range(1, n + 1))


def _audit(i: int, name: str = "weather") -> AuditRecord:
    return AuditRecord(
        id=f"id{i}",
        tool_name=name,
        tool_version=1,
        caller="t1:agent",
        arguments_sha256="0" * 64,
        outcome=Outcome.BLOCKED if i % 2 else Outcome.OK,
        stopped_at=Step.GUARD_CALL if i % 2 else Step.NONE,
        reason="r",
        duration_ms=1.5,
        attempts=1,
        verdicts=({"stage": "tool_call", "decision": "block", "id": "v", "score": 0.9},),
        truncated=bool(i % 2),
        created_at=utcnow(),
    )


def test_audit_is_newest_first_and_filterable(store: ToolStore) -> None:
    store.append_audit(A, _audit(0))
    store.append_audits([(A, _audit(1)), (A, _audit(2, "other")), (B, _audit(3))])
    assert [r.id for r in store.list_audit(A)] == ["id2", "id1", "id0"]
    assert [r.id for r in store.list_audit(A, "weather")] == ["id1", "id0"]
    assert [r.id for r in store.list_audit(A, limit=1)] == ["id2"]
    got = store.list_audit(A, "weather")[0]
    assert got == _audit(1).__class__(**{**_audit(1).__dict__, "created_at": got.created_at})


def test_policy_round_trip(store: ToolStore) -> None:
    assert store.get_policy(A) is None
    p = ToolPolicy(guard_calls=False, guard_results=True, memory_write=True, memory_session_id="s")
    store.set_policy(A, p)
    store.set_policy(A, p)
    assert store.get_policy(A) == p
