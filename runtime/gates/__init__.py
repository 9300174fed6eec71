"""Entropy gates (retrieve / call a tool / escalate) from token logprobs, with per-namespace calibration.

``rt.gates`` is a :class:`GateEngine`; callers use ``rt.gates.decide(scope, "retrieve", tokens)``.
"""

from runtime.gates.engine import GateEngine
from runtime.gates.types import (
    DEFAULT_POLICIES,
    CalibrationObjective,
    CalibrationResult,
    GateDecision,
    GateKind,
    GatePolicy,
    PolicyVersion,
    Token,
    TokenStream,
    TopLogprob,
)

__all__ = [
    "DEFAULT_POLICIES",
    "CalibrationObjective",
    "CalibrationResult",
    "GateDecision",
    "GateEngine",
    "GateKind",
    "GatePolicy",
    "PolicyVersion",
    "Token",
    "TokenStream",
    "TopLogprob",
]
