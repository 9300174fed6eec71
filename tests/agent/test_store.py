"""SidecarStore over the wire, side by side with LangGraph's own InMemoryStore on one scenario."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc
import pytest
from agentrt.v1 import agent_pb2
from grpc_status import rpc_status
from langgraph.store.base import BaseStore, GetOp, InvalidNamespaceError, Item, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from core.embedding import create_embedder
from runtime.store import SidecarStore

FIELDS = ["text"]


def reference_store() -> InMemoryStore:
    # The shared test server embeds with the deterministic hashing embedder; the reference uses the same one,
    # so scores must agree to float precision. (test_real_components.py checks semantic ranking on MiniLM.)
    emb = create_embedder("hashing")
    return InMemoryStore(index={"dims": emb.dim, "embed": lambda texts: emb.embed(list(texts)).tolist(),
                                "fields": FIELDS})


def _norm(result: Any) -> Any:
    """Comparable form of a store result (timestamps differ by construction)."""
    if isinstance(result, Item):
        score = getattr(result, "score", None)
        return (result.namespace, result.key, result.value, None if score is None else round(score, 4))
    if isinstance(result, list):
        return [_norm(r) for r in result]
    return result


DOCS = [
    (("docs", "python"), "intro", {"text": "Python is a programming language", "level": 1, "tags": ["code"]}),
    (("docs", "python"), "async", {"text": "asyncio runs coroutines on an event loop", "level": 3}),
    (("docs", "cooking"), "bread", {"text": "Knead the dough and bake the bread", "level": 2}),
    (("docs", "cooking"), "soup", {"text": "A warm tomato soup recipe", "level": 1, "meta": {"lang": "en"}}),
    (("users", "42", "prefs"), "theme", {"text": "dark mode please", "level": 5}),
    (("users", "7", "prefs"), "theme", {"text": "light mode", "level": 4}),
]


def scenario(store: BaseStore) -> list[Any]:
    """Every public store call; returns what each read returned."""
    out: list[Any] = []
    for ns, key, value in DOCS:
        store.put(ns, key, value)
    store.put(("docs", "python"), "raw", {"text": "never embedded python", "level": 0}, index=False)
    out.append(store.get(("docs", "python"), "intro"))
    out.append(store.get(("docs", "python"), "missing"))
    out.append(store.search(("docs",)))
    out.append(store.search(("docs",), limit=2, offset=1))
    out.append(store.search(("docs",), filter={"level": 1}))
    out.append(store.search((), filter={"level": {"$gte": 2, "$lt": 5}}))
    out.append(store.search((), filter={"meta": {"lang": "en"}}))
    out.append(store.search((), filter={"level": {"$ne": 1}}, limit=3))
    out.append(store.search(("docs",), query="how do I write a program in python?", limit=3))
    out.append(store.search(("docs",), query="baking", limit=2, offset=1))
    out.append(store.search((), query="what colour scheme does the user like", filter={"level": {"$gt": 4}}))
    out.append(store.search(("docs", "python"), query="python", limit=10))
    # Update keeps the item's place; delete removes it from get, search and (when empty) namespaces.
    store.put(("docs", "cooking"), "bread", {"text": "Sourdough bread needs a starter", "level": 2})
    out.append(store.get(("docs", "cooking"), "bread"))
    out.append(store.search(("docs", "cooking"), query="sourdough starter", limit=1))
    store.delete(("docs", "cooking"), "soup")
    out.append(store.get(("docs", "cooking"), "soup"))
    out.append(store.search(("docs", "cooking")))
    out.append(store.list_namespaces())
    out.append(store.list_namespaces(prefix=("docs",)))
    out.append(store.list_namespaces(prefix=("users",), max_depth=2))
    out.append(store.list_namespaces(suffix=("prefs",)))
    out.append(store.list_namespaces(prefix=("users", "*", "prefs")))
    out.append(store.list_namespaces(limit=2, offset=1))
    out.append(store.batch([GetOp(("users", "42", "prefs"), "theme"), SearchOp(("users",), limit=1),
                            PutOp(("users", "42", "prefs"), "theme", {"text": "solarized", "level": 5})]))
    out.append(store.get(("users", "42", "prefs"), "theme"))
    return out


async def ascenario(store: BaseStore) -> list[Any]:
    """The async API on the same data."""
    out: list[Any] = []
    await store.aput(("notes",), "n1", {"text": "meeting with Alice on Friday", "n": 1})
    await store.aput(("notes",), "n2", {"text": "buy milk and eggs", "n": 2})
    out.append(await store.aget(("notes",), "n1"))
    out.append(await store.asearch(("notes",), query="groceries", limit=1))
    out.append(await store.asearch(("notes",), filter={"n": 2}))
    await store.adelete(("notes",), "n1")
    out.append(await store.alist_namespaces(prefix=("notes",)))
    out.append(await store.asearch(("notes",)))
    return out


@pytest.fixture
def sidecar(shared_server, request):
    # A fresh agentrt namespace per test on the module's server: namespaces never see each other's items.
    namespace = "app-" + request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[-60:]
    store = SidecarStore(shared_server.target, namespace=namespace, index={"fields": FIELDS})
    yield shared_server, store
    store.close()


def test_scenario_matches_langgraph_in_memory_store(sidecar) -> None:
    _srv, store = sidecar
    expected = [_norm(r) for r in scenario(reference_store())]
    got = [_norm(r) for r in scenario(store)]
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g == e, f"step {i}"
    # The ranked searches really ranked (scores present and descending).
    scores = [r[3] for r in got[8]]
    assert all(sc is not None for sc in scores) and scores == sorted(scores, reverse=True)


def test_async_scenario_matches(sidecar) -> None:
    _srv, store = sidecar

    async def both() -> tuple[list[Any], list[Any]]:
        ref = await ascenario(reference_store())
        got = await ascenario(store)
        await store.aclose()
        return ref, got

    ref, got = asyncio.run(both())
    assert [_norm(r) for r in got] == [_norm(r) for r in ref]


def counting_channel(target: str, calls: list[int]) -> grpc.Channel:
    """A channel to ``target`` that appends each StoreBatch call's op count to ``calls``."""

    class Counting(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
            calls.append(len(request.ops))
            return continuation(details, request)

    return grpc.intercept_channel(grpc.insecure_channel(target), Counting())


def test_one_rpc_per_batch_and_namespaces_are_isolated(sidecar) -> None:
    srv, store = sidecar
    calls: list[int] = []
    counted = SidecarStore(namespace=store.namespace, channel=counting_channel(srv.target, calls))
    counted.batch([PutOp(("a",), "k", {"text": "x"}), PutOp(("a",), "j", {"text": "y"}), GetOp(("a",), "k")])
    assert calls == [3]
    other = SidecarStore(srv.target, namespace="other-app")
    assert other.get(("a",), "k") is None
    assert other.search(()) == []
    assert other.list_namespaces() == []
    assert store.get(("a",), "k") is not None
    other.close()


def test_bad_ops_are_invalid_argument_naming_the_field(sidecar) -> None:
    srv, _store = sidecar
    stub = srv.client.agent
    bad = agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[
        agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["a"], key="k")),
        agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["a.b"], key="k", value_json="{}")),
    ])
    with pytest.raises(grpc.RpcError) as err:
        stub.StoreBatch(bad, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    assert status is not None and "ops[1].put.path[0]" in str(status.details)
    not_json = agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[
        agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["a"], key="k", value_json="[1, 2]")),
    ])
    with pytest.raises(grpc.RpcError) as err:
        stub.StoreBatch(not_json, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ops[0].put.value_json" in str(rpc_status.from_call(err.value).details)
    deep_json = '{"a":' * 50_000 + "1" + "}" * 50_000  # deeper than the JSON parser's stack
    too_deep = agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[
        agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["a"], key="k", value_json=deep_json)),
    ])
    with pytest.raises(grpc.RpcError) as err:
        stub.StoreBatch(too_deep, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ops[0].put.value_json" in str(rpc_status.from_call(err.value).details)
    # An unpaired surrogate escape cannot be stored or embedded; a paired one is an ordinary character. The good put
    # before the bad one is not applied either (a batch is atomic).
    for index_fields in ([], ["t"]):
        lone = agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[
            agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["a"], key="ok", value_json='{"t": "fine"}')),
            agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["a"], key="k", value_json='{"t": "x\\ud800"}',
                                                     index_fields=index_fields)),
        ])
        with pytest.raises(grpc.RpcError) as err:
            stub.StoreBatch(lone, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ops[1].put.value_json" in str(rpc_status.from_call(err.value).details)
    get_ok = agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["a"], key="ok"))
    assert not stub.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[get_ok])).results[0].get.HasField(
        "item")
    paired = agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["a"], key="smile", value_json='{"t": "\\ud83d\\ude00"}',
                                                      index_fields=["t"]))
    stub.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[paired]), timeout=10)
    got = stub.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app-bad", ops=[
        agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["a"], key="smile"))]), timeout=10)
    assert json.loads(got.results[0].get.item.value_json) == {"t": "\U0001f600"}


