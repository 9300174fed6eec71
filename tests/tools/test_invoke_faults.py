"""Invoke when something other than the tool fails: the guard backend raises, the policy cannot be read,
the caller cancels or its deadline runs out. Every such call is audited, with the step it stopped at."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentrt.v1 import tool_pb2

from core.embedding import create_embedder
from core.errors import FailedPreconditionError, UnavailableError
from guards.model import Decision, GuardRequest, GuardVerdict, Stage
from runtime.tool_invoke import InvokeRequest, ToolInvoker, add_builtins
from tests.conftest import RunningServer, make_settings
from tests.tools.http_tool_server import ToolHTTPServer
from tools.model import Outcome, Step
from tools.registry import ToolRegistry
from tools.search import ToolSearch
from tools.store import InMemoryToolStore

SCOPE = "t/ns"


class FailingGuard:
    """A guard whose backend fails at one stage (allows the others)."""

    def __init__(self, fail_stage: Stage):
        self.fail_stage = fail_stage

    def check(self, scope: str, request: GuardRequest) -> GuardVerdict:
        if request.stage == self.fail_stage:
            raise RuntimeError(f"guard backend down at {request.stage.value}")
        return GuardVerdict("v", Decision.ALLOW, 0.0, 0.0, request.stage, (), decided_by="rule")


@pytest.fixture
async def registry() -> AsyncIterator[tuple[ToolRegistry, list[dict[str, Any]]]]:
    reg = ToolRegistry(InMemoryToolStore(), ToolSearch(create_embedder("hashing")))
    add_builtins(reg, lambda: None)
    ran: list[dict[str, Any]] = []

    async def pay(scope: str, args: dict[str, Any]) -> Any:
        ran.append(args)
        if args.get("wait"):
            await asyncio.sleep(float(args["wait"]))
        return {"sent": args.get("amount")}

    reg.builtins.add("pay", "Send money", {"type": "object"}, pay)
    yield reg, ran
    await reg.aclose()


@pytest.mark.parametrize(
    ("stage", "step", "runs"), [(Stage.TOOL_CALL, Step.GUARD_CALL, 0), (Stage.TOOL_RESULT, Step.GUARD_RESULT, 1)]
)
async def test_a_failing_guard_is_unavailable_and_audited(
    registry: tuple[ToolRegistry, list[dict[str, Any]]], stage: Stage, step: Step, runs: int
) -> None:
    reg, ran = registry
    invoker = ToolInvoker(reg, reg._offload, guards=FailingGuard(stage))
    with pytest.raises(UnavailableError, match=f"guard check at {stage.value} failed") as err:
        await invoker.invoke(InvokeRequest(SCOPE, "pay", '{"amount": 100}'))
    assert err.value.retry_after_s
    assert "backend down" not in str(err.value)  # the backend's own text goes to the log, not the caller
    # At TOOL_RESULT the money was sent: the audit trail must say so.
    assert len(ran) == runs
    [audit] = await reg.audits(SCOPE)
    assert (audit.outcome, audit.stopped_at) == (Outcome.UNAVAILABLE, step)
    assert audit.attempts == runs


async def test_a_policy_that_cannot_be_read_is_audited(registry: tuple[ToolRegistry, list[dict[str, Any]]]) -> None:
    reg, ran = registry

    def broken(scope: str) -> Any:
        raise OSError("database gone")

    reg.store.get_policy = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await ToolInvoker(reg, reg._offload).invoke(InvokeRequest(SCOPE, "pay", "{}"))
    [audit] = await reg.audits(SCOPE)
    assert audit.outcome == Outcome.INTERNAL and "database gone" in audit.reason and ran == []


async def test_a_cancelled_invoke_is_audited_after_the_tool_was_called(
    registry: tuple[ToolRegistry, list[dict[str, Any]]],
) -> None:
    reg, ran = registry
    invoker = ToolInvoker(reg, reg._offload, durable_records=True)
    task = asyncio.create_task(invoker.invoke(InvokeRequest(SCOPE, "pay", '{"amount": 5, "wait": 30}')))
    while not ran:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [audit] = await reg.audits(SCOPE)
    assert (audit.outcome, audit.stopped_at) == (Outcome.CANCELLED, Step.EXECUTE)
    assert "cancelled" in audit.reason


async def test_the_execute_budget_is_what_is_left_after_the_call_guard(
    registry: tuple[ToolRegistry, list[dict[str, Any]]],
) -> None:
    reg, _ = registry

    class SlowGuard:
        def check(self, scope: str, request: GuardRequest) -> GuardVerdict:
            time.sleep(0.5)
            return GuardVerdict("v", Decision.ALLOW, 0.0, 0.0, request.stage, (), decided_by="rule")

    invoker = ToolInvoker(reg, reg._offload, guards=SlowGuard())
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # DeadlineExceededError
        await invoker.invoke(
            InvokeRequest(SCOPE, "pay", '{"wait": 30}', deadline_at=time.monotonic() + 0.8)
        )
    # The tool got the 0.3 s left, not the whole 0.8 s again (generous bound: the point is "not 0.8 more").
    assert time.monotonic() - started < 1.25
    [audit] = await reg.audits(SCOPE)
    assert (audit.outcome, audit.stopped_at) == (Outcome.DEADLINE_EXCEEDED, Step.EXECUTE)


# -- over the wire ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = RunningServer(make_settings(data_dir=tmp_path_factory.mktemp("tool-faults"), embedding_model="hashing"))
    yield s
    s.stop()


@pytest.fixture
def ns(server: RunningServer) -> Iterator[str]:
    name = f"ns-{uuid.uuid4().hex[:10]}"
    guards = server.rt.guards
    yield name
    server.rt.guards = guards


def _policy(s: RunningServer, ns: str, *, guard_calls: bool = False) -> None:
    s.client.tool.SetPolicy(
        tool_pb2.SetToolPolicyRequest(
            namespace=ns, policy=tool_pb2.ToolPolicy(guard_calls=guard_calls, guard_results=False)
        )
    )


def _register(s: RunningServer, ns: str, name: str, url: str, **http: Any) -> None:
    s.client.tool.Register(
        tool_pb2.RegisterToolRequest(
            namespace=ns,
            tool=tool_pb2.Tool(
                name=name,
                description=f"{name} tool",
                input_schema_json='{"type": "object"}',
                no_retries=True,
                http=tool_pb2.HttpToolExecutor(url=url, **http),
            ),
        )
    )


def _audits(s: RunningServer, ns: str) -> list[tool_pb2.ToolAuditRecord]:
    return list(s.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=ns)).records)


def _wait_for_audit(s: RunningServer, ns: str) -> tool_pb2.ToolAuditRecord:
    end = time.monotonic() + 30
    while not (records := _audits(s, ns)):
        assert time.monotonic() < end, "no audit record"
        time.sleep(0.05)
    [record] = records
    return record


def test_an_invoke_the_client_cancels_is_audited(server: RunningServer, ns: str, http_tools: ToolHTTPServer) -> None:
    _policy(server, ns)
    _register(server, ns, "slow", http_tools.url("/slow"))
    call = server.client.tool.Invoke.future(
        tool_pb2.InvokeToolRequest(namespace=ns, name="slow", arguments_json='{"delay": 3}'), timeout=30
    )
    deadline = time.monotonic() + 10
    while http_tools.in_flight == 0 and time.monotonic() < deadline:  # wait until the request is at the tool
        time.sleep(0.01)
    assert http_tools.in_flight == 1
    call.cancel()
    record = _wait_for_audit(server, ns)
    assert (record.outcome, record.stopped_at) == (tool_pb2.INVOKE_OUTCOME_CANCELLED, tool_pb2.INVOKE_STEP_EXECUTE)
    assert "cancelled" in record.reason


def test_a_slow_call_guard_leaves_the_tool_only_what_is_left_of_the_deadline(
    server: RunningServer, ns: str, http_tools: ToolHTTPServer
) -> None:
    class SlowGuard:
        def check(self, scope: str, request: GuardRequest) -> GuardVerdict:
            time.sleep(1.0)
            return GuardVerdict("v", Decision.ALLOW, 0.0, 0.0, request.stage, (), decided_by="rule")

    server.rt.guards = SlowGuard()
    _policy(server, ns, guard_calls=True)
    _register(server, ns, "slow", http_tools.url("/slow"))
    with pytest.raises(grpc.RpcError) as err:
        server.client.tool.Invoke(
            tool_pb2.InvokeToolRequest(namespace=ns, name="slow", arguments_json='{"delay": 3}'), timeout=2.0
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The documented path: the tool's budget ran out first, so the call was answered and audited as such
    # (a budget read before the guard ran let the tool outlive the RPC, which was then only cancelled).
    record = _wait_for_audit(server, ns)
    assert record.outcome == tool_pb2.INVOKE_OUTCOME_DEADLINE_EXCEEDED
    assert record.stopped_at == tool_pb2.INVOKE_STEP_EXECUTE


def test_http_tool_credentials_are_not_returned_or_leaked(server: RunningServer, ns: str) -> None:
    _policy(server, ns)
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]  # closed once the block ends: the call is refused
    url = f"http://user:PASSWORD1@127.0.0.1:{port}/w?api_key=URLSECRET1"
    _register(server, ns, "wx", url)
    _register(server, ns, "wx2", f"http://127.0.0.1:{port}/w", headers={"Authorization": "Bearer HDRSECRET1"})
    with pytest.raises(grpc.RpcError) as err:
        server.client.tool.Invoke(tool_pb2.InvokeToolRequest(namespace=ns, name="wx", arguments_json="{}"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    record = _wait_for_audit(server, ns)
    for text in (err.value.details(), record.reason):
        assert f"127.0.0.1:{port}" in text
        assert "URLSECRET1" not in text and "PASSWORD1" not in text and "api_key" not in text
    # Anyone who may read the namespace sees that a header is set, not its value (as for MCP servers).
    got = server.client.tool.Get(tool_pb2.GetToolRequest(namespace=ns, name="wx2")).tool
    listed = {t.name: t for t in server.client.tool.List(tool_pb2.ListToolsRequest(namespace=ns)).tools}["wx2"]
    for tool in (got, listed):
        assert dict(tool.http.headers) == {"Authorization": "***"}
    assert "HDRSECRET1" not in json.dumps([str(got), str(listed)])
    # The same for a credential in the URL: the password and the query's values are masked, the keys stay.
    got = server.client.tool.Get(tool_pb2.GetToolRequest(namespace=ns, name="wx")).tool
    listed = {t.name: t for t in server.client.tool.List(tool_pb2.ListToolsRequest(namespace=ns)).tools}["wx"]
    for tool in (got, listed):
        assert tool.http.url == f"http://user:***@127.0.0.1:{port}/w?api_key=***"


# -- audit records that cannot be stored ---------------------------------------------------------------------


async def test_a_failed_audit_batch_is_written_again_record_by_record(tmp_path: Path) -> None:
    """Two records under one id in one batch: the batch's transaction fails, the records are then written one
    at a time, so the good ones are stored and only the duplicate fails (before, the whole batch was dropped)."""
    from runtime.db import create_db_engine
    from tools.audit import AuditLog
    from tools.model import AuditRecord
    from tools.schema import metadata as tool_metadata
    from tools.sql_store import SqlToolStore

    engine = create_db_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    tool_metadata.create_all(engine)
    store = SqlToolStore(engine)
    log = AuditLog(store, asyncio.to_thread, linger_s=0.5)  # one batch for the four records

    def record(record_id: str, name: str) -> AuditRecord:
        return AuditRecord(record_id, name, 1, "t", "", Outcome.OK, Step.NONE, "", 1.0, 1)

    records = (("a", "one"), ("b", "two"), ("a", "dup"), ("c", "three"))
    futures = [log.record(SCOPE, record(rid, name)) for rid, name in records]
    await log.flush()
    assert [f.exception() is None for f in futures] == [True, True, False, True]
    assert sorted(r.tool_name for r in store.list_audit(SCOPE)) == ["one", "three", "two"]
    await log.aclose()
    engine.dispose()


async def test_a_durable_invoke_whose_audit_cannot_be_stored_says_so(
    registry: tuple[ToolRegistry, list[dict[str, Any]]],
) -> None:
    reg, ran = registry
    calls = []
    real = reg.store.append_audits

    def flaky(items: list[Any]) -> None:
        calls.append(len(items))
        if len(calls) == 1:
            raise OSError("database busy")  # transient: the record-by-record second try stores it
        real(items)

    reg.store.append_audits = flaky  # type: ignore[method-assign]
    invoker = ToolInvoker(reg, reg._offload, durable_records=True)
    result = await invoker.invoke(InvokeRequest(SCOPE, "pay", '{"amount": 1}'))
    assert [a.id for a in await reg.audits(SCOPE)] == [result.invocation_id] and calls == [1, 1]

    def broken(items: list[Any]) -> None:
        raise OSError("disk gone")

    reg.store.append_audits = broken  # type: ignore[method-assign]
    with pytest.raises(FailedPreconditionError, match=r"audit record could not be stored.*the tool has run"):
        await invoker.invoke(InvokeRequest(SCOPE, "pay", '{"amount": 2}'))
    assert [r["amount"] for r in ran] == [1, 2]
