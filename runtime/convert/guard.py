"""Proto <-> domain conversion for GuardService: the only guard code that touches generated classes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from agentrt.v1 import common_pb2, guard_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import FieldViolation, InvalidArgumentError
from core.jsontext import decode_json_object
from guards.engine import ClusterInfo
from guards.model import (
    AuditRecord,
    Decision,
    Evidence,
    EvolutionEvent,
    FeedbackResult,
    GuardRequest,
    GuardVerdict,
    PolicyRule,
    RuleMatch,
    Stage,
    ToolCallInfo,
)
from guards.rules import parse_rule
from runtime.convert.common import time_from_proto

MAX_TEXT_CHARS = 200_000
MAX_ARGUMENTS_CHARS = 200_000
MAX_TOOLS = 1000
#: Longest tool name (a call's, or one of ``available_tools``): a 3 MB name was read, matched and audited.
MAX_TOOL_NAME_CHARS = 256
#: CheckRequest.metadata, stored with the verdict: entries, characters per key, characters per value.
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_CHARS = 256
MAX_METADATA_VALUE_CHARS = 4096
#: Longest verdict id a request may name: ids are 32 hex digits, the column holds 64. Longer ones were looked up,
#: and the NOT_FOUND that repeated them outgrew gRPC's metadata limit (RESOURCE_EXHAUSTED).
MAX_VERDICT_ID_CHARS = 64

_STAGES = {
    common_pb2.STAGE_UNSPECIFIED: Stage.UNSPECIFIED,
    common_pb2.STAGE_INPUT: Stage.INPUT,
    common_pb2.STAGE_TOOL_CALL: Stage.TOOL_CALL,
    common_pb2.STAGE_TOOL_RESULT: Stage.TOOL_RESULT,
    common_pb2.STAGE_OUTPUT: Stage.OUTPUT,
}
_STAGES_BACK = {v: k for k, v in _STAGES.items()}
_DECISIONS = {
    common_pb2.DECISION_UNSPECIFIED: Decision.UNSPECIFIED,
    common_pb2.DECISION_ALLOW: Decision.ALLOW,
    common_pb2.DECISION_BLOCK: Decision.BLOCK,
    common_pb2.DECISION_REVIEW: Decision.REVIEW,
}
_DECISIONS_BACK = {v: k for k, v in _DECISIONS.items()}


def stage_from_proto(value: int, field: str = "stage") -> Stage:
    """Domain stage; unknown numbers are INVALID_ARGUMENT naming the field."""
    try:
        return _STAGES[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgumentError(field, f"unknown stage {value}") from None


def stage_to_proto(value: Stage) -> Any:
    """Wire stage enum value."""
    return _STAGES_BACK[value]


def decision_from_proto(value: int, field: str = "expected") -> Decision:
    """Domain decision; unknown numbers are INVALID_ARGUMENT naming the field."""
    try:
        return _DECISIONS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgumentError(field, f"unknown decision {value}") from None


def decision_to_proto(value: Decision) -> Any:
    """Wire decision enum value."""
    return _DECISIONS_BACK[value]


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def verdict_id_violations(verdict_id: str, field: str = "verdict_id", *, required: bool = True) -> list[FieldViolation]:
    """What is wrong with a verdict id a request names (empty when nothing)."""
    if not verdict_id:
        return [FieldViolation(field, "is required")] if required else []
    if len(verdict_id) > MAX_VERDICT_ID_CHARS:
        return [FieldViolation(field, f"at most {MAX_VERDICT_ID_CHARS} characters (verdict ids are 32), "
                                      f"got {len(verdict_id)}")]
    return []


def _metadata_violations(metadata: Any, prefix: str) -> list[FieldViolation]:
    """Bounds of CheckRequest.metadata, which every verdict stores in the audit log."""
    if len(metadata) > MAX_METADATA_KEYS:
        return [FieldViolation(f"{prefix}metadata", f"at most {MAX_METADATA_KEYS} entries, got {len(metadata)}")]
    errors = []
    for key, value in metadata.items():
        field = f"{prefix}metadata[{key[:100]!r}]"
        if len(key) > MAX_METADATA_KEY_CHARS:
            errors.append(FieldViolation(field, f"keys have at most {MAX_METADATA_KEY_CHARS} characters"))
        if len(value) > MAX_METADATA_VALUE_CHARS:
            errors.append(
                FieldViolation(field, f"values have at most {MAX_METADATA_VALUE_CHARS} characters, got {len(value)}")
            )
    return errors


def check_from_proto(request: guard_pb2.CheckRequest, prefix: str = "") -> GuardRequest:
    """Validate and convert a CheckRequest (field paths prefixed for nested use, e.g. ``check.``)."""
    errors: list[FieldViolation] = []
    stage = Stage.UNSPECIFIED
    try:
        stage = stage_from_proto(request.stage, f"{prefix}stage")
    except InvalidArgumentError as e:
        errors.extend(e.violations)
    if stage == Stage.UNSPECIFIED:
        errors.append(
            FieldViolation(
                f"{prefix}stage", "stage is required (STAGE_INPUT, STAGE_TOOL_CALL, STAGE_TOOL_RESULT or STAGE_OUTPUT)"
            )
        )
    if len(request.text) > MAX_TEXT_CHARS:
        errors.append(FieldViolation(f"{prefix}text", f"at most {MAX_TEXT_CHARS} characters, got {len(request.text)}"))
    tool_call = None
    if request.HasField("tool_call"):
        args = request.tool_call.arguments_json
        if len(args) > MAX_ARGUMENTS_CHARS:
            errors.append(
                FieldViolation(f"{prefix}tool_call.arguments_json", f"at most {MAX_ARGUMENTS_CHARS} characters")
            )
        elif args.strip():
            errors += decode_json_object(args, f"{prefix}tool_call.arguments_json")[1]
        if len(request.tool_call.name) > MAX_TOOL_NAME_CHARS:
            errors.append(
                FieldViolation(
                    f"{prefix}tool_call.name",
                    f"at most {MAX_TOOL_NAME_CHARS} characters, got {len(request.tool_call.name)}",
                )
            )
        tool_call = ToolCallInfo(request.tool_call.name, args)
    if stage == Stage.TOOL_CALL and (tool_call is None or not tool_call.name):
        errors.append(FieldViolation(f"{prefix}tool_call.name", "STAGE_TOOL_CALL needs the tool call"))
    if stage in (Stage.INPUT, Stage.TOOL_RESULT, Stage.OUTPUT) and not request.text.strip() and tool_call is None:
        errors.append(FieldViolation(f"{prefix}text", "text is required for this stage"))
    if len(request.available_tools) > MAX_TOOLS:
        errors.append(FieldViolation(f"{prefix}available_tools", f"at most {MAX_TOOLS} tools"))
    else:
        errors += [
            FieldViolation(f"{prefix}available_tools[{i}]", f"at most {MAX_TOOL_NAME_CHARS} characters, got {len(t)}")
            for i, t in enumerate(request.available_tools)
            if len(t) > MAX_TOOL_NAME_CHARS
        ]
    errors += _metadata_violations(request.metadata, prefix)
    if errors:
        raise InvalidArgumentError(errors)
    return GuardRequest(
        stage=stage,
        text=request.text,
        tool_call=tool_call,
        available_tools=tuple(request.available_tools),
        metadata=dict(request.metadata),
    )


def evidence_to_proto(e: Evidence) -> guard_pb2.GuardEvidence:
    """Wire form of one piece of evidence."""
    return guard_pb2.GuardEvidence(
        kind=e.kind,
        ref=e.ref,
        text=e.text,
        decision=decision_to_proto(e.decision),
        score=float(e.score),
        detail=e.detail,
    )


def verdict_to_proto(v: GuardVerdict) -> guard_pb2.Verdict:
    """Wire form of a verdict."""
    return guard_pb2.Verdict(
        verdict_id=v.verdict_id,
        decision=decision_to_proto(v.decision),
        harm_score=v.harm_score,
        entropy=v.entropy,
        evidence=[evidence_to_proto(e) for e in v.evidence],
        category=v.category,
        decided_by=v.decided_by,
        memory_version=v.memory_version,
        stage=stage_to_proto(v.stage),
    )


def event_to_proto(e: EvolutionEvent) -> guard_pb2.GuardEvolutionEvent:
    """Wire form of an evolution event."""
    return guard_pb2.GuardEvolutionEvent(
        version=e.version,
        kind=e.kind,
        summary=e.summary,
        created_at=_ts(e.created_at),
        payload_json=json.dumps(e.payload, sort_keys=True),
    )


def feedback_to_proto(r: FeedbackResult) -> guard_pb2.FeedbackResponse:
    """Wire form of what feedback changed."""
    return guard_pb2.FeedbackResponse(
        leaf_id=r.leaf_id,
        cluster_id=r.cluster_id,
        events=[event_to_proto(e) for e in r.events],
        memory_version=r.memory_version,
    )


def rule_to_proto(r: PolicyRule) -> guard_pb2.GuardRule:
    """Wire form of a rule (conditions as a JSON object)."""
    return guard_pb2.GuardRule(
        name=r.name,
        action=decision_to_proto(r.action),
        priority=r.priority,
        description=r.description,
        stages=[stage_to_proto(s) for s in r.stages],
        spec_json=json.dumps(r.spec, sort_keys=True),
        enabled=r.enabled,
        source=r.source,
    )


def rule_body_from_proto(r: guard_pb2.GuardRule, where: str) -> tuple[dict[str, Any] | None, list[FieldViolation]]:
    """A rule's mapping for ``guards.rules.parse_rule`` (validated there, off the event loop: it compiles the
    rule's regexes), or None and what makes it unreadable; errors name ``rules[i].<field>``."""
    spec, bad = decode_json_object(r.spec_json, f"{where}.spec_json") if r.spec_json.strip() else ({}, [])
    errors = list(bad)
    action = Decision.UNSPECIFIED
    try:
        action = decision_from_proto(r.action, f"{where}.action")
    except InvalidArgumentError as e:
        errors += e.violations
    stages = []
    for i, value in enumerate(r.stages):
        try:
            stages.append(stage_from_proto(value, f"{where}.stages[{i}]").value)
        except InvalidArgumentError as e:
            errors += e.violations
    if spec is None or errors:
        return None, errors
    body: dict[str, Any] = {
        **spec,
        "name": r.name,
        "action": action.value,
        "priority": r.priority,
        "description": r.description,
        "stages": stages,
        # Unset is enabled: proto3's default false stored every rule sent without the field switched off.
        "enabled": r.enabled if r.HasField("enabled") else True,
    }
    return body, []