def test_hybrid_ranking_is_validated(sidecar) -> None:
    srv, _store = sidecar
    with pytest.raises(ValueError, match="ranking"):
        SidecarStore(srv.target, namespace="app-x", index={"fields": ["text"], "ranking": "bm25"})
    unknown = agent_pb2.StoreBatchRequest(namespace="app-rank", ops=[
        agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["a"], key="k")),
        agent_pb2.StoreOp(search=agent_pb2.StoreSearch(path_prefix=["a"], query="q", ranking=7)),
    ])
    with pytest.raises(grpc.RpcError) as err:
        srv.client.agent.StoreBatch(unknown, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ops[1].search.ranking" in str(rpc_status.from_call(err.value).details)


def test_hybrid_ranking_weighs_the_words_of_the_indexed_fields_only(sidecar) -> None:
    srv, _store = sidecar
    index = {"fields": ["title", "tags[*]"], "ranking": "hybrid"}
    store = SidecarStore(srv.target, namespace="app-hybrid", index=index)
    # Same indexed fields, so the same vector; only the unindexed body differs. A tie keeps insertion order.
    store.put(("d",), "b", {"title": "quarterly report", "tags": ["finance", "q3"], "body": "nothing here"})
    store.put(("d",), "a", {"title": "quarterly report", "tags": ["finance", "q3"], "body": "zebra zebra"})
    store.put(("d",), "c", {"title": "holiday plans", "tags": ["travel", "zebra"], "body": ""})
    for query in ("quarterly report zebra", "zebra"):
        hits = {h.key: (i, h.score) for i, h in enumerate(store.search(("d",), query=query))}
        assert hits["a"][1] == hits["b"][1] and hits["b"][0] < hits["a"][0]
        assert hits["c"][0] == 0 if query == "zebra" else hits["c"][1] != hits["a"][1]
    store.close()


def test_limit_left_unset_means_langgraphs_default(sidecar) -> None:
    srv, _store = sidecar
    stub = srv.client.agent
    puts = [agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["lim", str(i)], key=f"k{i}", value_json=f'{{"i": {i}}}'))
            for i in range(12)]
    stub.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app-limit", ops=puts), timeout=10)
    reply = stub.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app-limit", ops=[
        agent_pb2.StoreOp(search=agent_pb2.StoreSearch(path_prefix=["lim"])),
        agent_pb2.StoreOp(list_namespaces=agent_pb2.StoreListNamespaces()),
        agent_pb2.StoreOp(search=agent_pb2.StoreSearch(path_prefix=["lim"], limit=3)),
    ]), timeout=10)
    assert len(reply.results[0].search.items) == 10
    assert len(reply.results[1].list_namespaces.namespaces) == 12
    assert len(reply.results[2].search.items) == 3


