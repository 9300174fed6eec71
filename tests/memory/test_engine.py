"""MemoryEngine behaviour on every store backend: idempotent writes, read-your-writes, background
derivation, delete-everywhere, update, crash repair between commit and index update, isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core.embedding import HashingEmbedder, create_embedder
from core.errors import InvalidArgumentError, NotFoundError
from memory.engine import DeriveFn, MemoryEngine
from memory.model import Granularity, MemoryMessage, SearchQuery
from memory.store import InMemoryStore, MemoryStore
from memory.units import derive_units

NS = "acme/chat"
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)

CONVERSATION = [
    ("alice", "I adopted a kitten named Pepper from the shelter last week"),
    ("bob", "Congrats! What breed is Pepper?"),
    ("alice", "A grey tabby, she loves chasing laser pointers"),
    ("bob", "My saxophone lessons start on Monday"),
    ("alice", "ok"),
    ("bob", "I will practise jazz standards every evening"),
]


def messages(session: str = "s1", prefix: str = "m", turns=CONVERSATION) -> list[MemoryMessage]:  # type: ignore[no-untyped-def]
    return [
        MemoryMessage(f"{prefix}{i}", session, spk, text, T0 + timedelta(minutes=i))
        for i, (spk, text) in enumerate(turns)
    ]


@pytest.fixture
def make_engine(store_factory: Callable[[], MemoryStore]) -> Iterator[Callable[..., MemoryEngine]]:
    engines: list[MemoryEngine] = []

    def factory(background: bool = False) -> MemoryEngine:
        engine = MemoryEngine(store_factory(), create_embedder("hashing"), background=background)
        engine.load()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.close()


class RecordingEmbedder(HashingEmbedder):
    """The fake embedder, remembering every text it was asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
        self.seen.extend(texts)
        return super().embed(texts)


def hit_message_ids(engine: MemoryEngine, query: str, ns: str = NS, **kw) -> set[str]:  # type: ignore[no-untyped-def]
    result = engine.search(ns, SearchQuery(query, top_k=50, **kw))
    return {mid for hit in result.hits for mid in hit.unit.message_ids}


