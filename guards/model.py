"""Value objects of the guards: requests, verdicts, evidence, rules, exemplars, clusters, audit records.

Plain dataclasses, no protobuf: ``runtime/convert/guard.py`` maps them to and from the wire.
Other components (tools, the agent) call ``GuardEngine.check(scope, GuardRequest(...))`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    """Where in an agent's turn a check happens (proto ``Stage`` without the prefix, lower case)."""

    UNSPECIFIED = "unspecified"
    INPUT = "input"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    OUTPUT = "output"


class Decision(StrEnum):
    """A guard's decision (proto ``Decision`` without the prefix, lower case)."""

    UNSPECIFIED = "unspecified"
    ALLOW = "allow"
    BLOCK = "block"
    REVIEW = "review"


class Label(StrEnum):
    """Label of a guard-memory exemplar."""

    HARMFUL = "harmful"
    BENIGN = "benign"


class LeafSource(StrEnum):
    """Where an exemplar came from."""

    PACK = "pack"
    OPERATOR = "operator"
    FEEDBACK = "feedback"
    INCIDENT = "incident"


# Stages that share one exemplar space: the intent behind a request is the same whether it arrives as
# the user's message or as the tool call the LLM made from it.
STAGE_GROUPS: dict[Stage, str] = {
    Stage.UNSPECIFIED: "request",
    Stage.INPUT: "request",
    Stage.TOOL_CALL: "request",
    Stage.TOOL_RESULT: "tool_result",
    Stage.OUTPUT: "output",
}


@dataclass(frozen=True)
class ToolCallInfo:
    """A tool call as the agent's LLM produced it."""

    name: str = ""
    #: JSON object text of the arguments ("" = none).
    arguments_json: str = ""


@dataclass(frozen=True)
class GuardRequest:
    """What to check. ``text`` is the user message (INPUT), the instruction behind a call (TOOL_CALL),
    the tool's output (TOOL_RESULT) or the agent's answer (OUTPUT)."""

    stage: Stage = Stage.INPUT
    text: str = ""
    tool_call: ToolCallInfo | None = None
    available_tools: tuple[str, ...] = ()
    #: Free-form caller context, stored in the audit log (e.g. thread id, tool id).
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    """One reason behind a verdict: a matched rule, a detector hit, a cluster or an exemplar."""

    #: "rule" | "detector" | "cluster" | "exemplar" | "judge"
    kind: str
    #: Rule name, detector name, cluster id or exemplar id.
    ref: str
    #: What it says (rule description, cluster rule text, exemplar text, matched span with secrets masked).
    text: str = ""
    #: Decision this piece of evidence points to.
    decision: Decision = Decision.UNSPECIFIED
    #: Similarity (cluster, exemplar) or 1.0 for a deterministic match.
    score: float = 0.0
    #: Extra facts: category, label, field path, ...
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardVerdict:
    """The answer to a check. ``harm_score`` and ``entropy`` are in [0, 1]."""

    verdict_id: str
    decision: Decision
    harm_score: float
    entropy: float
    stage: Stage = Stage.INPUT
    #: Names of matched rules/detectors, then clusters and exemplars, strongest first.
    evidence: tuple[Evidence, ...] = ()
    #: Top category from guard memory ("" when none).
    category: str = ""
    #: "rule" when a policy rule decided, "memory" when the guard memory did, "judge", or "default".
    decided_by: str = "memory"
    #: Version of the namespace's guard memory this verdict was computed on.
    memory_version: int = 0

    @property
    def allowed(self) -> bool:
        """True only for ALLOW (callers treat REVIEW as "escalate", not as "go")."""
        return self.decision == Decision.ALLOW


@dataclass(frozen=True)
class PolicyRule:
    """An operator rule. ``spec`` holds the matcher (see ``guards/rules.py`` for the fields).

    ``action`` is the decision when the rule matches; ``priority`` orders rules (higher first); among
    equal priorities BLOCK beats REVIEW beats ALLOW.
    """

    name: str
    action: Decision
    priority: int = 0
    description: str = ""
    stages: tuple[Stage, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    #: "operator" or "pack".
    source: str = "operator"


@dataclass(frozen=True)
class RuleMatch:
    """A rule that matched a request, with where and why."""

    rule: PolicyRule
    reason: str
    field: str = ""


@dataclass(frozen=True)
class Exemplar:
    """A leaf of the guard memory: one labelled example."""

    id: int
    category: str
    text: str
    label: Label
    stage_group: str = "request"
    source: LeafSource = LeafSource.PACK
    created_at: datetime | None = None
    cluster_id: int = 0
    active: bool = True
    note: str = ""


@dataclass(frozen=True)
class Cluster:
    """A cluster of the guard memory: rule text plus member leaves (centroid derived from them)."""

    id: int
    category: str
    stage_group: str
    rule_text: str = ""
    leaf_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvolutionEvent:
    """One versioned, reversible change of a namespace's guard memory."""

    version: int
    #: "seed" | "add_leaf" | "new_cluster" | "split" | "merge" | "rollback" | "pack_off" | "pack_on"
    kind: str
    summary: str
    created_at: datetime | None = None
    #: Cluster snapshots before and after, leaves added (what rollback undoes).
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """One stored verdict with the request that produced it."""

    verdict: GuardVerdict
    request_text: str
    tool_name: str = ""
    arguments_json: str = ""
    created_at: datetime | None = None
    #: Decision given by feedback (UNSPECIFIED when none). A verdict takes one feedback (see
    #: ``GuardEngine.feedback``).
    feedback: Decision = Decision.UNSPECIFIED
    feedback_note: str = ""
    #: What that feedback changed in the guard memory, stored with it in one transaction: a repeated Feedback
    #: answers it again. None when there is no feedback, or it was recorded before results were stored.
    feedback_result: FeedbackResult | None = None
    #: The segment (sentence, step or tool call) that spoke for the verdict (``GuardEngine._check``); None when
    #: it is the request text itself (a rule decided, a single-segment request) or the verdict was stored before
    #: migration 0004. Feedback labels it, not the whole request: an ALLOW on a multi-sentence false BLOCK must
    #: teach the memory that the sentence that blocked is benign. It was kept only in the engine's in-process
    #: cache of recent verdicts, so Feedback after a restart, on another replica or after the cache evicted the
    #: verdict labelled the whole request instead, and the correction did nothing.
    decided_segment: str | None = None
    #: The request's caller context (``GuardRequest.metadata``: thread id, tool id...). Empty for verdicts stored
    #: before migration 0007, which dropped it.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackResult:
    """What a feedback or incident report changed in the guard memory."""

    leaf_id: int
    cluster_id: int
    #: Evolution events it caused (add_leaf, new_cluster, split, merge).
    events: tuple[EvolutionEvent, ...] = ()
    memory_version: int = 0