def test_items_survive_a_restart(make_server, db_url) -> None:
    srv = make_server(db_url=db_url, embedding_model="hashing")
    store = SidecarStore(srv.target, namespace="app")
    store.put(("mem",), "fact", {"text": "the sky is blue"})
    store.close()
    settings = srv.settings
    srv.stop()
    again = make_server(settings=settings)
    store = SidecarStore(again.target, namespace="app")
    item = store.get(("mem",), "fact")
    assert item is not None and item.value == {"text": "the sky is blue"}
    [hit] = store.search(("mem",), query="the sky is blue")
    assert hit.key == "fact" and hit.score is not None and hit.score > 0.5  # "$" embeds the whole JSON value
    store.close()


def test_tenants_never_share_items(make_server, db_url) -> None:
    srv = make_server(embedding_model="hashing", db_url=db_url, tokens=[
        {"token": "tok-a", "tenant": "acme"}, {"token": "tok-b", "tenant": "globex"},
        {"token": "tok-ro", "tenant": "acme", "read_only": True},
    ])
    a = SidecarStore(srv.target, namespace="app", token="tok-a")
    b = SidecarStore(srv.target, namespace="app", token="tok-b")
    ro = SidecarStore(srv.target, namespace="app", token="tok-ro")
    a.put(("secrets",), "k", {"text": "acme only"})
    assert b.get(("secrets",), "k") is None and b.search(()) == [] and b.list_namespaces() == []
    assert ro.get(("secrets",), "k").value == {"text": "acme only"}
    with pytest.raises(grpc.RpcError) as err:
        ro.put(("secrets",), "k2", {"text": "nope"})
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        SidecarStore(srv.target, namespace="app").get(("secrets",), "k")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for s in (a, b, ro):
        s.close()


