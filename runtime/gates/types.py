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
from runtime.config import setting_boolean

#: Lowest logprob accepted (natural log). exp(−745) is already 0 in float64, and APIs mark "probability 0"
#: with far less (OpenAI and vLLM send −9999); below this, sums and squares over a long answer overflow to
#: inf/NaN, and a NaN score would read as "do not fire".
MIN_LOGPROB = -1e5
#: Highest full-vocabulary entropy accepted, in nats: ln |V| is ~12 for the largest vocabularies in use,
#: so anything near this is another unit or a bug, and far larger values overflow the aggregations.
MAX_FULL_ENTROPY = 1e3
#: Most alternatives one token may carry. APIs give at most 20 (OpenAI) or a configured handful (vLLM);
#: every token's row is padded to the widest one, so one very wide row costs memory for every token.
MAX_TOP_LOGPROBS = 100
#: Most values the padded ``(tokens, alternatives)`` matrices of one request may hold (32 MiB of float64):
#: many bare tokens plus one wide row would otherwise ask for gigabytes within the message size limit.
MAX_PADDED_VALUES = 1 << 22


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

    ``top`` is ``(n, k)`` natural-log probabilities sorted descending, padded with −inf; the row of a token
    sent without alternatives is all −inf (``core.entropy.token_signals`` then estimates its entropy by
    its surprisal). ``full_entropy`` is None unless every token carried one.
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
        top_k: int | None = None,
        max_values: int = MAX_PADDED_VALUES,
    ) -> TokenStream:
        """Build from parallel lists, rejecting bad logprobs with the exact field path.

        Each row keeps its ``top_k`` most likely alternatives (None or 0: all) before rows are padded to a
        matrix. Raises InvalidArgumentError for NaN/inf/positive logprobs or ones below
        :data:`MIN_LOGPROB`, full entropies outside [0, :data:`MAX_FULL_ENTROPY`], a row of more than
        :data:`MAX_TOP_LOGPROBS` alternatives (``<field_name>[i].top_logprobs``), and a padded matrix of
        more than ``max_values`` values (``<field_name>``).
        """
        sampled_arr = np.asarray(sampled, dtype=np.float64).reshape(-1)
        n = sampled_arr.shape[0]
        if len(top_rows) != n:
            raise InvalidArgumentError(field_name, f"{len(top_rows)} top_logprobs rows for {n} tokens")
        lengths = np.fromiter((len(r) for r in top_rows), dtype=np.int64, count=n)
        check_widths(lengths, field_name)
        violations: list[FieldViolation] = []
        bad = np.flatnonzero(~_valid_logprob(sampled_arr))
        for i in bad[:5].tolist():
            violations.append(FieldViolation(f"{field_name}[{i}].logprob", _why(float(sampled_arr[i]))))
        flat = (
            np.fromiter((v for r in top_rows for v in r), dtype=np.float64, count=int(lengths.sum()))
            if n
            else np.zeros(0)
        )
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, dtype=np.int64)
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
            for i in np.flatnonzero(present & ~_valid_full_entropy(vals))[:5].tolist():
                violations.append(FieldViolation(f"{field_name}[{i}].full_entropy", _why_full(float(vals[i]))))
            if present.all():
                full = vals
        if violations:
            raise InvalidArgumentError(violations)
        widest = int(lengths.max()) if n else 0
        width = max(min(widest, top_k) if top_k else widest, 1)
        check_padded_size(n, width, max_values, field_name)
        if not flat.size:
            return cls(sampled=sampled_arr, top=np.full((n, width), -np.inf), full_entropy=full)
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(flat.size) - starts[rows]
        if n * widest <= max_values:
            # The common case: pad every row to the widest, sort the matrix, keep the first ``width`` columns.
            top = np.full((n, max(widest, 1)), -np.inf)
            top[rows, cols] = flat
            top = np.ascontiguousarray((-np.sort(-top, axis=1))[:, :width])
        else:
            # Rows wider than top_k among many tokens: sort each ragged row in one pass (row first, then
            # −value) and scatter only its first ``width`` values, never allocating the wider matrix.
            order = np.lexsort((-flat, rows))
            keep = cols < width
            top = np.full((n, width), -np.inf)
            top[rows[keep], cols[keep]] = flat[order][keep]
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
        keep_k: int | None = None,
        max_values: int = MAX_PADDED_VALUES,
    ) -> TokenStream:
        """Build from flat arrays: ``top_flat`` is n × top_k row-major, −inf pads short rows.

        ``keep_k`` keeps each row's most likely alternatives only (None or 0: all). Bad values raise
        InvalidArgumentError naming ``<field_name>.logprobs[i]``, ``<field_name>.top_logprobs[j]`` or
        ``<field_name>.top_k`` (more than :data:`MAX_TOP_LOGPROBS`).
        """
        s = np.asarray(sampled, dtype=np.float64).reshape(-1)
        flat = np.asarray(top_flat, dtype=np.float64).reshape(-1)
        n = s.shape[0]
        if top_k < 0:
            raise InvalidArgumentError(f"{field_name}.top_k", "must be >= 0")
        if top_k > MAX_TOP_LOGPROBS:
            raise InvalidArgumentError(
                f"{field_name}.top_k", f"at most {MAX_TOP_LOGPROBS} alternatives per token, got {top_k}"
            )
        if flat.size != n * top_k:
            raise InvalidArgumentError(
                f"{field_name}.top_logprobs",
                f"holds {flat.size} values; {n} tokens × top_k {top_k} needs {n * top_k}",
            )
        violations = [
            FieldViolation(f"{field_name}.logprobs[{i}]", _why(float(s[i])))
            for i in np.flatnonzero(~_valid_logprob(s))[:5].tolist()
        ]
        # −inf is padding (probability 0) here; NaN, +inf, positive and too negative values are not.
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
                    FieldViolation(f"{field_name}.full_entropy[{i}]", _why_full(float(full[i])))
                    for i in np.flatnonzero(~_valid_full_entropy(full))[:5].tolist()
                ]
        if violations:
            raise InvalidArgumentError(violations)
        width = max(min(top_k, keep_k) if keep_k else top_k, 1)
        check_padded_size(n, width, max_values, field_name)
        if top_k == 0:
            return cls(sampled=s, top=np.full((n, 1), -np.inf), full_entropy=full)
        top = -np.sort(-flat.reshape(n, top_k), axis=1)
        return cls(sampled=s, top=np.ascontiguousarray(top[:, :width]), full_entropy=full)

    @classmethod
    def from_tokens(
        cls, tokens: Sequence[TokenLike], *, field_name: str = "tokens", top_k: int | None = None
    ) -> TokenStream:
        """Build from :class:`Token` objects or OpenAI-shaped dicts (see :meth:`from_lists`)."""
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
        return cls.from_lists(sampled, rows, fulls if has_full else None, field_name=field_name, top_k=top_k)


