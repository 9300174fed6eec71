"""Domain types of the entropy gates: tokens in, policies, decisions, calibration results. No protobuf."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np

from core import entropy as E
from core.errors import FieldViolation, InvalidArgumentError


class GateKind(StrEnum):
    """Which action a gate decides on."""

    #: Lazy retrieval (L-RAG): answer from compact context, retrieve only when uncertain.
    RETRIEVE = "retrieve"
    #: Call a tool instead of answering from parametric knowledge.
    CALL_TOOL = "call_tool"
    #: Switch to a larger model (Entropy-Adaptive Decoding).
    ESCALATE = "escalate"

    @classmethod
    def parse(cls, value: GateKind | str, field_name: str = "gate") -> GateKind:
        """Accept ``GateKind``, ``"retrieve"``, ``"RETRIEVE"`` or ``"GATE_RETRIEVE"``."""
        if isinstance(value, GateKind):
            return value
        key = str(value).strip().lower().removeprefix("gate_")
        try:
            return cls(key)
        except ValueError:
            raise InvalidArgumentError(
                field_name, f"unknown gate {value!r}; choose from {[g.value for g in cls]}"
            ) from None


@dataclass(frozen=True)
class TopLogprob:
    """One alternative at a position."""

    token: str
    logprob: float


@dataclass(frozen=True)
class Token:
    """One generated token: its natural-log probability, the top-k alternatives, optionally H_full."""

    token: str = ""
    logprob: float = 0.0
    top_logprobs: Sequence[TopLogprob | float] = ()
    #: Full-vocabulary entropy in nats, when the client computed it (vLLM, llama.cpp).
    full_entropy: float | None = None


#: What ``GateEngine.decide`` accepts as tokens: our dataclasses, OpenAI-shaped dicts
#: (``{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}``) or a ready TokenStream.
TokenLike = Token | Mapping[str, Any]


@dataclass(frozen=True)
class TokenStream:
    """Validated token logprobs as arrays: what the entropy math consumes.

    ``top`` is ``(n, k)`` natural-log probabilities sorted descending, padded with −inf; a token without
    alternatives gets its own sampled logprob as the only entry. ``full_entropy`` is None unless every
    token carried one.
    """

    sampled: np.ndarray
    top: np.ndarray
    full_entropy: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.sampled.shape[0])

    @classmethod
    def from_lists(
        cls,
        sampled: Sequence[float],
        top_rows: Sequence[Sequence[float]],
        full_entropy: Sequence[float | None] | None = None,
        *,
        field_name: str = "tokens",
    ) -> TokenStream:
        """Build from parallel lists, rejecting NaN/inf/positive logprobs with the exact field path."""
        sampled_arr = np.asarray(sampled, dtype=np.float64).reshape(-1)
        n = sampled_arr.shape[0]
        if len(top_rows) != n:
            raise InvalidArgumentError(field_name, f"{len(top_rows)} top_logprobs rows for {n} tokens")
        violations: list[FieldViolation] = []
        bad = np.flatnonzero(~_valid_logprob(sampled_arr))
        for i in bad[:5].tolist():
            violations.append(FieldViolation(f"{field_name}[{i}].logprob", _why(float(sampled_arr[i]))))
        lengths = np.fromiter((len(r) for r in top_rows), dtype=np.int64, count=n)
        flat = (
            np.fromiter((v for r in top_rows for v in r), dtype=np.float64, count=int(lengths.sum()))
            if n
            else np.zeros(0)
        )
        bad_flat = np.flatnonzero(~_valid_logprob(flat))
        if bad_flat.size:
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for j in bad_flat[:5].tolist():
                row = int(np.searchsorted(offsets, j, side="right") - 1)
                violations.append(
                    FieldViolation(
                        f"{field_name}[{row}].top_logprobs[{j - offsets[row]}].logprob",
                        _why(float(flat[j])),
                    )
                )
        full: np.ndarray | None = None
        if full_entropy is not None and len(full_entropy) == n and n:
            vals = np.array([np.nan if v is None else v for v in full_entropy], dtype=np.float64)
            # Presence from the field itself: an explicit NaN is a bad value, not an absent one.
            present = np.array([v is not None for v in full_entropy], dtype=bool)
            for i in np.flatnonzero(present & (~np.isfinite(vals) | (vals < 0)))[:5].tolist():
                violations.append(
                    FieldViolation(f"{field_name}[{i}].full_entropy", f"must be finite and >= 0 nats, got {vals[i]}")
                )
            if present.all():
                full = vals
        if violations:
            raise InvalidArgumentError(violations)
        width = int(lengths.max()) if n and lengths.max() > 0 else 1
        top = np.full((n, width), -np.inf)
        if flat.size:
            # Scatter the ragged rows into the padded matrix without a Python loop per value.
            rows = np.repeat(np.arange(n), lengths)
            cols = np.arange(flat.size) - np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            top[rows, cols] = flat
            top = -np.sort(-top, axis=1)
        empty = lengths == 0
        if empty.any():
            top[empty, 0] = sampled_arr[empty]
        return cls(sampled=sampled_arr, top=top, full_entropy=full)

    @classmethod
    def from_packed(
        cls,
        sampled: Sequence[float] | np.ndarray,
        top_flat: Sequence[float] | np.ndarray,
        top_k: int,
        full_entropy: Sequence[float] | np.ndarray | None = None,
        *,
        field_name: str = "packed_tokens",
    ) -> TokenStream:
        """Build from flat arrays: ``top_flat`` is n × top_k row-major, −inf pads short rows.

        Bad values raise InvalidArgumentError naming ``<field_name>.logprobs[i]`` or
        ``<field_name>.top_logprobs[j]``.
        """
        s = np.asarray(sampled, dtype=np.float64).reshape(-1)
        flat = np.asarray(top_flat, dtype=np.float64).reshape(-1)
        n = s.shape[0]
        if top_k < 0:
            raise InvalidArgumentError(f"{field_name}.top_k", "must be >= 0")
        if flat.size != n * top_k:
            raise InvalidArgumentError(
                f"{field_name}.top_logprobs",
                f"holds {flat.size} values; {n} tokens × top_k {top_k} needs {n * top_k}",
            )
        violations = [
            FieldViolation(f"{field_name}.logprobs[{i}]", _why(float(s[i])))
            for i in np.flatnonzero(~_valid_logprob(s))[:5].tolist()
        ]
        # −inf is padding (probability 0) here; NaN, +inf and positive values are not.
        bad = np.flatnonzero(~(np.isneginf(flat) | _valid_logprob(flat)))
        violations += [
            FieldViolation(f"{field_name}.top_logprobs[{j}]", _why(float(flat[j]))) for j in bad[:5].tolist()
        ]
        full: np.ndarray | None = None
        if full_entropy is not None and len(full_entropy):
            full = np.asarray(full_entropy, dtype=np.float64).reshape(-1)
            if full.size != n:
                violations.append(
                    FieldViolation(f"{field_name}.full_entropy", f"holds {full.size} values for {n} tokens")
                )
            else:
                violations += [
                    FieldViolation(f"{field_name}.full_entropy[{i}]", f"must be finite and >= 0 nats, got {full[i]}")
                    for i in np.flatnonzero(~np.isfinite(full) | (full < 0))[:5].tolist()
                ]
        if violations:
            raise InvalidArgumentError(violations)
        if top_k == 0:
            return cls(sampled=s, top=s[:, None].copy(), full_entropy=full)
        top = -np.sort(-flat.reshape(n, top_k), axis=1)
        empty = np.isneginf(top[:, 0])
        if empty.any():
            top[empty, 0] = s[empty]
        return cls(sampled=s, top=top, full_entropy=full)

    @classmethod
    def from_tokens(cls, tokens: Sequence[TokenLike], *, field_name: str = "tokens") -> TokenStream:
        """Build from :class:`Token` objects or OpenAI-shaped dicts."""
        sampled: list[float] = []
        rows: list[list[float]] = []
        fulls: list[float | None] = []
        for tok in tokens:
            if isinstance(tok, Mapping):
                sampled.append(float(tok.get("logprob", 0.0)))
                rows.append([_alt_logprob(a) for a in tok.get("top_logprobs") or ()])
                fe = tok.get("full_entropy")
                fulls.append(None if fe is None else float(fe))
            else:
                sampled.append(float(tok.logprob))
                rows.append([_alt_logprob(a) for a in tok.top_logprobs])
                fulls.append(tok.full_entropy)
        has_full = any(f is not None for f in fulls)
        return cls.from_lists(sampled, rows, fulls if has_full else None, field_name=field_name)


def _alt_logprob(alt: Any) -> float:
    if isinstance(alt, int | float):
        return float(alt)
    if isinstance(alt, Mapping):
        return float(alt["logprob"])
    return float(alt.logprob)


def _valid_logprob(x: np.ndarray) -> np.ndarray:
    # APIs round; a logprob of +1e-6 is a probability of 1, not an error.
    return np.isfinite(x) & (x <= 1e-4)


def _why(value: float) -> str:
    if math.isnan(value):
        return "logprob is NaN; must be a finite natural-log probability <= 0"
    if math.isinf(value):
        return f"logprob is {value}; must be a finite natural-log probability <= 0"
    return f"logprob {value} > 0; must be a natural-log probability <= 0"


def check_span(span: tuple[int, int] | None, n_tokens: int, field_name: str) -> None:
    """Raise InvalidArgumentError unless ``span`` is None or a non-empty [start, end) inside the tokens.

    A span past the end, or an empty one, would make ``span_mean`` a silent 0.
    """
    if span is None:
        return
    start, end = span
    if not 0 <= start < end <= n_tokens:
        raise InvalidArgumentError(
            field_name, f"need 0 <= start < end <= {n_tokens} (the number of tokens), got [{start}, {end})"
        )


@dataclass(frozen=True)
class GatePolicy:
    """How one gate turns token logprobs into a decision: ``fire ⇔ aggregation(variant) > threshold``.

    A threshold means something only next to its variant, k and aggregation, so they are stored together.
    """

    #: Per-token variant, one of ``core.entropy.TOKEN_VARIANTS``.
    variant: str = "missing_mass"
    #: Span aggregation, one of ``core.entropy.AGGREGATIONS``.
    aggregation: str = "mean"
    #: Fire when the score is strictly above this.
    threshold: float = 0.5
    #: Within one session, once fired the gate stays on until the score is <= threshold − hysteresis.
    hysteresis: float = 0.0
    #: Use only the k most likely alternatives per token (0 = all the client sent).
    top_k: int = 20
    #: Parameters of the aggregation (see ``core.entropy.AggregationParams``).
    q: float = 0.9
    window: int = 5
    d_min: int = 0
    level: float = 1.0
    first_k: int = 8

    @property
    def signal(self) -> str:
        """The key of the score in the decision's ``signals`` map."""
        return E.signal_name(self.variant, self.aggregation)

    def params(self, span: tuple[int, int] | None = None) -> E.AggregationParams:
        """The aggregation parameters, with an optional answer span."""
        return E.AggregationParams(
            q=self.q, window=self.window, d_min=self.d_min, level=self.level, first_k=self.first_k, span=span
        )

    def validate(self, field_name: str = "policy") -> GatePolicy:
        """Raise InvalidArgumentError naming each bad field; return self."""
        v: list[FieldViolation] = []
        if self.variant not in E.TOKEN_VARIANTS:
            v.append(
                FieldViolation(
                    f"{field_name}.variant", f"unknown {self.variant!r}; choose from {list(E.TOKEN_VARIANTS)}"
                )
            )
        if self.aggregation not in E.AGGREGATIONS:
            v.append(
                FieldViolation(
                    f"{field_name}.aggregation",
                    f"unknown {self.aggregation!r}; choose from {list(E.AGGREGATIONS)}",
                )
            )
        for name in ("threshold", "hysteresis", "q", "level"):
            if not math.isfinite(getattr(self, name)):
                v.append(FieldViolation(f"{field_name}.{name}", "must be finite"))
        if self.hysteresis < 0:
            v.append(FieldViolation(f"{field_name}.hysteresis", "must be >= 0"))
        if self.top_k < 0:
            v.append(FieldViolation(f"{field_name}.top_k", "must be >= 0 (0 = all)"))
        if not 0.0 <= self.q <= 1.0:
            v.append(FieldViolation(f"{field_name}.q", "must be in [0, 1]"))
        if self.window < 1:
            v.append(FieldViolation(f"{field_name}.window", "must be >= 1"))
        if self.d_min < 0:
            v.append(FieldViolation(f"{field_name}.d_min", "must be >= 0"))
        if self.first_k < 1:
            v.append(FieldViolation(f"{field_name}.first_k", "must be >= 1"))
        if v:
            raise InvalidArgumentError(v)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able) of every field."""
        return asdict(self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base: GatePolicy | None = None, field_name: str = "policy"
    ) -> GatePolicy:
        """Overlay ``data`` on ``base`` (default: the class defaults); unknown keys are an error."""
        base = base or cls()
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidArgumentError(f"{field_name}.{unknown[0]}", f"unknown policy key; choose from {sorted(names)}")
        try:
            typed = {k: type(getattr(base, k))(val) for k, val in data.items()}
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(field_name, str(exc)) from None
        return replace(base, **typed).validate(field_name)


#: Starting points until a namespace is calibrated. RETRIEVE follows L-RAG's τ = 0.5 on mean predictive
#: entropy; ESCALATE follows EAD's rolling window (w = 5, switch only after d_min tokens).
DEFAULT_POLICIES: dict[GateKind, GatePolicy] = {
    GateKind.RETRIEVE: GatePolicy(variant="missing_mass", aggregation="mean", threshold=0.5),
    GateKind.CALL_TOOL: GatePolicy(variant="missing_mass", aggregation="mean", threshold=0.5),
    GateKind.ESCALATE: GatePolicy(variant="missing_mass", aggregation="window_max", threshold=1.0, window=5, d_min=5),
}


@dataclass(frozen=True)
class PolicyVersion:
    """One stored version of a gate's policy. Version 0 is the configured default (never stored)."""

    gate: GateKind
    version: int
    policy: GatePolicy
    reason: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class GateDecision:
    """What ``GateEngine.decide`` returns. ``fire ⇔ score > threshold`` always holds."""

    decision_id: str
    gate: GateKind
    fire: bool
    score: float
    #: The threshold in effect (lowered by the hysteresis while a session's gate is on).
    threshold: float
    #: Every computed span signal, ``"variant.aggregation" → value``; ``signal`` names the score's.
    signals: dict[str, float]
    signal: str
    policy_version: int
    n_tokens: int