def test_a_limit_of_zero_asks_for_nothing_as_in_langgraphs_store(sidecar) -> None:
    _srv, store = sidecar
    reference = reference_store()
    for s in (store, reference):
        s.put(("lim0", "a"), "k", {"text": "hello"})
    for s in (store, reference):
        assert s.search(("lim0",), limit=0) == []
        assert s.search(("lim0",), query="hello", limit=0) == []
        assert s.list_namespaces(limit=0) == []
    assert len(store.search(("lim0",), limit=1)) == 1


def test_a_namespace_prefix_is_matched_with_its_case(sidecar) -> None:
    """SQLite's LIKE ignores ASCII case: ("users",) found the items of ("USERS", "a") too."""
    _srv, store = sidecar
    store.put(("users", "a"), "k1", {"text": "lower"})
    store.put(("USERS", "a"), "k2", {"text": "upper"})
    assert [(i.namespace, i.key) for i in store.search(("users",))] == [(("users", "a"), "k1")]
    assert [(i.namespace, i.key) for i in store.search(("USERS",), query="upper")] == [(("USERS", "a"), "k2")]


def test_keys_and_labels_inmemorystore_accepts_are_accepted(sidecar) -> None:
    """An empty key and a "*" label outside match conditions are ordinary (both were refused)."""
    _srv, store = sidecar

    def steps(s: BaseStore) -> list[Any]:
        s.put(("odd",), "", {"text": "empty key"})
        s.put(("*",), "k", {"text": "star"})
        s.put(("odd", "*"), "k", {"text": "star below"})
        return [s.get(("odd",), ""), s.get(("*",), "k"), s.search(("*",)), s.search(("odd",)),
                s.list_namespaces(prefix=("odd",)), s.list_namespaces(prefix=("*",)), s.get(("a", "*"), "k")]

    assert [_norm(r) for r in steps(store)] == [_norm(r) for r in steps(reference_store())]