def check_widths(lengths: Sequence[int] | np.ndarray, field_name: str) -> None:
    """Raise InvalidArgumentError naming ``<field_name>[i].top_logprobs`` for each row of more than
    :data:`MAX_TOP_LOGPROBS` alternatives. Cheap: callers run it before reading any value."""
    arr = np.asarray(lengths, dtype=np.int64)
    wide = np.flatnonzero(arr > MAX_TOP_LOGPROBS)
    if wide.size:
        raise InvalidArgumentError(
            [
                FieldViolation(
                    f"{field_name}[{i}].top_logprobs",
                    f"at most {MAX_TOP_LOGPROBS} alternatives per token, got {int(arr[i])}",
                )
                for i in wide[:5].tolist()
            ]
        )


def check_padded_size(n_tokens: int, width: int, max_values: int, field_name: str) -> None:
    """Raise InvalidArgumentError naming ``field_name`` when ``n_tokens`` rows of ``width`` exceed the budget."""
    if n_tokens * width > max_values:
        raise InvalidArgumentError(
            field_name,
            f"{n_tokens} tokens padded to {width} alternatives each are {n_tokens * width} values; a request may "
            f"hold at most {max_values} (send fewer tokens, or fewer alternatives per token)",
        )


def _alt_logprob(alt: Any) -> float:
    if isinstance(alt, int | float):
        return float(alt)
    if isinstance(alt, Mapping):
        return float(alt["logprob"])
    return float(alt.logprob)


def _valid_logprob(x: np.ndarray) -> np.ndarray:
    # APIs round; a logprob of +1e-6 is a probability of 1, not an error.
    return np.isfinite(x) & (x <= 1e-4) & (x >= MIN_LOGPROB)


def _why(value: float) -> str:
    if math.isnan(value):
        return "logprob is NaN; must be a finite natural-log probability <= 0"
    if math.isinf(value):
        return f"logprob is {value}; must be a finite natural-log probability <= 0"
    if value < MIN_LOGPROB:
        return f"logprob {value:g} < {MIN_LOGPROB:g}; must be >= {MIN_LOGPROB:g} (APIs send -9999 for probability 0)"
    return f"logprob {value} > 0; must be a natural-log probability <= 0"


