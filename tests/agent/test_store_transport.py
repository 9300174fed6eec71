"""SidecarStore as a gRPC client: event loops, concurrency, message sizes, errors, channels, closing.

Against a real server on port 0; where the point is equal behaviour, side by side with LangGraph's InMemoryStore.
"""

from __future__ import annotations

import asyncio
import operator
import threading
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import grpc
import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore, GetOp, InvalidNamespaceError, PutOp
from langgraph.store.memory import InMemoryStore
from langgraph.types import RetryPolicy, Send

from runtime.store import SidecarStore, StoreInvalidArgumentError, StorePermissionError
from tests.agent.test_store import _norm, reference_store
from tests.conftest import RunningServer, make_settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("store-transport")
    srv = RunningServer(make_settings(data_dir=data_dir, db_url=f"sqlite:///{data_dir}/agentrt.db",
                                      embedding_model="hashing"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def store(server: RunningServer, request: pytest.FixtureRequest) -> Iterator[SidecarStore]:
    s = SidecarStore(server.target, namespace="t-" + request.node.name[-60:].replace("_", "-"),
                     index={"fields": ["text"]})
    yield s
    s.close()


class _Counting(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the StoreBatch calls of an asyncio channel, and the ops of each."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        self.calls.append(len(request.ops))
        return await continuation(client_call_details, request)


def test_one_store_serves_one_event_loop_after_another(store: SidecarStore) -> None:
    """The asyncio channel belonged to the first loop: after ``asyncio.run`` returned, every async call failed with
    "Event loop is closed" (an app calling ``asyncio.run(graph.ainvoke(...))`` per request)."""

    class State(TypedDict, total=False):
        msg: str
        recalled: list[str]

    async def remember(state: State, runtime: Runtime) -> State:
        assert runtime.store is not None
        await runtime.store.aput(("users", "ada"), "m-" + state["msg"][:8], {"text": state["msg"]})
        hits = await runtime.store.asearch(("users", "ada"), query=state["msg"], limit=2)
        return {"recalled": [h.key for h in hits]}

    g = StateGraph(State)
    g.add_node("remember", remember)
    g.add_edge(START, "remember")
    g.add_edge("remember", END)
    outputs = {}
    for s in (reference_store(), store):
        graph = g.compile(store=s)
        outputs[type(s).__name__] = [asyncio.run(graph.ainvoke({"msg": m}))["recalled"]
                                     for m in ("I like python", "My dog is Pixel", "python again")]
    assert outputs["SidecarStore"] == outputs["InMemoryStore"]
    assert len(outputs["SidecarStore"][2]) == 2
    # A loop run in another thread at the same time gets its own channel too.
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.append(asyncio.run(store.aget(("users", "ada"), "m-I like p"))))
    worker.start()
    worker.join(30)
    assert seen and seen[0] is not None and seen[0].value == {"text": "I like python"}


def test_150_concurrent_branches_write_through_few_calls(server: RunningServer) -> None:
    """A LangGraph fan-out of 150 async branches put 150 items at once; past the server's 64 concurrent calls they
    failed with RESOURCE_EXHAUSTED. Calls made in one turn of the loop now go together."""

    class S(TypedDict, total=False):
        n: int
        done: Annotated[list[int], operator.add]

    async def write(state: dict[str, Any], runtime: Runtime) -> S:
        assert runtime.store is not None
        await runtime.store.aput(("fan",), f"k{state['i']}", {"text": f"fact {state['i']}"})
        return {"done": [state["i"]]}

    g = StateGraph(S)
    g.add_node("write", write)
    g.add_conditional_edges(START, lambda s: [Send("write", {"i": i}) for i in range(s["n"])], ["write"])
    g.add_edge("write", END)

    async def run(s: BaseStore) -> tuple[int, int]:
        out = await g.compile(store=s).ainvoke({"n": 150})
        return len(out["done"]), len(await s.asearch(("fan",), limit=1000))

    counting = _Counting()

    async def sidecar() -> tuple[int, int]:
        channel = grpc.aio.insecure_channel(server.target, interceptors=[counting])
        try:
            return await run(SidecarStore(namespace="t-fanout", aio_channel=channel))
        finally:
            await channel.close()

    assert asyncio.run(run(reference_store())) == (150, 150)
    assert asyncio.run(sidecar()) == (150, 150)
    assert sum(counting.calls) == 151 and len(counting.calls) < 20, counting.calls


def test_concurrent_calls_see_each_other_in_issue_order(store: SidecarStore) -> None:
    """Sent together, a read issued after a write still sees it, as with InMemoryStore (without an index there, whose
    embedding awaits inside ``aput`` and lets later calls overtake it)."""

    async def steps(s: BaseStore) -> list[Any]:
        return list(await asyncio.gather(
            s.aput(("o",), "k", {"text": "v1"}), s.aget(("o",), "k"), s.aput(("o",), "k", {"text": "v2"}),
            s.aget(("o",), "k"), s.adelete(("o",), "k"), s.aget(("o",), "k"), s.aput(("o",), "k", {"text": "v3"}),
            s.asearch(("o",)), s.alist_namespaces(), s.abatch([GetOp(("o",), "k"), PutOp(("o",), "j", {"t": 1})]),
            s.aget(("o",), "j"),
        ))

    assert [_norm(r) for r in asyncio.run(steps(store))] == [_norm(r) for r in asyncio.run(steps(InMemoryStore()))]


def test_calls_shed_at_the_servers_cap_are_retried(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(embedding_model="hashing", server={"max_concurrent_rpcs": 1})
    codes: list[grpc.StatusCode] = []

    class Codes(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
            call = continuation(details, request)
            codes.append(call.code())
            return call

    channel = grpc.intercept_channel(grpc.insecure_channel(srv.target), Codes())
    store = SidecarStore(namespace="t-shed", channel=channel, max_in_flight=12, retries=50)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(15):
                store.put(("shed",), f"{t}-{i}", {"text": f"item {t} {i}"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes  # the cap did shed calls, and they were tried again
    assert len(store.search(("shed",), limit=1000)) == 180
    channel.close()


def test_values_up_to_the_message_limit_round_trip(server: RunningServer, store: SidecarStore) -> None:
    """The client channel received at most gRPC's default 4 MB while the server takes 8 MB: a 5 MB item could be
    put but never read."""
    store.put(("big",), "five", {"text": "x" * 5_000_000}, index=False)
    item = store.get(("big",), "five")
    assert item is not None and len(item.value["text"]) == 5_000_000
    for i in range(10):
        store.put(("big", "many"), f"k{i}", {"text": "y" * 600_000}, index=False)
    assert len(store.search(("big", "many"))) == 10

    async def aget() -> int:
        got = await store.aget(("big",), "five")
        return len(got.value["text"]) if got else 0

    assert asyncio.run(aget()) == 5_000_000
    # A value that no reply could carry back is refused before sending...
    with pytest.raises(StoreInvalidArgumentError, match=r"ops\[0\]\.put\.value_json: the value is 9000012 bytes"):
        store.put(("big",), "nine", {"text": "x" * 9_000_000}, index=False)
    # ... and by the sidecar, for a client that allows itself more than the server does.
    greedy = SidecarStore(server.target, namespace=store.namespace, max_message_bytes=16 * 1024 * 1024)
    with pytest.raises(StoreInvalidArgumentError) as err:
        greedy.put(("big",), "edge", {"text": "x" * (8 * 1024 * 1024 - 8 * 1024)}, index=False)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.field_violations[0][0] == "ops[0].put.value_json"
    assert "so that a reply can carry it back" in err.value.details()
    assert greedy.get(("big",), "edge") is None
    greedy.close()


def test_errors_are_builtins_retry_policies_understand(make_server, store: SidecarStore) -> None:  # type: ignore[no-untyped-def]
    """A raw grpc.RpcError reached apps, and LangGraph's RetryPolicy retried INVALID_ARGUMENT like a network error."""
    attempts: list[int] = []

    class S(TypedDict, total=False):
        x: int

    def node(state: S, runtime: Runtime) -> S:
        attempts.append(1)
        assert runtime.store is not None
        runtime.store.search(("a",), filter={"n": {"$in": [1]}})
        return {}

    g = StateGraph(S)
    g.add_node("n", node, retry_policy=RetryPolicy(max_attempts=4, initial_interval=0.01, jitter=False))
    g.add_edge(START, "n")
    g.add_edge("n", END)
    with pytest.raises(ValueError, match="unsupported filter operator") as err:
        g.compile(store=store).invoke({"x": 1})
    assert len(attempts) == 1
    assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A bad namespace is LangGraph's InvalidNamespaceError (a ValueError), naming the field.
    with pytest.raises(InvalidNamespaceError) as bad_ns:
        store.batch([PutOp(("a.b",), "k", {"v": 1})])
    assert bad_ns.value.field_violations == [  # type: ignore[attr-defined]
        ("ops[0].put.path[0]", "namespace label 'a.b' cannot contain periods")]
    # Permission errors are PermissionError (an OSError, which RetryPolicy does not retry), with their status.
    srv = make_server(embedding_model="hashing", tokens=[{"token": "rw", "tenant": "acme"},
                                                         {"token": "ro", "tenant": "acme", "read_only": True}])
    read_only = SidecarStore(srv.target, namespace="app", token="ro")
    with pytest.raises(PermissionError) as denied:
        read_only.put(("a",), "k", {"v": 1})
    assert isinstance(denied.value, StorePermissionError)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(StorePermissionError) as unauthenticated:
        asyncio.run(SidecarStore(srv.target, namespace="app", token="wrong").aget(("a",), "k"))
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    retry_on = RetryPolicy().retry_on
    assert callable(retry_on)
    assert not retry_on(denied.value) and not retry_on(err.value)
    # A sidecar that is away stays a retryable error (after the store's own retries).
    srv.stop()
    with pytest.raises(grpc.RpcError) as away:
        SidecarStore(srv.target, namespace="app", token="rw", timeout=5, retries=1).get(("a",), "k")
    assert away.value.code() == grpc.StatusCode.UNAVAILABLE and retry_on(away.value)
    read_only.close()


def test_one_callers_bad_op_fails_only_that_caller(store: SidecarStore) -> None:
    """Calls sent together share one StoreBatch; a refused op must not fail the others, nor be misnumbered."""

    async def together() -> list[Any]:
        return list(await asyncio.gather(
            store.aput(("g",), "ok", {"text": "fine"}),
            store.abatch([GetOp(("g",), "ok"), PutOp(("g",), "k" * 1001, {"v": 1})]),
            store.aput(("g",), "ok2", {"text": "fine too"}),
            return_exceptions=True,
        ))

    first, bad, third = asyncio.run(together())
    assert first is None and third is None
    assert isinstance(bad, StoreInvalidArgumentError) and bad.field_violations[0][0] == "ops[1].put.key"
    assert store.get(("g",), "ok") is not None and store.get(("g",), "ok2") is not None


def test_a_channel_of_the_other_kind_only_is_a_clear_error(server: RunningServer) -> None:
    """A store given one kind of channel failed the other API with a bare AssertionError."""
    blocking = SidecarStore(namespace="t-kind", channel=grpc.insecure_channel(server.target))
    with pytest.raises(RuntimeError, match=r"only a blocking channel .*aio_channel="):
        asyncio.run(blocking.aget(("a",), "k"))
    assert blocking.get(("a",), "k") is None

    async def asyncio_only() -> None:
        channel = grpc.aio.insecure_channel(server.target)
        only = SidecarStore(namespace="t-kind", aio_channel=channel)
        assert await only.aget(("a",), "k") is None
        with pytest.raises(RuntimeError, match=r"only an asyncio channel .*channel=grpc.insecure_channel"):
            await asyncio.to_thread(only.get, ("a",), "k")
        await channel.close()

    asyncio.run(asyncio_only())


def test_a_closed_store_opens_new_channels_when_used_again(store: SidecarStore) -> None:
    """``close`` left the closed channel in place: every later call raised "Cannot invoke RPC on closed channel"."""
    store.put(("c",), "k", {"text": "kept"})
    store.close()
    item = store.get(("c",), "k")
    assert item is not None and item.value == {"text": "kept"}
    store.close()
    store.close()

    async def use_after_aclose() -> Any:
        await store.aget(("c",), "k")
        await store.aclose()
        return await store.aget(("c",), "k")

    again = asyncio.run(use_after_aclose())
    assert again is not None and again.value == {"text": "kept"}