def rule_from_proto(r: guard_pb2.GuardRule, where: str) -> PolicyRule:
    """Validate and convert a rule; errors name ``rules[i].<field>``."""
    body, errors = rule_body_from_proto(r, where)
    if body is None:
        raise InvalidArgumentError(errors)
    return parse_rule(body, where)


def match_to_proto(m: RuleMatch) -> guard_pb2.GuardRuleMatch:
    """Wire form of a rule match."""
    return guard_pb2.GuardRuleMatch(rule=rule_to_proto(m.rule), reason=m.reason, field=m.field)


def settings_to_proto(namespace: str, s: dict[str, Any]) -> guard_pb2.GuardSettings:
    """Wire form of a namespace's guard settings."""
    return guard_pb2.GuardSettings(
        namespace=namespace,
        pack=bool(s["pack"]),
        disabled_pack_rules=list(s.get("disabled_pack_rules") or []),
        default_decision=decision_to_proto(Decision(s["default_decision"])),
        review_entropy=float(s.get("review_entropy") or 0.0),
        judge=bool(s.get("judge")),
        audit_retention_days=int(s.get("audit_retention_days") or 0),
        judge_tool_results=bool(s.get("judge_tool_results")),
    )


def settings_changes_from_proto(r: guard_pb2.UpdateGuardSettingsRequest) -> dict[str, Any]:
    """Only the settings the request sets."""
    changes: dict[str, Any] = {}
    if r.HasField("pack"):
        changes["pack"] = r.pack
    if r.set_disabled_pack_rules:
        changes["disabled_pack_rules"] = list(r.disabled_pack_rules)
    if r.default_decision != common_pb2.DECISION_UNSPECIFIED:
        changes["default_decision"] = decision_from_proto(r.default_decision, "default_decision").value
    if r.HasField("review_entropy"):
        if not 0.0 <= r.review_entropy <= 1.0:
            raise InvalidArgumentError("review_entropy", "must be within [0, 1]")
        changes["review_entropy"] = r.review_entropy or None
    if r.HasField("judge"):
        changes["judge"] = r.judge
    if r.HasField("judge_tool_results"):
        changes["judge_tool_results"] = r.judge_tool_results
    if r.HasField("audit_retention_days"):
        if r.audit_retention_days < 0:
            raise InvalidArgumentError("audit_retention_days", "must be >= 0")
        changes["audit_retention_days"] = r.audit_retention_days
    return changes