def test_write_is_idempotent_per_message_id(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    first = engine.write(NS, "s1", messages())
    assert (first.written, first.unchanged) == (6, 0)
    assert first.message_ids == [f"m{i}" for i in range(6)]
    again = engine.write(NS, "s1", messages())
    assert (again.written, again.unchanged) == (0, 6)
    engine.flush()
    before = engine.stats(NS)
    engine.write(NS, "s1", messages()[:3])
    engine.flush()
    after = engine.stats(NS)
    assert after.messages == before.messages == 6
    assert after.units == before.units
    assert after.generation == before.generation  # nothing was committed


def test_raw_turns_are_searchable_as_soon_as_write_returns(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(background=True)
    engine.write(NS, "s1", messages())
    # no flush: the background worker may not have run yet
    assert "m0" in hit_message_ids(engine, "kitten Pepper shelter")
    engine.flush()
    stats = engine.stats(NS)
    assert stats.pending_sessions == 0
    assert {"turn", "exchange", "session"} <= set(stats.units)


def test_server_assigns_ids_and_changed_content_is_rewritten(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    result = engine.write(NS, "s1", [MemoryMessage("", "s1", "alice", "no id given")])
    assert len(result.message_ids[0]) == 32
    engine.write(NS, "s1", [MemoryMessage("m0", "s1", "alice", "the aquarium has axolotls")])
    changed = engine.write(NS, "s1", [MemoryMessage("m0", "s1", "alice", "the museum has dinosaurs")])
    assert changed.written == 1
    engine.flush()
    hits = engine.search(NS, SearchQuery("axolotls aquarium", top_k=50)).hits
    assert hits and not any("axolotls" in hit.unit.text for hit in hits)
    assert "m0" in hit_message_ids(engine, "museum dinosaurs")
    assert engine.get(NS, ["m0"])[0].text == "the museum has dinosaurs"


def test_validation_errors_name_the_field(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    bad = [
        MemoryMessage("a", "s1", "x", "fine"),
        MemoryMessage("b", "s1", "x", "fine"),
        MemoryMessage("c", "s1", "x", "   "),
        MemoryMessage("a", "s1", "x", "dup"),
        MemoryMessage("x" * 300, "s1", "x", "long id"),
    ]
    with pytest.raises(InvalidArgumentError) as exc:
        engine.write(NS, "s1", bad)
    fields = [v.field for v in exc.value.violations]
    assert fields == ["messages[2].text", "messages[3].id", "messages[4].id"]
    assert engine.stats(NS).messages == 0  # nothing of a rejected request is stored
    with pytest.raises(InvalidArgumentError) as exc:
        engine.search(NS, SearchQuery("", top_k=-1))
    assert [v.field for v in exc.value.violations] == ["query", "top_k"]


def test_a_message_id_cannot_move_to_another_session(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages()[:2])
    with pytest.raises(InvalidArgumentError) as exc:
        engine.write(NS, "s2", [MemoryMessage("m1", "s2", "bob", "moved?")])
    assert exc.value.violations[0].field == "messages[0].id"
    assert "s1" in exc.value.violations[0].description


def test_delete_removes_message_units_index_entries_and_postings(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    engine.write(NS, "s2", messages("s2", "n", [("carol", "my grey tabby cat is called Smokey")]))
    engine.flush()
    assert "m0" in hit_message_ids(engine, "kitten Pepper shelter")
    index = engine.index(NS)
    covering = index.units_of_message("m0")
    assert len(covering) >= 2  # the turn and at least one exchange window
    result = engine.delete(NS, message_ids=["m0", "does-not-exist"])
    assert result.messages == 1 and result.sessions_rederived == 1 and result.units >= 1

    with pytest.raises(NotFoundError):
        engine.get(NS, ["m0"])
    # no stored unit covers it any more, and every derived unit was rebuilt without its words
    for batch in engine.store.iter_units(NS):
        for stored in batch:
            assert "m0" not in stored.unit.message_ids
            assert "shelter" not in stored.unit.text
    index = engine.index(NS)
    assert index.units_of_message("m0") == set()
    for key in covering:
        assert index.unit(key) is None or "m0" not in index.unit(key).message_ids  # type: ignore[union-attr]
    for gran in index.granularities():
        lexical = index.lexical(gran)
        assert lexical is not None and not lexical.search("shelter", 10)
    assert "m0" not in hit_message_ids(engine, "kitten Pepper shelter")
    # the rest of the session and the other session are intact
    assert {"m1", "m2"} <= hit_message_ids(engine, "Pepper tabby breed")
    assert "n0" in hit_message_ids(engine, "Smokey")


def test_delete_a_session_and_the_whole_namespace(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    engine.write(NS, "s2", messages("s2", "n", [("carol", "my grey tabby cat is called Smokey")]))
    engine.flush()
    result = engine.delete(NS, session_id="s1")
    assert result.messages == 6
    assert engine.sessions(NS) == ["s2"]
    assert not hit_message_ids(engine, "saxophone jazz Pepper") & {f"m{i}" for i in range(6)}
    assert all(s.unit.session_id == "s2" for b in engine.store.iter_units(NS) for s in b)
    engine.delete(NS, everything=True)
    stats = engine.stats(NS)
    assert (stats.messages, stats.units, engine.index(NS).size()) == (0, {}, 0)
    assert engine.search(NS, SearchQuery("Smokey")).hits == []


def test_update_rederives_and_unknown_id_is_not_found(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    engine.flush()
    updated = engine.update(NS, MemoryMessage("m3", "", "bob", "My trombone lessons start on Monday"))
    assert updated.written == 1
    engine.flush()
    assert engine.get(NS, ["m3"])[0].session_id == "s1"
    texts = [s.unit.text for b in engine.store.iter_units(NS) for s in b]
    assert not any("saxophone" in t for t in texts)
    assert any("trombone" in t for t in texts)
    with pytest.raises(NotFoundError):
        engine.update(NS, MemoryMessage("nope", "", "bob", "x"))


def test_list_pages_in_arrival_order(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    seen: list[str] = []
    token = ""
    while True:
        page, token = engine.list_messages(NS, page_size=4, page_token=token)
        seen += [m.id for m in page]
        if not token:
            break
    assert seen == [f"m{i}" for i in range(6)]
    with pytest.raises(InvalidArgumentError):
        engine.list_messages(NS, page_token="garbage")


def test_namespaces_never_see_each_other(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    engine.write("other/chat", "s1", [MemoryMessage("m0", "s1", "eve", "quantum cryptography notes")])
    engine.flush()
    mine = engine.search(NS, SearchQuery("quantum cryptography", top_k=50)).hits
    assert not any("quantum" in hit.unit.text for hit in mine)
    theirs = engine.search("other/chat", SearchQuery("kitten Pepper", top_k=50)).hits
    assert [hit.unit.text for hit in theirs if hit.unit.granularity == Granularity.TURN] == [
        "eve: quantum cryptography notes"
    ]
    assert engine.get("other/chat", ["m0"])[0].text == "quantum cryptography notes"
    assert engine.search("empty/ns", SearchQuery("anything")).hits == []


def test_index_failure_after_commit_is_repaired_on_next_access(make_engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages()[:2])

    def crash(*_args, **_kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated crash between commit and index update")

    monkeypatch.setattr(engine, "_mirror", crash)
    result = engine.write(NS, "s1", messages()[2:4])  # committed; the index update "crashes"
    assert result.written == 2
    monkeypatch.undo()
    assert "m3" in hit_message_ids(engine, "saxophone lessons Monday")
    stats = engine.stats(NS)
    assert stats.index_generation == stats.generation


def test_restart_rebuilds_indexes_and_finishes_pending_derivation(make_engine) -> None:  # type: ignore[no-untyped-def]
    first = make_engine()
    first.write(NS, "s1", messages())
    # "crash": the process dies before the background derivation ran
    assert first.stats(NS).pending_sessions == 1
    assert set(first.stats(NS).units) == {"turn"}
    second = make_engine()  # a new process over the same database
    assert "m0" in hit_message_ids(second, "kitten Pepper shelter")
    second.flush()
    stats = second.stats(NS)
    assert stats.pending_sessions == 0
    assert {"turn", "exchange", "session"} <= set(stats.units)
    assert stats.index_generation == stats.generation


def test_time_filters_select_overlapping_units(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    engine.write(
        NS, "s2", [MemoryMessage("late", "s2", "alice", "Pepper got a new laser pointer", T0 + timedelta(days=30))]
    )
    engine.flush()
    got = hit_message_ids(engine, "Pepper laser pointer", time_start=T0 + timedelta(days=1))
    assert got == {"late"}
    got = hit_message_ids(
        engine, "Pepper laser pointer", time_end=T0 + timedelta(days=1), granularities=(Granularity.TURN,)
    )
    assert "late" not in got and "m2" in got


def test_sizes_report_indexed_units_for_metrics(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", messages())
    sizes = engine.sizes()
    assert sizes["memory_units_indexed"] == 6 and sizes["memory_namespaces_loaded"] >= 1


def test_role_speaker_turns_are_embedded_without_prefix_and_share_the_query_vector() -> None:
    from core.embedding import CachingEmbedder
    from memory.store import InMemoryStore

    inner = RecordingEmbedder()
    engine = MemoryEngine(InMemoryStore(), CachingEmbedder(inner), background=False)
    try:
        now = datetime.now(UTC)
        engine.write("ns", "warm", [MemoryMessage("w", "warm", "alice", "unrelated words", now)])
        # The agent's search (or its guard) embedded the user's message as it is.
        engine.search("ns", SearchQuery("Book me a table for two at eight", top_k=3))
        inner.seen.clear()
        engine.write(
            "ns",
            "s1",
            [
                MemoryMessage("u1", "s1", "user", "Book me a table for two at eight", now),
                MemoryMessage("a1", "s1", "Assistant", "Booked: Rosa's, 8 pm, two people.", now),
                MemoryMessage("c1", "s1", "caroline", "I paint sunsets on weekends.", now),
            ],
        )
        # The user's turn came from the cache (same text as the query); the assistant's turn is embedded
        # without its role prefix; a person's name stays part of the embedded text.
        assert inner.seen == ["Booked: Rosa's, 8 pm, two people.", "caroline: I paint sunsets on weekends."]
        # Hits still quote the speaker.
        hits = engine.search("ns", SearchQuery("table for two", top_k=5, granularities=(Granularity.TURN,))).hits
        assert "user: Book me a table for two at eight" in [h.unit.text for h in hits]
    finally:
        engine.close()


def test_prefetch_embeds_what_search_and_write_will_ask_for() -> None:
    from core.embedding import CachingEmbedder
    from memory.store import InMemoryStore

    inner = RecordingEmbedder()
    engine = MemoryEngine(InMemoryStore(), CachingEmbedder(inner), background=False)
    try:
        msg = MemoryMessage("t1-u", "s1", "user", "Where did Ann move last spring?", datetime.now(UTC))
        assert engine.prefetch(["where does Ann live?", "  "], [msg]) == 2
        # A role speaker's turn is embedded without its "user: " prefix (memory.units.embedding_text).
        assert inner.seen == ["Where did Ann move last spring?", "where does Ann live?"]
        inner.seen.clear()
        engine.write("ns", "s1", [msg])
        hits = engine.search("ns", SearchQuery("where does Ann live?", top_k=3)).hits
        # The turn unit and the query vector came from the cache: neither reached the model again.
        assert "where does Ann live?" not in inner.seen
        assert "Where did Ann move last spring?" not in inner.seen
        assert hits and hits[0].unit.message_ids == ("t1-u",)
        # Without a cache there is nothing to keep the vectors in: prefetch does nothing.
        assert MemoryEngine(InMemoryStore(), HashingEmbedder(), background=False).prefetch(["q"]) == 0
    finally:
        engine.close()


@pytest.mark.parametrize("composed", [True, False])
def test_derived_units_take_their_turns_vectors_without_a_model_pass(store_factory, composed: bool) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    embedder = RecordingEmbedder()
    engine = MemoryEngine(
        store_factory(), embedder, background=False, policy=lambda _ns: {"units": {"composed_vectors": composed}}
    )
    engine.load()
    try:
        msgs = messages()
        engine.write(NS, "s1", msgs)
        engine.flush()
        index = engine.index(NS)
        by_message = {m.id: m for m in msgs}
        turn_vector = {}
        derived = []
        for m in msgs:
            for key in index.units_of_message(m.id):
                unit = index.unit(key)
                assert unit is not None
                if unit.granularity == Granularity.TURN:
                    turn_vector[m.id] = index.vector(key)
                else:
                    derived.append((key, unit))
        assert {u.granularity for _, u in derived} >= {Granularity.EXCHANGE, Granularity.SESSION}
        for key, unit in derived:
            stored = index.vector(key)
            assert stored is not None
            if composed:
                words = [np.sqrt(len(by_message[mid].text.split()) + 1) for mid in unit.message_ids]
                expected = sum(w * turn_vector[mid] for w, mid in zip(words, unit.message_ids, strict=True))
                expected = expected / np.linalg.norm(expected)
            else:
                expected = HashingEmbedder().embed([unit.text])[0]
            assert np.allclose(stored, expected, atol=1e-5), unit.id
        # Composed: the model only ever saw the turns; otherwise every derived text went through it too.
        turn_texts = {f"{m.speaker}: {m.text}" for m in msgs}
        assert (set(embedder.seen) <= turn_texts) is composed
    finally:
        engine.close()


def test_units_of_another_model_are_re_embedded_at_load_with_derived_units_composed() -> None:
    import numpy as np

    from memory.store import InMemoryStore

    class Renamed(RecordingEmbedder):
        """Another model: different name, different vectors."""

        @property
        def name(self) -> str:
            return "renamed-model"

        def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
            self.seen.extend(texts)
            return HashingEmbedder.embed(self, [t.upper() + " v2" for t in texts])

    store = InMemoryStore()
    first = MemoryEngine(store, HashingEmbedder(), background=False)
    first.load()
    first.write(NS, "s1", messages())
    first.flush()
    first.close()

    embedder = Renamed()
    second = MemoryEngine(store, embedder, background=False)
    try:
        second.load()
        index = second.index(NS)
        stored = {s.unit.id: s for batch in store.iter_units(NS) for s in batch}
        assert {s.model for s in stored.values()} == {"renamed-model"}
        turns = {s.unit.message_ids[0]: s for s in stored.values() if s.unit.granularity == Granularity.TURN}
        # Only the turns went through the new model; windows, digests and facts were composed from them.
        assert sorted(embedder.seen) == sorted(s.unit.text for s in turns.values())
        derived = [s for s in stored.values() if s.unit.granularity != Granularity.TURN]
        assert derived
        for s in derived:
            weights = [np.sqrt(len(turns[mid].unit.text.split())) for mid in s.unit.message_ids]
            expected = sum(w * turns[mid].vector for w, mid in zip(weights, s.unit.message_ids, strict=True))
            np.testing.assert_allclose(s.vector, expected / np.linalg.norm(expected), atol=1e-5)
            np.testing.assert_allclose(index.vector(s.key), s.vector, atol=1e-6)
    finally:
        second.close()


def _count_derivations(cpu_s: float) -> tuple[list[int], DeriveFn]:
    """The default derivation, its background calls counted, each spending at least ``cpu_s`` of its thread's CPU."""
    calls = [0]

    def derive(session_id, msgs, policy):  # type: ignore[no-untyped-def]
        # Write also calls a custom derivation (for its turn units); only the worker's calls count.
        if threading.current_thread().name == "memory-consolidation":
            calls[0] += 1
            start = time.thread_time()
            while time.thread_time() - start < cpu_s:
                pass
        return derive_units(session_id, msgs)

    return calls, derive


@pytest.mark.parametrize("duty", [1.0, 0.02])
def test_derive_duty_bounds_how_often_a_busy_session_is_rederived(store_factory, duty: float) -> None:  # type: ignore[no-untyped-def]
    # Each re-derivation reads and derives the whole session. With derive_duty 0.02, a derivation that took
    # 30 ms of CPU holds the session for ~1.5 s, so Writes every 50 ms coalesce into the next derivation;
    # with 1.0 the worker derives while the Writes go on. flush() skips the hold, and either way every
    # message ends up in the derived units.
    calls, derive = _count_derivations(0.03)
    engine = MemoryEngine(store_factory(), create_embedder("hashing"), derive=derive, derive_duty=duty)
    try:
        engine.load()
        turns = messages()
        engine.write(NS, "s1", turns[:2])
        deadline = time.monotonic() + 10
        while engine.stats(NS).pending_sessions and time.monotonic() < deadline:  # derived at once
            time.sleep(0.01)
        first = calls[0]
        assert first >= 1
        for message in turns[2:]:
            engine.write(NS, "s1", [message])
            time.sleep(0.05)
        during = calls[0] - first
        assert engine.flush()
        if duty < 1.0:
            assert during == 0, during
        else:
            assert during >= 1, during  # not held: at least one derivation ran among the Writes
        windows = [s.unit for s in engine.store.session_units(NS, ["s1"]) if s.unit.granularity == Granularity.EXCHANGE]
        derived = {mid for unit in windows for mid in unit.message_ids}
        assert derived == {m.id for m in turns}
        assert engine.stats(NS).pending_sessions == 0
    finally:
        engine.close()


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5])
def test_derive_duty_outside_zero_to_one_is_refused(duty: float) -> None:
    with pytest.raises(ValueError, match="derive_duty"):
        MemoryEngine(InMemoryStore(), create_embedder("hashing"), derive_duty=duty, background=False)


def test_session_derivation_waits_for_interactive_work_at_most_a_second(store_factory) -> None:  # type: ignore[no-untyped-def]
    # An agent turn holds engine.interactive(): the derivation the previous turn's write queued must not
    # share the GIL with it, but a steady stream of turns must not stop derivation either (1 s bound).
    engine = MemoryEngine(store_factory(), create_embedder("hashing"))
    try:
        engine.load()

        def derived_within(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while engine.stats(NS).pending_sessions and time.monotonic() < deadline:
                time.sleep(0.02)
            return engine.stats(NS).pending_sessions == 0

        with engine.interactive():
            engine.write(NS, "s1", messages())
            assert "m0" in hit_message_ids(engine, "kitten Pepper shelter")  # raw turns: at once
            time.sleep(0.3)
            assert engine.stats(NS).pending_sessions == 1  # held back while the turn runs
        assert derived_within(5.0)  # and derived once it ended

        with engine.interactive():
            engine.write(NS, "s2", messages("s2", "n"))
            assert derived_within(5.0)  # a turn that never ends delays it by at most ~1 s

        with engine.interactive():
            engine.write(NS, "s3", messages("s3", "k"))
            assert engine.flush()  # flush does not wait for the turn
            assert engine.stats(NS).pending_sessions == 0
    finally:
        engine.close()


def test_a_backlog_of_sessions_is_derived_without_waiting_for_turns(store_factory) -> None:  # type: ignore[no-untyped-def]
    # Many busy threads: waiting up to 1 s per session would let the backlog grow a second per session, so
    # while 4 or more sessions are queued behind it, derivation runs at once even with a turn in flight.
    engine = MemoryEngine(store_factory(), create_embedder("hashing"))
    try:
        engine.load()
        with engine.interactive():
            for i in range(12):
                engine.write(NS, f"s{i}", messages(f"s{i}", f"x{i}-"))
            deadline = time.monotonic() + 4.0
            while engine.stats(NS).pending_sessions > 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert engine.stats(NS).pending_sessions <= 4
        assert engine.flush()
    finally:
        engine.close()


def test_deleted_words_do_not_stay_behind_in_the_embedders_cache(store_factory) -> None:  # type: ignore[no-untyped-def]
    from core.embedding import CachingEmbedder

    cache = CachingEmbedder(create_embedder("hashing"))
    engine = MemoryEngine(store_factory(), cache, background=False)
    engine.load()
    engine.write(NS, "s1", messages())
    engine.write(NS, "s2", messages("s2", "n", [("carol", "my grey tabby cat is called Smokey")]))
    engine.flush()
    gone, kept = engine.get(NS, ["m0"])[0], engine.get(NS, ["n0"])[0]
    cache.embed([gone.text, kept.text])  # as a guard check or a search of those words would
    assert cache.is_cached([gone.text, f"{gone.speaker}: {gone.text}"])
    engine.delete(NS, message_ids=["m0"])
    assert not cache.is_cached([gone.text]) and not cache.is_cached([f"{gone.speaker}: {gone.text}"])
    assert cache.is_cached([kept.text, f"{kept.speaker}: {kept.text}"])
    engine.delete(NS, everything=True)
    assert not cache.is_cached([kept.text])
    engine.close()


def test_unit_ids_stay_distinct_when_ids_contain_slashes(make_engine) -> None:  # type: ignore[no-untyped-def]
    """Session ``a`` with message ``b/turn/c`` and session ``a/turn/b`` with message ``c`` once shared the turn unit
    id ``a/turn/b/turn/c``: the second Write replaced the first message's turn unit."""
    engine = make_engine()
    engine.write(NS, "a", [MemoryMessage("b/turn/c", "", "alice", "my axolotl lives in a cold aquarium")])
    engine.write(NS, "a/turn/b", [MemoryMessage("c", "", "bob", "an axolotl aquarium needs a chiller")])
    engine.flush()
    index = engine.index(NS)
    for mid in ("b/turn/c", "c"):
        turns = [u for k in index.units_of_message(mid) if (u := index.unit(k)) and u.granularity == Granularity.TURN]
        assert [u.message_ids for u in turns] == [(mid,)]
    assert hit_message_ids(engine, "axolotl aquarium") == {"b/turn/c", "c"}
    engine.delete(NS, session_id="a/turn/b")
    assert hit_message_ids(engine, "axolotl aquarium") == {"b/turn/c"}


def test_ids_of_the_longest_allowed_length_fit_every_derived_unit(make_engine) -> None:  # type: ignore[no-untyped-def]
    """A 255-character session id and message ids make unit ids within the store's 255-character column
    (Postgres refused the derived units' longer ids, so the session stayed pending for ever)."""
    engine = make_engine()
    session = "s" * 255
    long_ids = [f"{i}" + "m" * 254 for i in range(3)]
    engine.write(NS, session, [MemoryMessage(mid, "", "alice", f"note {i} about the harbour")
                               for i, mid in enumerate(long_ids)])
    assert engine.flush()
    stats = engine.stats(NS)
    assert stats.pending_sessions == 0
    assert {"turn", "exchange", "session"} <= set(stats.units)
    units = [s.unit for batch in engine.store.iter_units(NS) for s in batch]
    assert all(len(u.id) <= 255 for u in units)
    assert len({u.id for u in units if u.granularity == Granularity.TURN}) == 3
    assert hit_message_ids(engine, "harbour") >= set(long_ids)


def test_nul_characters_and_control_characters_in_session_ids_are_refused(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    bad = [
        MemoryMessage("a", "", "x", "a NUL \x00 inside"),
        MemoryMessage("b", "", "x\x00", "fine"),
        MemoryMessage("c", "", "x", "fine", metadata={"k": "v\x00"}),
    ]
    with pytest.raises(InvalidArgumentError) as exc:
        engine.write(NS, "s1", bad)
    assert [v.field for v in exc.value.violations] == [
        "messages[0].text", "messages[1].speaker", "messages[2].metadata['k']"]
    for session in ("tab\there", " edge"):
        with pytest.raises(InvalidArgumentError) as exc:
            engine.write(NS, session, messages()[:1])
        assert [v.field for v in exc.value.violations] == ["session_id"]
    assert engine.stats(NS).messages == 0


class DeleteOnFirstRead:
    """Delegates to a real store; when armed, the next ``get_messages`` runs ``hook`` right after it returns (a
    Delete of another client landing between Update's check and its commit)."""

    def __init__(self, inner: MemoryStore):
        self._inner = inner
        self.hook: Callable[[], object] | None = None

    def get_messages(self, namespace: str, ids: list[str]):  # type: ignore[no-untyped-def]
        found = self._inner.get_messages(namespace, ids)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return found

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


def test_an_update_racing_a_delete_does_not_bring_the_message_back(store_factory) -> None:  # type: ignore[no-untyped-def]
    store = DeleteOnFirstRead(store_factory())
    engine = MemoryEngine(store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    engine.load()
    engine.write(NS, "s1", messages()[:2])
    store.hook = lambda: engine.delete(NS, message_ids=["m0"])
    with pytest.raises(NotFoundError):
        engine.update(NS, MemoryMessage("m0", "", "alice", "my secret is 5678"))
    assert [m.id for m in engine.list_messages(NS)[0]] == ["m1"]
    result = engine.search(NS, SearchQuery("secret 5678", top_k=50))
    assert not any("secret" in hit.unit.text for hit in result.hits)
    engine.close()


def test_filters_reach_units_outside_the_namespace_wide_candidates(make_engine) -> None:  # type: ignore[no-untyped-def]
    """Filters used to apply to the top 80 candidates of the whole namespace: a small session's turn that ranks
    below them was never returned, however it matched the filter. Now a filtered search widens its candidates."""
    engine = make_engine()
    for k in range(60):
        engine.write(NS, f"big{k}", [MemoryMessage(f"b{k}_{i}", "", "alice", f"my cat Pepper likes fish, note {k} {i}",
                                                   T0 + timedelta(minutes=k)) for i in range(2)])
    engine.write(NS, "small", [MemoryMessage("s0", "", "bob", "I also have a cat, her name is Luna",
                                             T0 + timedelta(days=30))])
    engine.flush()
    query = "cat Pepper fish"
    assert "s0" not in hit_message_ids(engine, query)  # outranked by the 120 others
    assert hit_message_ids(engine, query, session_ids=("small",)) == {"s0"}
    assert hit_message_ids(engine, query, time_start=T0 + timedelta(days=20)) == {"s0"}


def test_top_k_beyond_the_candidate_count_returns_that_many_hits(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", [MemoryMessage(f"m{i}", "", "alice", f"harbour note number {i}") for i in range(150)])
    for top_k in (50, 120):
        hits = engine.search(NS, SearchQuery("harbour note", top_k=top_k, granularities=(Granularity.TURN,))).hits
        assert len(hits) == top_k


def test_a_time_filter_leaves_out_messages_without_a_time(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.write(NS, "s1", [MemoryMessage("timed", "", "alice", "the ferry leaves at noon", T0)])
    engine.write(NS, "s2", [MemoryMessage("untimed", "", "alice", "the ferry leaves at dawn")])
    engine.flush()
    assert hit_message_ids(engine, "ferry leaves") == {"timed", "untimed"}
    assert hit_message_ids(engine, "ferry leaves", time_start=T0 - timedelta(days=1)) == {"timed"}
    assert hit_message_ids(engine, "ferry leaves", time_end=T0 + timedelta(days=1)) == {"timed"}


def test_times_whose_utc_value_is_out_of_range_are_invalid_arguments(make_engine) -> None:  # type: ignore[no-untyped-def]
    from datetime import timezone

    engine = make_engine()
    edge = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5)))  # year 0 in UTC
    with pytest.raises(InvalidArgumentError) as exc:
        engine.write(NS, "s1", [MemoryMessage("a", "", "x", "fine", edge), MemoryMessage("b", "", "x", " ")])
    assert [v.field for v in exc.value.violations] == ["messages[0].time", "messages[1].text"]
    engine.write(NS, "s1", messages()[:1])
    with pytest.raises(InvalidArgumentError) as exc:
        engine.search(NS, SearchQuery("kitten", time_start=edge))
    assert [v.field for v in exc.value.violations] == ["time_start"]
