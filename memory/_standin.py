"""Trivial stand-ins for ``memory.units.derive_units`` and ``memory.retrieval.search``.

Used by ``memory/engine.py`` only while those modules do not exist yet, so the service works end to
end: one turn unit per message, one exchange unit per adjacent pair, and reciprocal-rank fusion of the
dense and lexical channels of every granularity, packed under the word budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memory.index import NamespaceIndex
from memory.model import (
    Granularity,
    MemoryMessage,
    MemoryUnit,
    RoutingDiagnostics,
    SearchHit,
    SearchQuery,
    SearchResult,
)


def derive_units(session_id: str, messages: Sequence[MemoryMessage]) -> list[MemoryUnit]:
    """Turn units (one per message) and exchange units (adjacent pairs) of one session."""
    out: list[MemoryUnit] = []
    for m in messages:
        text = f"{m.speaker}: {m.text}" if m.speaker else m.text
        out.append(MemoryUnit(f"{session_id}/t/{m.id}", Granularity.TURN, text, (m.id,), session_id, m.time, m.time))
    for a, b in itertools.pairwise(messages):
        text = "\n".join(f"{m.speaker}: {m.text}" if m.speaker else m.text for m in (a, b))
        out.append(
            MemoryUnit(
                f"{session_id}/x/{a.id}/{b.id}",
                Granularity.EXCHANGE,
                text,
                (a.id, b.id),
                session_id,
                a.time,
                b.time,
            )
        )
    return out


def search(
    index: NamespaceIndex, query: SearchQuery, query_vector: np.ndarray, policy: Mapping[str, Any]
) -> SearchResult:
    """RRF of dense and lexical candidates over every granularity, then word-budget packing."""
    k = max(query.top_k * 4, 50)
    fused: dict[int, float] = {}
    grans = [g for g in index.granularities() if not query.granularities or g in query.granularities]
    for gran in grans:
        for keys, _ in (
            index.dense_search(gran, query_vector, k),
            index.lexical_search(gran, query.query, k),
        ):
            for rank, key in enumerate(keys.tolist()):
                fused[key] = fused.get(key, 0.0) + 1.0 / (60 + rank)
    hits: list[SearchHit] = []
    used_words = 0
    seen: set[str] = set()
    for key, score in sorted(fused.items(), key=lambda kv: -kv[1]):
        unit = index.unit(key)
        if unit is None or (query.session_ids and unit.session_id not in query.session_ids):
            continue
        if query.time_start and unit.time_end and unit.time_end < query.time_start:
            continue
        if query.time_end and unit.time_start and unit.time_start > query.time_end:
            continue
        if seen.intersection(unit.message_ids):
            continue
        words = len(unit.text.split())
        if query.token_budget and used_words + words > query.token_budget:
            continue
        used_words += words
        seen.update(unit.message_ids)
        hits.append(SearchHit(unit, score))
        if len(hits) >= query.top_k:
            break
    return SearchResult(hits, RoutingDiagnostics({}, {}))