def cluster_to_proto(c: ClusterInfo) -> guard_pb2.GuardCluster:
    """Wire form of a cluster with its label counts."""
    return guard_pb2.GuardCluster(
        id=c.cluster.id,
        category=c.cluster.category,
        stage_group=c.cluster.stage_group,
        rule_text=c.cluster.rule_text,
        harmful=c.harmful,
        benign=c.benign,
        label_entropy=c.label_entropy,
        leaf_ids=list(c.cluster.leaf_ids),
    )


def audit_to_proto(r: AuditRecord) -> guard_pb2.GuardAuditRecord:
    """Wire form of an audit record."""
    return guard_pb2.GuardAuditRecord(
        verdict=verdict_to_proto(r.verdict),
        request_text=r.request_text,
        tool_name=r.tool_name,
        arguments_json=r.arguments_json,
        created_at=_ts(r.created_at),
        feedback=decision_to_proto(r.feedback),
        feedback_note=r.feedback_note,
        metadata=r.metadata,
    )


def audit_query_from_proto(r: guard_pb2.QueryGuardAuditRequest) -> dict[str, Any]:
    """Filters for ``GuardEngine.query_audit`` (page size clamped to 1..1000, default 100)."""
    if r.page_size < 0:
        raise InvalidArgumentError("page_size", "must be >= 0")
    filters: dict[str, Any] = {"limit": min(r.page_size or 100, 1000)}
    if r.stage != common_pb2.STAGE_UNSPECIFIED:
        filters["stage"] = stage_from_proto(r.stage)
    if r.decision != common_pb2.DECISION_UNSPECIFIED:
        filters["decision"] = decision_from_proto(r.decision, "decision")
    filters["since"] = time_from_proto(r.since, r.HasField("since"), "since")
    filters["until"] = time_from_proto(r.until, r.HasField("until"), "until")
    if filters["since"] is not None and filters["until"] is not None and filters["until"] < filters["since"]:
        raise InvalidArgumentError("until", "must not be before since")
    if r.page_token:
        bad = verdict_id_violations(r.page_token, "page_token")
        if bad:
            raise InvalidArgumentError(bad)
        filters["before_id"] = r.page_token
    return filters
