"""Domain types of answer selection. No protobuf."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.gates.types import TokenLike, TokenStream


@dataclass(frozen=True)
class Candidate:
    """One agent's answer, with the token logprobs it was generated with (optional)."""

    answer: str
    agent_id: str = ""
    tokens: Sequence[TokenLike] | TokenStream = ()
    #: The same agent's first-round answer tokens in a multi-round debate (optional).
    first_round_tokens: Sequence[TokenLike] | TokenStream = ()
    #: [start, end) token indices of the answer proper inside ``tokens`` (None: all of them).
    answer_span: tuple[int, int] | None = None


@dataclass(frozen=True)
class Selection:
    """The chosen answer and why."""

    selection_id: str
    index: int
    answer: str
    #: Default: share of candidates in the winning cluster. Learned: the model's P(correct) of the choice.
    confidence: float
    #: Per candidate, in request order: its cluster's share (default) or P(correct) (learned).
    scores: list[float]
    #: Agreement clusters as lists of candidate indices, largest first.
    clusters: list[list[int]]
    #: Discrete semantic entropy over clusters, −Σ (nᶜ/N) ln(nᶜ/N), in nats (0 = all agree).
    semantic_entropy: float
    #: The same divided by ln N, in [0, 1].
    normalized_semantic_entropy: float
    #: ``agreement`` (the untrained default) or ``learned``.
    method: str
    #: Mean token entropy per candidate (missing_mass variant, nats); NaN without tokens.
    mean_entropy: list[float] = field(default_factory=list)
    #: What the default would have chosen (equals ``index`` when method is ``agreement``).
    default_index: int = 0


@dataclass(frozen=True)
class TrainResult:
    """Outcome of fitting the learned selector for one namespace."""

    active: bool
    message: str
    n_sets: int
    n_train_sets: int = 0
    n_heldout_sets: int = 0
    heldout_default_accuracy: float = math.nan
    heldout_learned_accuracy: float = math.nan
    model_version: int = 0
