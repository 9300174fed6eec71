"""Proto <-> domain conversion for GateService (and the token logprobs SelectService shares)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from agentrt.v1 import common_pb2, gate_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import InvalidArgumentError
from runtime.gates.types import (
    MAX_PADDED_VALUES,
    CalibrationObjective,
    CalibrationResult,
    GateDecision,
    GateKind,
    GatePolicy,
    PolicyVersion,
    TokenStream,
    check_padded_size,
    check_widths,
)

_GATE_FROM_PROTO = {
    common_pb2.GATE_RETRIEVE: GateKind.RETRIEVE,
    common_pb2.GATE_CALL_TOOL: GateKind.CALL_TOOL,
    common_pb2.GATE_ESCALATE: GateKind.ESCALATE,
}
_GATE_TO_PROTO = {v: k for k, v in _GATE_FROM_PROTO.items()}

_OBJECTIVES = {
    gate_pb2.CALIBRATION_OBJECTIVE_UNSPECIFIED: "recall",
    gate_pb2.CALIBRATION_OBJECTIVE_RECALL: "recall",
    gate_pb2.CALIBRATION_OBJECTIVE_FIRE_RATE: "fire_rate",
    gate_pb2.CALIBRATION_OBJECTIVE_LOGISTIC: "logistic",
}

# A Decide computes ~60 signals; more than this in RecordOutcome is a client bug, not data.
MAX_SIGNALS = 256

_POLICY_FIELDS = (
    "variant",
    "aggregation",
    "threshold",
    "hysteresis",
    "top_k",
    "q",
    "window",
    "d_min",
    "level",
    "first_k",
)


def gate_from_proto(value: int, field_name: str = "gate") -> GateKind:
    """GateKind of a proto enum value. GATE_UNSPECIFIED means GATE_RETRIEVE (the common case, and what
    a caller that leaves the field out wants); unknown values are INVALID_ARGUMENT."""
    if value == common_pb2.GATE_UNSPECIFIED:
        return GateKind.RETRIEVE
    kind = _GATE_FROM_PROTO.get(value)
    if kind is None:
        raise InvalidArgumentError(
            field_name, f"unknown gate {value}; use GATE_RETRIEVE, GATE_CALL_TOOL or GATE_ESCALATE"
        )
    return kind


def gate_to_proto(kind: GateKind) -> common_pb2.Gate.ValueType:
    """Proto enum value of a GateKind."""
    return _GATE_TO_PROTO[kind]


def tokens_from_proto(
    tokens: Sequence[common_pb2.TokenLogprob],
    field_name: str = "tokens",
    *,
    top_k: int | None = None,
    max_values: int = MAX_PADDED_VALUES,
) -> TokenStream:
    """Validated arrays from TokenLogprob messages, each token keeping its ``top_k`` most likely alternatives
    (None: all); bad values raise InvalidArgumentError naming the field (``tokens[3].top_logprobs[1].logprob``,
    ``tokens[0].top_logprobs`` for more than MAX_TOP_LOGPROBS alternatives)."""
    # Sizes first: a token with 300k alternatives, or a million tokens padded to a wide row, is refused
    # before any value is read.
    widths = [len(t.top_logprobs) for t in tokens]
    check_widths(widths, field_name)
    widest = max(widths, default=0)
    check_padded_size(len(widths), max(min(widest, top_k) if top_k else widest, 1), max_values, field_name)
    sampled = [t.logprob for t in tokens]
    rows = [[a.logprob for a in t.top_logprobs] for t in tokens]
    full = [t.full_entropy if t.HasField("full_entropy") else None for t in tokens]
    has_full = any(f is not None for f in full)
    return TokenStream.from_lists(
        sampled, rows, full if has_full else None, field_name=field_name, top_k=top_k, max_values=max_values
    )


def stream_from_proto(
    tokens: Sequence[common_pb2.TokenLogprob],
    packed: common_pb2.PackedTokens,
    has_packed: bool,
    field_name: str = "tokens",
    packed_field: str = "packed_tokens",
    *,
    top_k: int | None = None,
    max_values: int = MAX_PADDED_VALUES,
) -> TokenStream:
    """Token arrays from either ``tokens`` or ``packed_tokens`` (setting both is INVALID_ARGUMENT), each
    token keeping its ``top_k`` most likely alternatives (None: all), padded to at most ``max_values``."""
    if has_packed:
        if len(tokens):
            raise InvalidArgumentError(packed_field, f"set {field_name} or {packed_field}, not both")
        # Repeated doubles expose a buffer: np.asarray copies 10k values in microseconds.
        return TokenStream.from_packed(
            np.asarray(packed.logprobs, dtype=np.float64),
            np.asarray(packed.top_logprobs, dtype=np.float64),
            packed.top_k,
            np.asarray(packed.full_entropy, dtype=np.float64),
            field_name=packed_field,
            keep_k=top_k,
            max_values=max_values,
        )
    return tokens_from_proto(tokens, field_name, top_k=top_k, max_values=max_values)


def pack_tokens(tokens: Sequence[Any], top_k: int | None = None) -> common_pb2.PackedTokens:
    """Client-side helper: PackedTokens from TokenLogprob messages or OpenAI-style dicts (a token without
    alternatives becomes a row of −inf padding, as the server reads it)."""
    stream = TokenStream.from_tokens(
        [t if isinstance(t, Mapping) else _proto_token_dict(t) for t in tokens], top_k=top_k
    )
    top = stream.top
    msg = common_pb2.PackedTokens(
        logprobs=stream.sampled.tolist(), top_k=int(top.shape[1]), top_logprobs=top.reshape(-1).tolist()
    )
    if stream.full_entropy is not None:
        msg.full_entropy.extend(stream.full_entropy.tolist())
    return msg


def _proto_token_dict(t: common_pb2.TokenLogprob) -> dict[str, Any]:
    out: dict[str, Any] = {"logprob": t.logprob, "top_logprobs": [a.logprob for a in t.top_logprobs]}
    if t.HasField("full_entropy"):
        out["full_entropy"] = t.full_entropy
    return out


def span_from_proto(msg: Any, has: bool, field_name: str) -> tuple[int, int] | None:
    """(start, end) of a TokenSpan when the field is set; validates 0 <= start <= end.

    An all-zero span counts as unset (the whole generation): proto3 clients that always send the message
    send [0, 0). The domain checks the span against the number of tokens.
    """
    if not has or (msg.start == 0 and msg.end == 0):
        return None
    if not 0 <= msg.start <= msg.end:
        raise InvalidArgumentError(field_name, f"need 0 <= start <= end, got [{msg.start}, {msg.end})")
    return (int(msg.start), int(msg.end))


def decision_to_proto(d: GateDecision, *, stored: bool = True) -> gate_pb2.GateDecision:
    """GateDecision message; non-finite signals are dropped (proto doubles could carry them, JSON cannot)."""
    return gate_pb2.GateDecision(
        decision_id=d.decision_id if stored else "",
        fire=d.fire,
        score=d.score,
        threshold=d.threshold,
        signals={k: v for k, v in d.signals.items() if math.isfinite(v)},
        signal=d.signal,
        policy_version=d.policy_version,
        n_tokens=d.n_tokens,
        gate=gate_to_proto(d.gate),
    )


def policy_to_proto(p: GatePolicy) -> gate_pb2.GatePolicy:
    """Every field set."""
    return gate_pb2.GatePolicy(**{name: getattr(p, name) for name in _POLICY_FIELDS})


def policy_from_proto(msg: gate_pb2.GatePolicy) -> dict[str, Any]:
    """Only the fields the caller set (SetPolicy overlays them on the policy in effect)."""
    return {name: getattr(msg, name) for name in _POLICY_FIELDS if msg.HasField(name)}


def version_to_proto(v: PolicyVersion) -> gate_pb2.GatePolicyVersion:
    """GatePolicyVersion message (created_at unset for version 0, the configured default)."""
    msg = gate_pb2.GatePolicyVersion(
        gate=gate_to_proto(v.gate),
        version=v.version,
        policy=policy_to_proto(v.policy),
        reason=v.reason,
        follows_config=v.follows_config,
    )
    if v.created_at:
        ts = Timestamp()
        ts.FromNanoseconds(int(v.created_at * 1e9))
        msg.created_at.CopyFrom(ts)
    return msg


def objective_from_proto(req: gate_pb2.CalibrateRequest) -> CalibrationObjective:
    """Calibration objective; zero values mean the defaults."""
    kind = _OBJECTIVES.get(req.objective)
    if kind is None:
        raise InvalidArgumentError("objective", f"unknown calibration objective {req.objective}")
    base = CalibrationObjective()
    return CalibrationObjective(
        kind=kind,
        target_fire_rate=req.target_fire_rate or base.target_fire_rate,
        alpha=req.alpha or base.alpha,
        probability_cutoff=req.probability_cutoff or base.probability_cutoff,
        signal=req.signal,
        min_outcomes=req.min_outcomes or base.min_outcomes,
        min_per_class=req.min_per_class or base.min_per_class,
        dry_run=req.dry_run,
    )


def calibration_to_proto(r: CalibrationResult) -> gate_pb2.CalibrateResponse:
    """CalibrateResponse; NaN figures (not computed) are sent as 0 with the message explaining."""

    def num(x: float) -> float:
        return x if math.isfinite(x) else 0.0

    return gate_pb2.CalibrateResponse(
        updated=r.updated,
        message=r.message,
        policy=version_to_proto(r.policy),
        n_outcomes=r.n_outcomes,
        n_positive=r.n_positive,
        auroc=dict(r.auroc),
        signal=r.signal,
        fire_rate=num(r.fire_rate),
        recall=num(r.recall),
        logistic_a=num(r.logistic_a),
        logistic_b=num(r.logistic_b),
    )


def outcome_from_proto(req: gate_pb2.RecordOutcomeRequest) -> bool:
    """``needed`` from the request's label oneof; a missing label is INVALID_ARGUMENT."""
    which = req.WhichOneof("label")
    if which == "needed":
        return bool(req.needed)
    if which == "answer_correct":
        return not req.answer_correct
    raise InvalidArgumentError("label", "set needed or answer_correct")


def signals_from_proto(signals: Mapping[str, float]) -> dict[str, float]:
    """Bare signals of RecordOutcome, rejecting non-finite values by key (and oversized maps)."""
    if len(signals) > MAX_SIGNALS:
        raise InvalidArgumentError("signals", f"at most {MAX_SIGNALS} signals, got {len(signals)}")
    out = {}
    for k, v in signals.items():
        if len(k) > 64:
            raise InvalidArgumentError(f"signals[{k[:20]}…]", "signal names are at most 64 characters")
        if not math.isfinite(v):
            raise InvalidArgumentError(f"signals[{k}]", f"must be finite, got {v}")
        out[str(k)] = float(v)
    return out
