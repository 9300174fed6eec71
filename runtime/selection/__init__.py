"""Answer selection among several agents' candidates: agreement clusters by default, a learned selector
when it beats the default on held-back outcomes. ``rt.selector`` is an :class:`AnswerSelector`."""

from runtime.selection.agreement import cluster_answers, normalize_answer
from runtime.selection.selector import AnswerSelector, SelectorConfig
from runtime.selection.types import Candidate, Selection, TrainResult

__all__ = [
    "AnswerSelector",
    "Candidate",
    "Selection",
    "SelectorConfig",
    "TrainResult",
    "cluster_answers",
    "normalize_answer",
]
