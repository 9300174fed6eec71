"""Conformance of the item store backends (in-memory reference, SQL on SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from langgraph.store.base import GetOp, ListNamespacesOp, MatchCondition, PutOp, SearchOp

from core.embedding import create_embedder
from core.errors import InvalidArgumentError
from runtime.agent import schema
from runtime.agent.items import InMemoryItemBackend, ItemStore, SqlItemBackend
from tests.conftest import backend_url


def _backend(kind: str, tmp_path) -> Iterator[InMemoryItemBackend | SqlItemBackend]:
    if kind == "memory":
        yield InMemoryItemBackend()
        return
    from runtime.db import create_db_engine

    with backend_url(kind, tmp_path, "items.db") as url:
        engine = create_db_engine(url)
        try:
            schema.metadata.create_all(engine)
            yield SqlItemBackend(engine)
        finally:
            engine.dispose()


BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ItemStore]:
    for backend in _backend(request.param, tmp_path):
        yield ItemStore(backend, create_embedder("hashing"))


class _SameVector:
    """Every text gets one vector: cosine cannot tell items apart, so whatever ranks them is the lexical channel."""

    dim, name = 8, "same-vector"

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.tile(np.eye(1, self.dim, dtype=np.float32), (len(texts), 1))


@pytest.fixture(params=BACKENDS)
def flat_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ItemStore]:
    for backend in _backend(request.param, tmp_path):
        yield ItemStore(backend, _SameVector())


def put(ns, key, value, index=("$",)):
    return PutOp(ns, key, value, list(index) if index else False)


def test_put_get_update_delete(store: ItemStore) -> None:
    store.batch("t/a", [put(("users", "1"), "prefs", {"theme": "dark", "n": 1})])
    [item] = store.batch("t/a", [GetOp(("users", "1"), "prefs")])
    assert item is not None and item.value == {"theme": "dark", "n": 1}
    created = item.created_at
    store.batch("t/a", [put(("users", "1"), "prefs", {"theme": "light"})])
    [item] = store.batch("t/a", [GetOp(("users", "1"), "prefs")])
    assert item.value == {"theme": "light"} and item.created_at == created
    assert item.updated_at >= created
    store.batch("t/a", [PutOp(("users", "1"), "prefs", None)])
    assert store.batch("t/a", [GetOp(("users", "1"), "prefs")]) == [None]


def test_scopes_are_isolated(store: ItemStore) -> None:
    store.batch("t/a", [put(("docs",), "k", {"x": 1})])
    assert store.batch("t/b", [GetOp(("docs",), "k")]) == [None]
    assert store.batch("u/a", [SearchOp(("docs",))]) == [[]]
    assert store.batch("t/b", [ListNamespacesOp()]) == [[]]


def test_reads_in_a_batch_see_state_before_its_writes(store: ItemStore) -> None:
    res = store.batch("t/a", [put(("d",), "k", {"v": 1}), GetOp(("d",), "k"), put(("d",), "k", {"v": 2})])
    assert res == [None, None, None]
    [item] = store.batch("t/a", [GetOp(("d",), "k")])
    assert item.value == {"v": 2}


def test_search_prefix_filter_paging_and_order(store: ItemStore) -> None:
    ops = [put(("docs", "a"), f"k{i}", {"i": i, "kind": "even" if i % 2 == 0 else "odd"}) for i in range(6)]
    ops.append(put(("docsx",), "other", {"i": 99}))
    store.batch("t/a", ops)
    [found] = store.batch("t/a", [SearchOp(("docs",), limit=10)])
    assert [i.key for i in found] == [f"k{i}" for i in range(6)]
    [found] = store.batch("t/a", [SearchOp(("docs",), filter={"kind": "odd"}, limit=2, offset=1)])
    assert [i.key for i in found] == ["k3", "k5"]
    [found] = store.batch("t/a", [SearchOp((), filter={"i": {"$gte": 4, "$lt": 99}})])
    assert [i.key for i in found] == ["k4", "k5"]
    [found] = store.batch("t/a", [SearchOp((), filter={"i": {"$ne": 0}}, limit=100)])
    assert len(found) == 6


def test_search_with_query_ranks_by_similarity(store: ItemStore) -> None:
    store.batch("t/a", [
        put(("docs",), "py", {"text": "python programming tutorial"}, index=["text"]),
        put(("docs",), "cook", {"text": "baking bread at home"}, index=["text"]),
        put(("docs",), "raw", {"text": "python"}, index=None),
    ])
    [found] = store.batch("t/a", [SearchOp(("docs",), query="python programming tutorial", limit=3)])
    assert found[0].key == "py" and found[0].score == pytest.approx(1.0, abs=1e-5)
    assert found[1].key == "cook" and found[1].score < found[0].score
    # Unindexed items fill the end of a short page, unscored.
    assert found[2].key == "raw" and found[2].score is None


def test_hybrid_search_ranks_by_the_words_of_indexed_fields(flat_store: ItemStore) -> None:
    store, scope = flat_store, "t/a"
    store.batch(scope, [
        put(("d",), "body", {"title": "weekly notes", "body": "zebra zebra zebra"}, ["title"]),
        put(("d",), "tag", {"title": "weekly notes", "tags": ["travel", "zebra"]}, ["title", "tags[*]"]),
        put(("d",), "meta", {"meta": {"topic": "zebra crossing"}, "title": "misc"}, ["meta.topic"]),
        put(("d",), "whole", {"zebra": "stripes", "note": "horses"}),  # "$": strings, not keys
        put(("d",), "raw", {"title": "zebra"}, None),  # not indexed: no score, fills the tail
    ])

    def ranked(query: str, *, hybrid: bool = True, **kw) -> list[tuple[str, float | None]]:
        [hits] = store.batch(scope, [SearchOp(("d",), query=query, **kw)], hybrid={0} if hybrid else ())
        return [(h.key, h.score) for h in hits]

    # The same vector everywhere: cosine keeps insertion order, with equal scores.
    assert [k for k, _ in ranked("zebra", hybrid=False)] == ["body", "tag", "meta", "whole", "raw"]
    got = ranked("zebra")
    assert {k for k, _ in got[:2]} == {"tag", "meta"} and min(got[0][1], got[1][1]) > 0
    # The unindexed body, the "$" item's JSON key and the unindexed item hold the word but score nothing for it.
    assert got[2][1] == got[3][1] < 0 and got[4] == ("raw", None)
    assert ranked("horses")[0][0] == "whole" and ranked("crossing")[0][0] == "meta"
    # Filters and paging act as for the dense ranking.
    assert [k for k, _ in ranked("zebra", filter={"title": "weekly notes"})] == ["tag", "body"]
    assert [k for k, _ in ranked("zebra", limit=1, offset=1)] == [got[1][0]]


def test_list_namespaces(store: ItemStore) -> None:
    store.batch("t/a", [
        put(("a", "b", "c"), "k", {}), put(("a", "x"), "k", {}), put(("z", "b", "v1"), "k", {}),
    ])
    [ns] = store.batch("t/a", [ListNamespacesOp()])
    assert ns == [("a", "b", "c"), ("a", "x"), ("z", "b", "v1")]
    [ns] = store.batch("t/a", [ListNamespacesOp((MatchCondition("prefix", ("a",)),), max_depth=1)])
    assert ns == [("a",)]
    [ns] = store.batch("t/a", [ListNamespacesOp((MatchCondition("suffix", ("b", "*")),))])
    assert ns == [("a", "b", "c"), ("z", "b", "v1")]
    [ns] = store.batch("t/a", [ListNamespacesOp((MatchCondition("suffix", ("*", "v1")),))])
    assert ns == [("z", "b", "v1")]
    [ns] = store.batch("t/a", [ListNamespacesOp(limit=1, offset=1)])
    assert ns == [("a", "x")]


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (PutOp((), "k", {}), "ops[0].put.path"),
        (PutOp(("a.b",), "k", {}), "ops[0].put.path[0]"),
        (PutOp(("a",), "k" * 1001, {}), "ops[0].put.key"),
        (PutOp(("a",), "k\x00", {}), "ops[0].put.key"),
        (PutOp(("a" * 600, "b" * 400), "k", {}), "ops[0].put.path"),
        (PutOp(("a\x00",), "k", {}), "ops[0].put.path[0]"),
        (PutOp(("langgraph",), "k", {}), "ops[0].put.path[0]"),
        (SearchOp(("a",), limit=-1), "ops[0].search.limit"),
        (SearchOp(("a",), offset=-1), "ops[0].search.offset"),
        (SearchOp(("a",), {"n": {"$in": [1]}}), "ops[0].search.filter_json"),
        (ListNamespacesOp(max_depth=-1), "ops[0].list_namespaces.max_depth"),
    ],
)
def test_invalid_ops_name_the_field(store: ItemStore, op, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        store.batch("t/a", [op])
    assert err.value.violations[0].field == field
