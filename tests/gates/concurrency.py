"""Helpers of the concurrency and replication tests of GateService and SelectService (one server or several
replicas): partial policy updates that each change a different field, run from many threads at once, and
labelled selections a learned selector can beat the agreement default on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from agentrt.v1 import select_pb2

from runtime.client import AgentrtClient

T = TypeVar("T")

_VARIANTS = ("renorm", "epr", "surprisal", "one_minus_p")
_AGGREGATIONS = ("max", "std", "sum", "min")


def partial_updates(round_: int) -> dict[str, Any]:
    """One value per GatePolicy field, different in every round and from every default; SetPolicy with
    one of them changes that field only, so after all of them the policy must hold every one."""
    return {
        "variant": _VARIANTS[round_ % len(_VARIANTS)],
        "aggregation": _AGGREGATIONS[round_ % len(_AGGREGATIONS)],
        "threshold": 0.31 + round_ / 100,
        "hysteresis": 0.02 + round_ / 100,
        "top_k": 7 + round_,
        "q": 0.71 + round_ / 100,
        "window": 9 + round_,
        "d_min": 3 + round_,
        "level": 1.3 + round_ / 10,
        "first_k": 4 + round_,
    }


def at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run every call on its own thread, released together by a barrier; re-raises the first failure."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [f.result() for f in futures]


def policy_fields(policy: Any, names: Sequence[str]) -> dict[str, Any]:
    """The named fields of a GatePolicy message, floats rounded so they compare with the values sent."""
    return {n: round(v, 9) if isinstance(v := getattr(policy, n), float) else v for n in names}


def labelled_selections(client: AgentrtClient, namespace: str, n: int, tokens: Callable[..., Any]) -> None:
    """``n`` Select + RecordOutcome pairs on which a learned selector beats the agreement default: the right
    answer has low token entropy but is usually outvoted by a high-entropy wrong majority.
    ``tokens(level, seed=...)`` builds a candidate's token logprobs."""
    rng = np.random.default_rng(0)
    for i in range(n):
        n_right = int(rng.integers(1, 3))
        answers = [f"right{i}"] * n_right + [f"wrong{i}"] * (5 - n_right)
        order = rng.permutation(5)
        candidates = [
            select_pb2.Candidate(
                answer=answers[j],
                tokens=tokens(0.05 if answers[j].startswith("right") else 0.95, seed=int(rng.integers(1 << 30))),
            )
            for j in order
        ]
        selection = client.select_service.Select(select_pb2.SelectRequest(namespace=namespace, candidates=candidates))
        client.select_service.RecordOutcome(
            select_pb2.RecordSelectionOutcomeRequest(
                namespace=namespace, selection_id=selection.selection_id, correct_answer=f"right{i}"
            )
        )
