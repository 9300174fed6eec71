"""Proto <-> domain conversion for SelectService."""

from __future__ import annotations

import math

from agentrt.v1 import select_pb2

from runtime.convert.gate import span_from_proto, stream_from_proto, tokens_from_proto
from runtime.gates.types import MAX_PADDED_VALUES
from runtime.selection.types import Candidate, Selection, TrainResult


def candidates_from_proto(req: select_pb2.SelectRequest) -> list[Candidate]:
    """Domain candidates with validated token arrays (bad logprobs name ``candidates[i].tokens[j]...``).

    All candidates' padded token matrices share one budget of MAX_PADDED_VALUES values: each is checked
    against what the earlier ones left before it is allocated (INVALID_ARGUMENT naming the field).
    """
    out = []
    budget = MAX_PADDED_VALUES
    for i, c in enumerate(req.candidates):
        tokens = stream_from_proto(
            c.tokens,
            c.packed_tokens,
            c.HasField("packed_tokens"),
            f"candidates[{i}].tokens",
            f"candidates[{i}].packed_tokens",
            max_values=budget,
        )
        budget -= tokens.top.size
        first = tokens_from_proto(c.first_round_tokens, f"candidates[{i}].first_round_tokens", max_values=budget)
        budget -= first.top.size
        out.append(
            Candidate(
                answer=c.answer,
                agent_id=c.agent_id,
                tokens=tokens,
                first_round_tokens=first,
                answer_span=span_from_proto(c.answer_span, c.HasField("answer_span"), f"candidates[{i}].answer_span"),
            )
        )
    return out


def selection_to_proto(s: Selection, *, stored: bool = True) -> select_pb2.Selection:
    """Selection message (``selection_id`` empty when nothing was stored)."""
    n = max(len(s.scores), 1)
    return select_pb2.Selection(
        index=s.index,
        answer=s.answer,
        confidence=s.confidence,
        selection_id=s.selection_id if stored else "",
        scores=s.scores,
        clusters=[select_pb2.Cluster(indices=c, share=len(c) / n) for c in s.clusters],
        semantic_entropy=s.semantic_entropy,
        normalized_semantic_entropy=s.normalized_semantic_entropy,
        method=s.method,
        mean_entropy=s.mean_entropy,
        default_index=s.default_index,
    )


def train_to_proto(r: TrainResult) -> select_pb2.TrainSelectorResponse:
    """TrainSelectorResponse; accuracies not computed are sent as 0."""

    def num(x: float) -> float:
        return x if math.isfinite(x) else 0.0

    return select_pb2.TrainSelectorResponse(
        active=r.active,
        message=r.message,
        n_sets=r.n_sets,
        n_train_sets=r.n_train_sets,
        n_heldout_sets=r.n_heldout_sets,
        heldout_default_accuracy=num(r.heldout_default_accuracy),
        heldout_learned_accuracy=num(r.heldout_learned_accuracy),
        model_version=r.model_version,
    )
