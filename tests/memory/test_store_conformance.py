"""One conformance suite for every MemoryStore backend (in-memory reference, SQLite, Postgres)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memory.model import Granularity, MemoryMessage, MemoryUnit
from memory.store import Change, MemoryStore, StaleChange, StoredUnit, content_hash, unit_key

NS = "acme/chat"
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def msg(mid: str, text: str, session: str = "s1", minutes: int = 0, **meta: str) -> MemoryMessage:
    return MemoryMessage(mid, session, "alice", text, T0 + timedelta(minutes=minutes), dict(meta))


def unit(uid: str, mids: tuple[str, ...], session: str = "s1", gran: Granularity = Granularity.TURN) -> StoredUnit:
    vec = np.random.default_rng(abs(hash(uid)) % 2**32).standard_normal(8).astype(np.float32)
    u = MemoryUnit(uid, gran, f"text of {uid}", mids, session, T0, T0 + timedelta(minutes=1), 0.5)
    return StoredUnit(u, unit_key(NS, uid), vec / np.linalg.norm(vec), "model-a")


def test_empty_namespace_reads_are_empty_not_errors(store: MemoryStore) -> None:
    assert store.get_messages(NS, ["x"]) == {}
    assert store.session_messages(NS, "s1") == []
    assert store.list_messages(NS) == []
    assert store.list_sessions(NS) == []
    assert store.session_units(NS, ["s1"]) == []
    assert list(store.iter_units(NS)) == []
    assert store.generation(NS) == 0
    assert store.pending_sessions(NS) == []
    assert store.load_edges(NS) == []
    counts = store.counts(NS)
    assert (counts.messages, counts.sessions, counts.units, counts.edges) == (0, 0, {}, 0)


def test_messages_round_trip_losslessly_in_arrival_order(store: MemoryStore) -> None:
    m1 = msg("m1", "héllo 🐈 wörld", metadata_key="v")
    m2 = MemoryMessage("m2", "s1", "", "no time", None, {})
    gen = store.apply(NS, Change(upsert_messages=[m1, m2]))
    assert gen == 1 == store.generation(NS)
    got = store.get_messages(NS, ["m2", "m1", "missing"])
    assert set(got) == {"m1", "m2"}
    assert got["m1"].message == m1 and got["m2"].message == m2
    assert got["m1"].content_hash == content_hash(m1)
    assert [s.message.id for s in store.session_messages(NS, "s1")] == ["m1", "m2"]
    assert got["m1"].seq < got["m2"].seq


def test_replacing_a_message_keeps_its_place(store: MemoryStore) -> None:
    store.apply(NS, Change(upsert_messages=[msg("a", "one"), msg("b", "two"), msg("c", "three")]))
    store.apply(NS, Change(upsert_messages=[msg("b", "TWO"), msg("d", "four")]))
    ordered = store.session_messages(NS, "s1")
    assert [s.message.id for s in ordered] == ["a", "b", "c", "d"]
    assert ordered[1].message.text == "TWO"
    # The fingerprint names the same messages in the same order, with the replaced one's new hash.
    assert store.session_fingerprint(NS, "s1") == [(s.message.id, s.content_hash) for s in ordered]
    assert store.session_fingerprint(NS, "s1")[1] == ("b", content_hash(msg("b", "TWO")))
    assert store.session_fingerprint(NS, "missing") == []
    assert store.generation(NS) == 2


def test_list_pages_by_seq_and_filters_by_session(store: MemoryStore) -> None:
    store.apply(NS, Change(upsert_messages=[msg(f"m{i}", f"t{i}", session=f"s{i % 2}") for i in range(7)]))
    page1 = store.list_messages(NS, limit=3)
    page2 = store.list_messages(NS, after_seq=page1[-1].seq, limit=3)
    page3 = store.list_messages(NS, after_seq=page2[-1].seq, limit=3)
    assert [s.message.id for s in page1 + page2 + page3] == [f"m{i}" for i in range(7)]
    assert [s.message.id for s in store.list_messages(NS, session_id="s1")] == ["m1", "m3", "m5"]
    assert store.list_sessions(NS) == ["s0", "s1"]


def test_retention_candidates_are_the_expired_and_the_oldest_beyond_the_count(store: MemoryStore) -> None:
    # m0..m5 one minute apart, m6 without a time (never expires), m2 replaced later (keeps its place).
    store.apply(NS, Change(upsert_messages=[msg(f"m{i}", f"t{i}", session=f"s{i % 2}", minutes=i) for i in range(6)]))
    store.apply(NS, Change(upsert_messages=[MemoryMessage("m6", "s0", "alice", "no time", None, {})]))
    store.apply(NS, Change(upsert_messages=[msg("m2", "edited", session="s0", minutes=2)]))
    cutoff = T0 + timedelta(minutes=2)

    def candidates(older_than: datetime | None, keep_newest: int, limit: int = 100) -> list[str]:
        return store.retention_candidates(NS, older_than=older_than, keep_newest=keep_newest, limit=limit)

    assert candidates(None, 0) == []
    assert candidates(cutoff, 0) == ["m0", "m1"]  # time strictly before the cutoff
    assert candidates(None, 3) == ["m0", "m1", "m2", "m3"]  # all but the 3 latest arrivals
    # Both: the count applies to the messages age keeps (m2..m6), so m2 and m3 go too.
    assert candidates(cutoff, 3) == ["m0", "m1", "m2", "m3"]
    assert candidates(cutoff, 4) == ["m0", "m1", "m2"]
    assert candidates(cutoff, 100) == ["m0", "m1"]
    assert candidates(None, 3, limit=2) == ["m0", "m1"]  # oldest arrivals first
    assert candidates(T0 + timedelta(days=1), 0) == [f"m{i}" for i in range(6)]
    assert store.retention_candidates("other", older_than=cutoff, keep_newest=1, limit=10) == []


def test_units_round_trip_with_vectors_and_are_replaced_and_deleted(store: MemoryStore) -> None:
    u1, u2 = unit("s1/turn/a", ("a",)), unit("s1/x/a-b", ("a", "b"), gran=Granularity.EXCHANGE)
    store.apply(NS, Change(upsert_messages=[msg("a", "x"), msg("b", "y")], insert_units=[u1, u2]))
    got = store.get_units(NS, [u1.unit.id, u2.unit.id])
    assert got[u1.unit.id].unit == u1.unit and got[u2.unit.id].unit == u2.unit
    np.testing.assert_array_equal(got[u1.unit.id].vector, u1.vector)
    assert got[u2.unit.id].key == u2.key and got[u2.unit.id].model == "model-a"
    assert {s.unit.id for s in store.session_units(NS, ["s1"])} == {u1.unit.id, u2.unit.id}
    assert store.counts(NS).units == {"turn": 1, "exchange": 1}
    # insert of an existing id replaces it
    u1b = StoredUnit(MemoryUnit(u1.unit.id, Granularity.TURN, "new", ("a",), "s1"), u1.key, u1.vector, "model-b")
    store.apply(NS, Change(insert_units=[u1b], delete_units=[u2.unit.id]))
    assert [s.unit.text for s in store.session_units(NS, ["s1"])] == ["new"]
    assert store.get_units(NS, [u2.unit.id]) == {}


def test_units_covering_finds_each_unit_over_any_of_the_messages_once(store: MemoryStore) -> None:
    turn_a, turn_b = unit("s1/turn/a", ("a",)), unit("s1/turn/b", ("b",))
    window = unit("s1/x/a-b-c", ("a", "b", "c"), gran=Granularity.EXCHANGE)
    other = unit("s2/turn/d", ("d",), session="s2")
    store.apply(NS, Change(upsert_messages=[msg(i, i) for i in "abc"] + [msg("d", "d", session="s2")],
                           insert_units=[turn_a, turn_b, window, other]))
    covering = store.units_covering(NS, ["b", "c", "missing"])
    assert sorted(s.unit.id for s in covering) == ["s1/turn/b", "s1/x/a-b-c"]  # the window once, not twice
    got = {s.unit.id: s for s in covering}
    assert got["s1/x/a-b-c"].unit == window.unit and got["s1/x/a-b-c"].key == window.key
    np.testing.assert_array_equal(got["s1/x/a-b-c"].vector, window.vector)
    assert store.units_covering(NS, []) == [] and store.units_covering("other/ns", ["b"]) == []
    # A deleted unit no longer covers its messages.
    store.apply(NS, Change(delete_units=[window.unit.id]))
    assert [s.unit.id for s in store.units_covering(NS, ["c"])] == []


def test_iter_units_yields_everything_in_batches(store: MemoryStore) -> None:
    units = [unit(f"s1/turn/{i:03d}", (f"{i}",)) for i in range(23)]
    store.apply(NS, Change(insert_units=units))
    batches = list(store.iter_units(NS, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(s.unit.id for b in batches for s in b) == sorted(u.unit.id for u in units)


def test_deleting_messages_and_pending_marks(store: MemoryStore) -> None:
    store.apply(NS, Change(upsert_messages=[msg("a", "x"), msg("b", "y")], mark_pending=["s1", "s2"]))
    assert store.pending_sessions(NS) == ["s1", "s2"]
    store.apply(NS, Change(delete_messages=["a", "zzz"], clear_pending=["s1"]))
    assert set(store.get_messages(NS, ["a", "b"])) == {"b"}
    assert store.pending_sessions(NS) == ["s2"]
    # mark and clear of the same session in one change: the mark wins (a newer write is pending)
    store.apply(NS, Change(mark_pending=["s2"], clear_pending=["s2"]))
    assert store.pending_sessions(NS) == ["s2"]


def _keys(store: MemoryStore, n: int, namespace: str = NS, prefix: str = "m") -> list[int]:
    """Store ``n`` turn units (their keys are the edge ends) and return their keys."""
    units = [unit(f"s1/turn/{prefix}{i}", (f"{prefix}{i}",)) for i in range(n)]
    units = [StoredUnit(u.unit, unit_key(namespace, u.unit.id), u.vector, u.model) for u in units]
    store.apply(namespace, Change(upsert_messages=[msg(f"{prefix}{i}", f"t{i}") for i in range(n)], insert_units=units))
    return [u.key for u in units]


def test_edges_replace_upsert_and_load(store: MemoryStore) -> None:
    k = sorted(_keys(store, 6))
    store.replace_edges(NS, [(k[0], k[1], 0.5), (k[0], k[2], 0.25)])
    assert store.load_edges(NS) == [(k[0], k[1], 0.5), (k[0], k[2], 0.25)]
    store.upsert_edges(NS, [(k[0], k[1], 0.75), (k[3], k[4], 0.1)])
    assert store.load_edges(NS) == [(k[0], k[1], 0.75), (k[0], k[2], 0.25), (k[3], k[4], 0.1)]
    store.replace_edges(NS, [(k[4], k[5], 1.0)])
    assert store.load_edges(NS) == [(k[4], k[5], 1.0)]
    assert store.counts(NS).edges == 1


def test_edges_only_join_stored_units(store: MemoryStore) -> None:
    # Linking runs on what the index held when it started; a unit deleted since must not get edges back.
    k = sorted(_keys(store, 3))
    missing = unit_key(NS, "s9/turn/never-stored")
    store.upsert_edges(NS, [(k[0], k[1], 0.5), (k[1], missing, 0.9), (missing, k[2], 0.9)])
    assert store.load_edges(NS) == [(k[0], k[1], 0.5)]
    store.replace_edges(NS, [(missing, k[0], 0.9), (k[1], k[2], 0.4)])
    assert store.load_edges(NS) == [(k[1], k[2], 0.4)]


def test_deleting_a_unit_deletes_its_edges_and_a_re_derived_unit_keeps_them(store: MemoryStore) -> None:
    k = _keys(store, 4)

    def edge(a: int, b: int, w: float) -> tuple[int, int, float]:
        return (min(k[a], k[b]), max(k[a], k[b]), w)

    store.upsert_edges(NS, [edge(0, 1, 0.5), edge(1, 2, 0.6), edge(2, 3, 0.7), edge(0, 3, 0.8)])
    # m1's unit deleted for good; m2's replaced under the same id (re-derived): only m1's edges go.
    redone = unit("s1/turn/m2", ("m2",))
    store.apply(NS, Change(delete_messages=["m1"], delete_units=["s1/turn/m1", "s1/turn/m2"], insert_units=[redone]))
    assert store.load_edges(NS) == sorted([edge(2, 3, 0.7), edge(0, 3, 0.8)])
    assert store.counts(NS).edges == 2
    store.apply(NS, Change(delete_units=["s1/turn/m0", "s1/turn/m3"]))
    assert store.load_edges(NS) == [] and store.counts(NS).edges == 0


def test_namespaces_are_isolated(store: MemoryStore) -> None:
    other = "other/chat"
    store.apply(NS, Change(upsert_messages=[msg("m1", "mine")], insert_units=[unit("s1/turn/m1", ("m1",))]))
    store.apply(other, Change(upsert_messages=[msg("m1", "theirs")], mark_pending=["s1"]))
    a, b = _keys(store, 2, other, prefix="o")
    store.replace_edges(other, [(min(a, b), max(a, b), 1.0)])
    assert store.get_messages(NS, ["m1"])["m1"].message.text == "mine"
    assert store.get_messages(other, ["m1"])["m1"].message.text == "theirs"
    assert {s.unit.id for s in store.session_units(other, ["s1"])} == {"s1/turn/o0", "s1/turn/o1"}
    assert store.pending_sessions(NS) == [] and store.load_edges(NS) == []
    assert len(store.load_edges(other)) == 1
    assert store.namespaces() == sorted([NS, other])
    assert store.drop_namespace(other) == 3
    assert store.get_messages(other, ["m1"]) == {} and store.load_edges(other) == []
    assert store.get_messages(NS, ["m1"])["m1"].message.text == "mine"
    assert store.namespaces() == [NS]


def test_state_survives_a_new_store_object(store_factory) -> None:  # type: ignore[no-untyped-def]
    first = store_factory()
    first.apply(
        NS,
        Change(upsert_messages=[msg("m1", "durable")], insert_units=[unit("s1/turn/m1", ("m1",))], mark_pending=["s1"]),
    )
    second = store_factory()
    assert second.get_messages(NS, ["m1"])["m1"].message.text == "durable"
    assert second.generation(NS) == 1 and second.pending_sessions(NS) == ["s1"]
    assert [s.unit.id for b in second.iter_units(NS) for s in b] == ["s1/turn/m1"]


def test_unit_keys_are_stable_positive_and_namespaced() -> None:
    assert unit_key(NS, "u") == unit_key(NS, "u") > 0
    assert unit_key(NS, "u") != unit_key("other/chat", "u")
    assert content_hash(msg("a", "x")) != content_hash(msg("a", "y"))


@pytest.mark.parametrize("n", [1200])
def test_large_changes_respect_parameter_limits(store: MemoryStore, n: int) -> None:
    messages = [msg(f"m{i}", f"text {i}") for i in range(n)]
    units = [unit(f"s1/turn/m{i}", (f"m{i}",)) for i in range(n)]
    store.apply(NS, Change(upsert_messages=messages, insert_units=units))
    assert len(store.get_messages(NS, [m.id for m in messages])) == n
    store.apply(NS, Change(delete_messages=[m.id for m in messages], delete_units=[u.unit.id for u in units]))
    assert store.counts(NS).messages == 0 and store.counts(NS).units == {}


# -- plans checked inside the commit (replicas on one database) -------------------------------------------


def _fingerprint(store: MemoryStore, session: str = "s1") -> list[tuple[str, str]]:
    return store.session_fingerprint(NS, session)


def test_a_change_planned_from_a_session_that_changed_since_is_refused(store: MemoryStore) -> None:
    store.apply(NS, Change(upsert_messages=[msg("a", "one"), msg("b", "two")]))
    planned = _fingerprint(store)
    store.apply(NS, Change(delete_messages=["b"]))  # another replica's Delete commits first
    generation = store.generation(NS)
    window = unit("s1/x/a-b", ("a", "b"), gran=Granularity.EXCHANGE)
    stale = Change(insert_units=[window], expect_sessions={"s1": planned})
    with pytest.raises(StaleChange):
        store.apply(NS, stale)
    assert store.generation(NS) == generation and store.units_covering(NS, ["a", "b"]) == []
    fresh = Change(insert_units=[unit("s1/turn/a", ("a",))], expect_sessions={"s1": _fingerprint(store)})
    assert store.apply(NS, fresh) == generation + 1


def test_a_change_expecting_a_message_state_is_refused_when_it_differs(store: MemoryStore) -> None:
    m = msg("a", "one")
    store.apply(NS, Change(upsert_messages=[m]))  # stored by another replica after this plan read "absent"
    with pytest.raises(StaleChange):
        store.apply(NS, Change(upsert_messages=[m], expect_messages={"a": None}))
    with pytest.raises(StaleChange):
        store.apply(NS, Change(upsert_messages=[msg("a", "two")], expect_messages={"a": ("s1", "other hash")}))
    assert store.generation(NS) == 1
    store.apply(NS, Change(upsert_messages=[msg("a", "two")], expect_messages={"a": ("s1", content_hash(m))}))
    assert store.get_messages(NS, ["a"])["a"].message.text == "two"


def test_deleting_a_message_deletes_every_unit_still_covering_it(store: MemoryStore) -> None:
    """A Delete plans from the units it read; units another replica derived over the same messages since
    go with the message too, and are reported in the change so indexes drop them."""
    store.apply(NS, Change(upsert_messages=[msg("a", "x"), msg("b", "y")], insert_units=[unit("s1/turn/a", ("a",))]))
    late = unit("s1/x/a-b", ("a", "b"), gran=Granularity.EXCHANGE)
    store.apply(NS, Change(insert_units=[late, unit("s1/turn/b", ("b",))]))
    change = Change(delete_messages=["a"], delete_units=["s1/turn/a"])
    store.apply(NS, change)
    assert sorted(change.delete_units) == ["s1/turn/a", "s1/x/a-b"]
    assert store.units_covering(NS, ["a"]) == []
    assert [s.unit.id for s in store.units_covering(NS, ["b"])] == ["s1/turn/b"]


def test_a_unit_over_a_message_the_change_deletes_is_refused(store: MemoryStore) -> None:
    store.apply(NS, Change(upsert_messages=[msg("a", "x"), msg("b", "y")]))
    with pytest.raises(StaleChange):
        store.apply(NS, Change(delete_messages=["a"], insert_units=[unit("s1/turn/a", ("a",))]))
    assert store.generation(NS) == 1


def _at_once(*calls: Callable[[], object], rounds: int = 1) -> list[BaseException]:
    """Run ``calls`` in threads released together, ``rounds`` times; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(barrier: threading.Barrier, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    for _ in range(rounds):
        barrier = threading.Barrier(len(calls))
        threads = [threading.Thread(target=run, args=(barrier, c)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    return errors


def test_first_writes_of_a_namespace_from_two_stores_at_once_both_commit(
    store_factory: Callable[[], MemoryStore],
) -> None:
    a, b = store_factory(), store_factory()
    for r in range(15):
        ns = f"acme/new{r}"
        errors = _at_once(
            lambda ns=ns: a.apply(ns, Change(upsert_messages=[msg("a", "from a")])),  # type: ignore[misc]
            lambda ns=ns: b.apply(ns, Change(upsert_messages=[msg("b", "from b")])),  # type: ignore[misc]
        )
        assert errors == []
        assert a.generation(ns) == 2
        assert sorted(s.seq for s in a.list_messages(ns)) == [0, 1]


def test_a_namespace_drop_and_writes_from_another_store_at_once_all_commit(
    store_factory: Callable[[], MemoryStore],
) -> None:
    a, b = store_factory(), store_factory()
    write = Change(upsert_messages=[msg("a", "x")], insert_units=[unit("s1/turn/a", ("a",))])
    b.apply(NS, write)
    errors = _at_once(lambda: a.drop_namespace(NS), lambda: b.apply(NS, write), rounds=15)
    assert errors == []


def test_edges_upserted_from_two_stores_at_once_all_commit(store_factory: Callable[[], MemoryStore]) -> None:
    a, b = store_factory(), store_factory()
    keys = _keys(a, 6)
    edges = [(keys[i], keys[j], 0.5) for i in range(6) for j in range(i + 1, 6)]
    errors = _at_once(lambda: a.upsert_edges(NS, edges), lambda: b.upsert_edges(NS, edges), rounds=15)
    assert errors == []
    assert len(a.load_edges(NS)) == len(edges)