def test_keys_and_namespaces_no_backend_can_store_are_refused_alike_and_never_found(sidecar) -> None:
    """Postgres refused a key or path over its 1,000-character columns, or a NUL, with a database error, on reads
    too; now every backend refuses such a put naming the field, and a read of one finds nothing."""
    _srv, store = sidecar
    reference = reference_store()
    for s in (store, reference):
        s.put(("k",), "x" * 1000, {"text": "longest key"})
        s.put(("l" * 999,), "k", {"text": "longest path"})
    assert store.get(("k",), "x" * 1000) is not None and store.get(("l" * 999,), "k") is not None
    for s in (store, reference):
        assert s.get(("k",), "x" * 5000) is None
        assert s.get(("k",), "k\x00z") is None
        assert s.get(("y" * 2000,), "k") is None
        assert s.search(("y" * 2000,)) == []
        # LangGraph's own get/search refuse a NUL in a label before any batch; a batch reads nothing there.
        assert s.batch([GetOp(("k\x00",), "k"), SearchOp(("k\x00",))]) == [None, []]
    for key, field in (("x" * 1001, "ops[0].put.key"), ("k\x00z", "ops[0].put.key")):
        with pytest.raises(ValueError, match=r"ops\[0\]\.put\.key") as err:
            store.put(("k",), key, {"v": 1})
        assert err.value.field_violations[0][0] == field  # type: ignore[attr-defined]
    with pytest.raises(InvalidNamespaceError, match=r"ops\[0\]\.put\.path: the namespace is 2000 characters"):
        store.put(("y" * 2000,), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError, match=r"ops\[0\]\.put\.path\[1\]"):
        store.batch([PutOp(("k", "a\x00"), "k", {"v": 1})])
    # A batch is atomic: the good put beside the refused one is not applied either.
    with pytest.raises(ValueError, match=r"ops\[1\]\.put\.key"):
        store.batch([PutOp(("k",), "good", {"v": 1}), PutOp(("k",), "y" * 1001, {"v": 1})])
    assert store.get(("k",), "good") is None


def test_ordering_filters_compare_strings_as_strings(sidecar) -> None:
    """$gt/$gte/$lt/$lte on strings matched nothing; strings now compare by code point (as PostgresStore compares
    the field's text), numbers and numeric strings as numbers (as InMemoryStore), other mixes never match."""
    _srv, store = sidecar
    docs = [("a", {"s": "apple", "n": 1}), ("b", {"s": "banana", "n": "3"}), ("c", {"s": "cherry", "n": 2.5}),
            ("d", {"s": "Zebra", "n": "x"}), ("e", {"n": None, "s": 5})]
    for key, value in docs:
        store.put(("f",), key, value)

    def keys(flt: dict[str, Any]) -> list[str]:
        return [i.key for i in store.search(("f",), filter=flt)]

    assert keys({"s": {"$gt": "b"}}) == ["b", "c"]
    assert keys({"s": {"$gte": "banana"}}) == ["b", "c"]
    assert keys({"s": {"$lt": "b"}}) == ["a", "d"]  # "Z" < "a" by code point
    assert keys({"s": {"$lte": "apple", "$gt": "A"}}) == ["a", "d"]
    assert keys({"s": {"$gt": 1}}) == ["e"]  # a word against a number has no order
    # Numbers keep InMemoryStore's reading, numeric strings included.
    reference = reference_store()
    for key, value in docs[:3]:
        reference.put(("f",), key, value)
    for flt in ({"n": {"$gt": 1}}, {"n": {"$lte": 2.5}}, {"n": {"$gte": 2, "$lt": 3}}):
        assert keys(flt) == [i.key for i in reference.search(("f",), filter=flt)]
    with pytest.raises(ValueError, match=r"ops\[0\]\.search\.filter_json: unsupported filter operator '\$in'"):
        store.search(("nothing-here",), filter={"n": {"$in": [1]}})


