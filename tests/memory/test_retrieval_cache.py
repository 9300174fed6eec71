"""The retriever's per-index cache of what covers each message (memory/retrieval.py, ``_structure_cache``)."""

from __future__ import annotations

from collections.abc import Callable

from core.embedding import create_embedder
from memory.engine import MemoryEngine
from memory.model import MemoryMessage, SearchQuery
from memory.store import MemoryStore
from tests.memory.test_segments import NS, SID, T0, conversation


def test_searches_across_writes_and_deletes_rank_as_on_a_fresh_index(
    store_factory: Callable[[], MemoryStore],
) -> None:
    # The retriever keeps, per index, the units covering each message and each turn's neighbours across
    # queries; a write or delete must never leave a search looking at the old ones.
    engine = MemoryEngine(store_factory(), create_embedder("hashing"), background=False)
    engine.load()
    queries = ["how did the sourdough starter go", "Lisbon trip step", "bike repair went badly", "tax forms day 2"]

    def ranking(e: MemoryEngine) -> list[list[tuple[str, float]]]:
        return [[(h.unit.id, round(h.score, 9)) for h in e.search(NS, SearchQuery(q, top_k=20)).hits] for q in queries]

    try:
        msgs = conversation(40)
        engine.write(NS, SID, msgs[:30])
        engine.flush()
        ranking(engine)  # fills the cache
        engine.write(NS, SID, msgs[30:])  # new neighbours and windows for the turns at the end
        engine.flush()
        ranking(engine)
        engine.delete(NS, message_ids=["m12", "m29"])  # windows around them change
        engine.write(NS, SID, [MemoryMessage("m5", SID, "user", "The Lisbon trip got cancelled, the bike too.", T0)])
        engine.flush()
        seen = ranking(engine)
        fresh = MemoryEngine(engine.store, create_embedder("hashing"), background=False)
        fresh.load()
        try:
            assert seen == ranking(fresh)
            assert any(seen)
        finally:
            fresh.close()
    finally:
        engine.close()