def _valid_full_entropy(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (x >= 0) & (x <= MAX_FULL_ENTROPY)


def _why_full(value: float) -> str:
    return f"must be finite, >= 0 and <= {MAX_FULL_ENTROPY:g} nats, got {value}"


def typed_setting(field_name: str, default: Any, value: Any) -> Any:
    """``value`` as the type of ``default`` (str, bool, int or float), or InvalidArgumentError naming
    ``field_name``. Never a silent cast: ``int(2.7)`` is 2 and ``int(True)`` is 1, so booleans where a number
    belongs and fractional integers are refused. Settings from AGENTRT_* environment variables arrive as
    strings, so numeric strings are parsed, and booleans are parsed, never cast (``bool("false")`` is True)."""
    if isinstance(default, str):
        if not isinstance(value, str):
            raise InvalidArgumentError(field_name, f"must be a string, got {value!r}")
        return value
    if isinstance(default, bool):
        parsed = setting_boolean(value)
        if parsed is None:
            raise InvalidArgumentError(field_name, f"must be a boolean (true/false, yes/no, 1/0), got {value!r}")
        return parsed
    kind = "a number" if isinstance(default, float) else "an integer"
    try:
        if isinstance(value, bool):
            raise TypeError  # int(True) is 1: a boolean where a number belongs is a mistake
        out = float(value) if isinstance(default, float) else int(value)
        if isinstance(default, int) and isinstance(value, float) and value != out:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgumentError(field_name, f"must be {kind}, got {value!r}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise InvalidArgumentError(field_name, f"must be finite, got {value!r}")
    return out


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

    @property
    def signal_params(self) -> str:
        """Fingerprint of what the signals of a decision depend on besides the tokens: ``top_k`` and the
        aggregation parameters (not the variant, aggregation or threshold: every decision stores every
        signal). Calibration fits only on decisions whose fingerprint matches the policy it writes into."""
        return (
            f"k={self.top_k};q={self.q!r};w={self.window};d={self.d_min};l={self.level!r};f={self.first_k}"
        )

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
        cls,
        data: Mapping[str, Any],
        base: GatePolicy | None = None,
        field_name: str = "policy",
        *,
        validate: bool = True,
    ) -> GatePolicy:
        """Overlay ``data`` on ``base`` (default: the class defaults).

        Unknown keys and values of the wrong type (a boolean or a fractional number where an integer
        belongs, a non-number where a number belongs) raise InvalidArgumentError naming
        ``<field_name>.<key>``; values are never cast silently. ``validate=False`` skips the range checks
        (for a configuration overlaid in several layers, checked once at the end).
        """
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(field_name, f"must be a mapping of policy keys, got {data!r}")
        base = base or cls()
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidArgumentError(f"{field_name}.{unknown[0]}", f"unknown policy key; choose from {sorted(names)}")
        typed = {k: typed_setting(f"{field_name}.{k}", getattr(base, k), val) for k, val in data.items()}
        policy = replace(base, **typed)
        return policy.validate(field_name) if validate else policy


#: Starting points until a namespace is calibrated. RETRIEVE follows L-RAG's τ = 0.5 on mean predictive
#: entropy; ESCALATE follows EAD's rolling window (w = 5, switch only after d_min tokens).
DEFAULT_POLICIES: dict[GateKind, GatePolicy] = {
    GateKind.RETRIEVE: GatePolicy(variant="missing_mass", aggregation="mean", threshold=0.5),
    GateKind.CALL_TOOL: GatePolicy(variant="missing_mass", aggregation="mean", threshold=0.5),
    GateKind.ESCALATE: GatePolicy(variant="missing_mass", aggregation="window_max", threshold=1.0, window=5, d_min=5),
}


@dataclass(frozen=True)
class PolicyVersion:
    """One version of a gate's policy. Version 0 is the configured default (never stored)."""

    gate: GateKind
    version: int
    policy: GatePolicy
    reason: str = ""
    created_at: float = 0.0
    #: The policy is the configuration's, read when it is used (version 0, and versions stored by
    #: ``reset_policy``), so a changed configuration applies after a restart; otherwise a stored snapshot.
    follows_config: bool = False


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
        if self.signal and not is_signal_name(self.signal):
            # Checked here, not once enough outcomes exist: a typo should fail the first call, not the 30th.
            v.append(
                FieldViolation(
                    "signal",
                    f"{self.signal!r} is not a signal name: use \"<variant>.<aggregation>\" with a variant of "
                    f"{list(E.TOKEN_VARIANTS)} and an aggregation of {list(E.AGGREGATIONS)}",
                )
            )
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


def is_signal_name(name: str) -> bool:
    """Whether ``name`` is ``"<variant>.<aggregation>"`` of a known variant and aggregation."""
    variant, dot, aggregation = name.partition(".")
    return bool(dot) and variant in E.TOKEN_VARIANTS and aggregation in E.AGGREGATIONS