def test_counts_follow_inmemorystore_where_meaningful_and_are_refused_where_not(sidecar) -> None:
    _srv, store = sidecar
    reference = reference_store()
    for s in (store, reference):
        s.put(("c", "a"), "k1", {"text": "one"})
        s.put(("c", "b"), "k2", {"text": "two"})
    for s in (store, reference):
        # max_depth=0 truncates every namespace to the root, as InMemoryStore does (it was refused).
        assert s.list_namespaces(max_depth=0) == [()]
        assert s.list_namespaces(prefix=("none",), max_depth=0) == []
    # Past int32 (the wire's counts) is "all" (it raised a bare ValueError while encoding).
    for kwargs in ({"limit": 2**31}, {"limit": 2**40, "offset": 1}, {"offset": 2**31}):
        assert _norm(store.search(("c",), **kwargs)) == _norm(reference.search(("c",), **kwargs))
        assert store.list_namespaces(**kwargs) == reference.list_namespaces(**kwargs)
    assert store.list_namespaces(max_depth=2**31) == reference.list_namespaces(max_depth=2**31)
    # Negative counts slice InMemoryStore's lists from the end, which no app means: a ValueError naming the argument.
    for call, field in (
        (lambda: store.search(("c",), limit=-1), "ops[0].search.limit"),
        (lambda: store.search(("c",), offset=-1), "ops[0].search.offset"),
        (lambda: store.list_namespaces(limit=-1), "ops[0].list_namespaces.limit"),
        (lambda: store.list_namespaces(offset=-2), "ops[0].list_namespaces.offset"),
        (lambda: store.list_namespaces(max_depth=-1), "ops[0].list_namespaces.max_depth"),
    ):
        with pytest.raises(ValueError, match=rf"^{re.escape(field)}: \w+ must be >= 0, got -\d") as err:
            call()
        assert err.value.field_violations[0][0] == field  # type: ignore[attr-defined]


def test_a_batch_larger_than_one_call_is_split_keeping_its_semantics(sidecar) -> None:
    """The sidecar takes 1,000 ops per call; a larger batch failed with INVALID_ARGUMENT."""
    srv, store = sidecar
    calls: list[int] = []
    channel = counting_channel(srv.target, calls)
    counted = SidecarStore(namespace=store.namespace, channel=channel, index={"fields": FIELDS})
    reference = reference_store()

    def big(s: BaseStore) -> list[Any]:
        s.put(("big",), "k0", {"text": "old"})
        ops: list[Any] = [GetOp(("big",), f"k{i % 7}") for i in range(1500)]
        ops += [PutOp(("big",), f"k{i % 900}", {"text": f"new {i}"}) for i in range(1200)]
        ops.append(SearchOp(("big",), limit=3))
        # Reads see the state before the batch's writes, however many calls carry them.
        return [*s.batch(ops), s.get(("big",), "k0"), s.get(("big",), "k899"), len(s.search(("big",), limit=2000))]

    calls.clear()
    assert _norm(big(counted)) == _norm(big(reference))
    assert calls[:4] == [1, 1000, 501, 900]  # the put, the reads in two calls, the 900 distinct writes in one
    # Writes are applied in one call, all or none: more than 1,000 distinct keys is a clear error, nothing sent.
    calls.clear()
    with pytest.raises(ValueError, match=r"writes 1001 items.*split them into several batches"):
        counted.batch([PutOp(("big",), f"w{i}", {"v": i}) for i in range(1001)])
    assert calls == []
    # Over the wire, the sidecar's cap names itself.
    with pytest.raises(grpc.RpcError, match="at most 1000 operations per StoreBatch call"):
        srv.client.agent.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app-cap", ops=[
            agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["a"], key="k"))] * 1001), timeout=10)
    counted.close()