@dataclass(frozen=True)
class CalibrationObjective:
    """How ``GateEngine.calibrate`` picks a threshold.

    ``kind``:
      * ``fire_rate`` — fire on ``target_fire_rate`` of recent decisions (quantile of the score);
      * ``recall`` — conformal (class-conditional LAC): fire on at least 1 − ``alpha`` of the cases that
        needed the action, guaranteed for exchangeable data;
      * ``logistic`` — fit P(needed | s) = σ(a + b·s), fire when it exceeds ``probability_cutoff``.
    """

    kind: str = "recall"
    target_fire_rate: float = 0.2
    alpha: float = 0.1
    probability_cutoff: float = 0.5
    #: Fix the signal (``"variant.aggregation"``); empty = the one with the best AUROC.
    signal: str = ""
    #: Fewer labelled outcomes than this (or fewer than ``min_per_class`` of either label) → keep the policy.
    min_outcomes: int = 30
    min_per_class: int = 5
    #: Compute and report, but store nothing.
    dry_run: bool = False

    KINDS = ("fire_rate", "recall", "logistic")

    def validate(self) -> CalibrationObjective:
        """Raise InvalidArgumentError naming each bad field as CalibrateRequest names it; return self.

        The request has these as top-level fields (``alpha``, not ``objective.alpha``); ``kind`` is its
        ``objective`` enum.
        """
        v: list[FieldViolation] = []
        if self.kind not in self.KINDS:
            v.append(FieldViolation("objective", f"unknown {self.kind!r}; choose from {list(self.KINDS)}"))
        if not 0.0 < self.target_fire_rate < 1.0:
            v.append(FieldViolation("target_fire_rate", "must be in (0, 1)"))
        if not 0.0 < self.alpha < 1.0:
            v.append(FieldViolation("alpha", "must be in (0, 1)"))
        if not 0.0 < self.probability_cutoff < 1.0:
            v.append(FieldViolation("probability_cutoff", "must be in (0, 1)"))
        if self.min_outcomes < 2:
            v.append(FieldViolation("min_outcomes", "must be >= 2"))
        if self.min_per_class < 1:
            v.append(FieldViolation("min_per_class", "must be >= 1"))
        if v:
            raise InvalidArgumentError(v)
        return self


@dataclass(frozen=True)
class CalibrationResult:
    """What calibration found and whether it stored a new policy version."""

    updated: bool
    #: Why (e.g. "only 12 labelled outcomes, need 30; kept policy v3").
    message: str
    #: The policy in effect afterwards (the new version when ``updated``).
    policy: PolicyVersion
    n_outcomes: int
    n_positive: int
    #: AUROC of every signal for predicting "the action was needed" on the labelled outcomes.
    auroc: dict[str, float] = field(default_factory=dict)
    signal: str = ""
    #: On the outcomes used: share of decisions that would fire, share of needed cases caught.
    fire_rate: float = math.nan
    recall: float = math.nan
    #: Logistic fit (objective ``logistic`` only).
    logistic_a: float = math.nan
    logistic_b: float = math.nan
