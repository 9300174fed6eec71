"""Long sessions are derived in segments: units of a segment depend on its messages alone, and a background
pass re-derives only the segments that changed, with the same result as deriving the whole session."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.embedding import create_embedder
from memory.engine import MemoryEngine
from memory.model import Granularity, MemoryMessage, MemoryUnit
from memory.store import MemoryStore
from memory.units import UnitPolicy, derive_units, segment_digest_id
from tests.agent.openai_stub import OpenAIStub

NS = "acme/thread"
SID = "thread-1"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TOPICS = ["sourdough starter", "Lisbon trip", "bike repair", "tax forms", "piano lessons", "garden beds"]


def conversation(n: int, start: int = 0) -> list[MemoryMessage]:
    out = []
    for i in range(start, start + n):
        topic = TOPICS[(i // 7) % len(TOPICS)]
        speaker = "user" if i % 2 == 0 else "assistant"
        text = f"Message {i} about the {topic}: step {i % 5} went {'well' if i % 3 else 'badly'} on day {i // 11}."
        out.append(MemoryMessage(f"m{i}", SID, speaker, text, T0 + timedelta(minutes=i)))
    return out


def shape(units: list[MemoryUnit]) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(u.id, u.text, u.message_ids) for u in units}


def stored_shape(engine: MemoryEngine) -> set[tuple[str, str, tuple[str, ...]]]:
    return shape([s.unit for s in engine.store.session_units(NS, [SID])])


def test_a_long_session_is_derived_in_segments_that_depend_on_their_own_messages() -> None:
    policy = UnitPolicy(segment_messages=100)
    msgs = conversation(230)
    units = derive_units(SID, msgs, policy)
    digests = [u for u in units if u.granularity == Granularity.SESSION]
    assert [u.id for u in digests] == [segment_digest_id(SID, k) for k in range(3)]
    position = {m.id: i for i, m in enumerate(msgs)}
    for unit in units:
        assert len({position[mid] // 100 for mid in unit.message_ids}) == 1, unit.id

    def first_segments(us: list[MemoryUnit]) -> set[tuple[str, str, tuple[str, ...]]]:
        return shape([u for u in us if position[u.message_ids[0]] < 200])

    # Appending to the session changes the units of its last segment only.
    assert first_segments(derive_units(SID, msgs[:205], policy)) == first_segments(units)
    # A session of exactly one segment is derived as before segmentation (segment 0 keeps the digest id).
    assert shape(derive_units(SID, msgs[:100], policy)) == shape([u for u in units if position[u.message_ids[0]] < 100])
    # Off: one digest however long the session.
    whole = derive_units(SID, msgs, UnitPolicy(segment_messages=0))
    assert [u.id for u in whole if u.granularity == Granularity.SESSION] == [f"{SID}/session"]


def test_background_passes_rederive_changed_segments_only_and_match_a_full_derivation(
    store_factory: Callable[[], MemoryStore],
) -> None:
    engine = MemoryEngine(store_factory(), create_embedder("hashing"), background=False)
    engine.load()
    policy = UnitPolicy()
    assert policy.segment_messages == 100
    try:
        msgs = conversation(250)
        for start in range(0, 250, 50):
            engine.write(NS, SID, msgs[start : start + 50])
            engine.flush()
        assert stored_shape(engine) == shape(derive_units(SID, msgs, policy))

        # Two more messages: the last of three segments is derived, the first two are reused.
        before = dict(engine.segment_passes)
        msgs += conversation(2, start=250)
        engine.write(NS, SID, msgs[-2:])
        engine.flush()
        assert engine.segment_passes["derived"] - before.get("derived", 0) == 1
        assert engine.segment_passes["reused"] - before.get("reused", 0) == 2
        assert stored_shape(engine) == shape(derive_units(SID, msgs, policy))

        # A delete in the first segment shifts every later segment: all of them are re-derived, and no unit
        # of the deleted message or of the old segment boundaries is left.
        engine.delete(NS, message_ids=["m17"])
        msgs = [m for m in msgs if m.id != "m17"]
        msgs += conversation(3, start=252)
        engine.write(NS, SID, msgs[-3:])
        engine.flush()
        assert stored_shape(engine) == shape(derive_units(SID, msgs, policy))
        assert not any("m17" in ids for _, _, ids in stored_shape(engine))

        # An edit in the middle segment re-derives that segment (and nothing is lost elsewhere).
        note = " Edited: the piano tuner came."
        edited = [MemoryMessage(m.id, SID, m.speaker, m.text + note, m.time) if m.id == "m150" else m for m in msgs]
        before = dict(engine.segment_passes)
        engine.write(NS, SID, [m for m in edited if m.id == "m150"])
        engine.flush()
        assert engine.segment_passes["derived"] - before.get("derived", 0) == 1
        assert stored_shape(engine) == shape(derive_units(SID, edited, policy))

        # The namespace dropped and the same messages written again: every segment comes back.
        engine.delete(NS, everything=True)
        for start in range(0, len(edited), 60):
            engine.write(NS, SID, edited[start : start + 60])
        engine.flush()
        assert stored_shape(engine) == shape(derive_units(SID, edited, policy))
    finally:
        engine.close()


def enriched_ids(engine: MemoryEngine) -> set[tuple[str, ...]]:
    return {s.unit.message_ids for s in engine.store.session_units(NS, [SID]) if "first words" in s.unit.text}


def test_llm_enrichment_runs_per_derived_segment(store_factory: Callable[[], MemoryStore]) -> None:
    # The model names the first two turns of what it is shown as a fact.
    answer = json.dumps({"facts": [{"label": "first words", "turns": [0, 1]}]})
    with OpenAIStub() as llm:
        policy = {"units": {"llm_base_url": llm.base_url, "llm_model": f"fixed:{answer}"}}
        engine = MemoryEngine(store_factory(), create_embedder("hashing"), background=False, policy=lambda _ns: policy)
        engine.load()
        try:
            engine.write(NS, SID, conversation(230))
            engine.flush()
            enriched = enriched_ids(engine)
            # One enrichment per segment, each quoting that segment's first two turns.
            assert enriched == {("m0", "m1"), ("m100", "m101"), ("m200", "m201")}
            assert len(llm.requests) == 3
            engine.write(NS, SID, conversation(2, start=230))
            engine.flush()
            assert len(llm.requests) == 4  # only the last segment asked again
            enriched = enriched_ids(engine)
            assert enriched == {("m0", "m1"), ("m100", "m101"), ("m200", "m201")}
        finally:
            engine.close()
