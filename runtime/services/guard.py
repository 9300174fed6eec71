"""gRPC servicer for GuardService: validate, convert, call ``rt.guards`` off the event loop, convert back."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grpc
from agentrt.v1 import common_pb2, guard_pb2, guard_pb2_grpc

from core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from guards.engine import DEFAULT_SETTINGS, GuardEngine, category_violations, settings_violations
from guards.judge import JudgeConfig, LLMJudge
from guards.memory import MemoryParams
from guards.pack import DEFAULT_PACK, pack_vectors
from guards.sql import SqlGuardStore, SqlRateLimiter
from runtime.container import Runtime, check_guard
from runtime.convert import guard as conv

log = logging.getLogger(__name__)

MAX_RULES_PER_PUT = 500
MAX_YAML_CHARS = 512 * 1024


def _judge_from_env() -> LLMJudge | None:
    # The judge is off unless an OpenAI-compatible endpoint is configured; a namespace must also opt in.
    url = os.environ.get("AGENTRT_GUARD_JUDGE_URL", "")
    model = os.environ.get("AGENTRT_GUARD_JUDGE_MODEL", "")
    if not url or not model:
        return None
    return LLMJudge(JudgeConfig(base_url=url, model=model))


def build(rt: Runtime) -> None:
    """Attach the GuardEngine (``rt.guards``).

    ``policies.defaults.guards`` gives namespace setting defaults (``pack``, ``default_decision``...) and
    ``memory`` (MemoryParams overrides); ``policies.namespaces.<ns>.guards`` overrides settings per namespace.
    """
    configured = dict(rt.policy("guards", "")) if hasattr(rt, "policy") else {}
    # Embed the default pack now (before SERVING) so the first Check of a new namespace only copies rows; the
    # vectors are kept under <data_dir>/cache, so later starts read them instead.
    pack_vectors(str(DEFAULT_PACK), rt.embedder, rt.settings.storage.cache_dir())
    defaults = {k: v for k, v in configured.items() if k in DEFAULT_SETTINGS}
    _check_guard_policies(rt)
    params = MemoryParams.from_config(configured.get("memory"), "policies.defaults.guards.memory")
    rt.guards = GuardEngine(
        SqlGuardStore(rt.db.engine, publisher=lambda conn, scope: rt.changes.publish(conn, "guards", scope, {})),
        rt.embedder,
        params=params,
        defaults=defaults,
        policy=lambda scope: rt.policy("guards", scope),
        judge=_judge_from_env(),
        # Verdicts are written behind unless every verdict id must survive a kill -9 (storage.durable_records).
        audit_async=not rt.settings.storage.durable_records,
        # Replicas share Postgres: rate-limit rules count every replica's calls there, or N replicas would let N
        # times the limit through. One SQLite file has one sidecar, which counts in memory (no commit per call).
        limiter=SqlRateLimiter(rt.db.engine) if rt.db.dialect == "postgresql" else None,
    )
    # Another replica's feedback, evolution, rollback or rule change: reload that scope from the database.
    rt.replica_handlers["guards"] = lambda scope, _payload: rt.guards.reload(scope)


# Keys of a configured guards policy besides the namespace settings (DEFAULT_SETTINGS).
_POLICY_KEYS = {"rules": "operator rules, as in a PutRules YAML document", "memory": "guard memory parameters"}


def _check_guard_policies(rt: Runtime) -> None:
    """Refuse to start on a configured guards policy the engine could not use, naming every bad key: a setting
    like ``default_decision: blok`` was stored as given and made every Check of the namespace INTERNAL, and a
    misspelled key was dropped without a word."""
    from guards import rules as rules_mod

    configured = rt.settings.policies.configured("guards")
    violations: list[FieldViolation] = []
    for where, policy in configured:
        if policy is None:
            continue
        if not isinstance(policy, dict):
            violations.append(FieldViolation(where, "must be a mapping"))
            continue
        for key in policy:
            if key not in DEFAULT_SETTINGS and key not in _POLICY_KEYS:
                known = sorted([*DEFAULT_SETTINGS, *_POLICY_KEYS])
                violations.append(FieldViolation(f"{where}.{key}", f"unknown guards policy key; known: {known}"))
        if "memory" in policy and where.startswith("policies.namespaces."):
            violations.append(
                FieldViolation(
                    f"{where}.memory", "guard memory parameters are process-wide: set policies.defaults.guards.memory"
                )
            )
        settings = {k: v for k, v in policy.items() if k in DEFAULT_SETTINGS}
        violations += settings_violations(settings, field_prefix=f"{where}.")
        if policy.get("rules"):
            try:
                rules_mod.parse_rules_yaml(json.dumps({"rules": policy["rules"]}), source="config")
            except InvalidArgumentError as exc:
                violations += [FieldViolation(f"{where}.{v.field}", v.description) for v in exc.violations]
            except (TypeError, ValueError) as exc:
                violations.append(FieldViolation(f"{where}.rules", str(exc)))
    if violations:
        raise InvalidArgumentError(violations)


async def stop(rt: Runtime) -> None:
    """Flush the audit log."""
    if rt.guards is not None:
        await rt.offload(rt.guards.close)


class GuardServiceServicer(guard_pb2_grpc.GuardServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    @property
    def _guards(self) -> GuardEngine:
        return self._rt.guards  # type: ignore[no-any-return]

    async def Check(self, request: guard_pb2.CheckRequest, context: Any) -> guard_pb2.Verdict:
        req = conv.check_from_proto(request)
        # read-only tokens may run checks (the verdict is audited, nothing of the tenant's changes)
        scope = await self._rt.scope(request.namespace, create=True)
        verdict = await check_guard(self._guards, self._rt.offload, scope, req)
        return conv.verdict_to_proto(verdict)

    async def Feedback(self, request: guard_pb2.FeedbackRequest, context: Any) -> guard_pb2.FeedbackResponse:
        bad = conv.verdict_id_violations(request.verdict_id)
        if bad:
            raise InvalidArgumentError(bad)
        expected = conv.decision_from_proto(request.expected)
        if expected.value == "unspecified":
            raise InvalidArgumentError("expected", "must be DECISION_ALLOW, DECISION_BLOCK or DECISION_REVIEW")
        scope = await self._rt.scope(request.namespace, write=True)
        result = await self._rt.offload(self._guards.feedback, scope, request.verdict_id, expected, request.note)
        return conv.feedback_to_proto(result)

    async def ReportIncident(
        self, request: guard_pb2.ReportIncidentRequest, context: Any
    ) -> guard_pb2.FeedbackResponse:
        check = guard_pb2.CheckRequest(namespace=request.namespace, stage=request.stage, text=request.text)
        if request.HasField("tool_call"):
            check.tool_call.CopyFrom(request.tool_call)
        req = conv.check_from_proto(check)
        # Here, not in the store: Postgres refused a category past its column (or with NUL) as "request: a value
        # cannot be stored", naming no field, where SQLite kept it.
        bad = category_violations(request.category)
        if bad:
            raise InvalidArgumentError(bad)
        expected = conv.decision_from_proto(request.expected)
        if request.expected == common_pb2.DECISION_UNSPECIFIED:
            expected = conv.decision_from_proto(common_pb2.DECISION_BLOCK)
        scope = await self._rt.scope(request.namespace, write=True)
        result = await self._rt.offload(
            self._guards.report_incident, scope, req, expected, request.category, request.note
        )
        return conv.feedback_to_proto(result)

    async def PutRules(self, request: guard_pb2.PutRulesRequest, context: Any) -> guard_pb2.PutRulesResponse:
        if request.yaml and request.rules:
            raise InvalidArgumentError("yaml", "give either yaml or rules, not both")
        if len(request.yaml) > MAX_YAML_CHARS:
            raise InvalidArgumentError("yaml", f"at most {MAX_YAML_CHARS} characters")
        if len(request.rules) > MAX_RULES_PER_PUT:
            raise InvalidArgumentError("rules", f"at most {MAX_RULES_PER_PUT} rules per call")
        rules: Any = request.yaml
        if not request.yaml:
            # Only read here: the engine validates the rules (compiling their regexes, which takes a moment and
            # must not stall the event loop), and names every bad field of every rule in one answer.
            read = [conv.rule_body_from_proto(r, f"rules[{i}]") for i, r in enumerate(request.rules)]
            unreadable = [v for _, violations in read for v in violations]
            if unreadable:
                raise InvalidArgumentError(unreadable)
            rules = [body for body, _ in read]
        scope = await self._rt.scope(request.namespace, write=True)
        stored = await self._rt.offload(self._guards.put_rules, scope, rules, replace_all=request.replace)
        return guard_pb2.PutRulesResponse(rules=[conv.rule_to_proto(r) for r in stored])

    async def ListRules(self, request: guard_pb2.ListRulesRequest, context: Any) -> guard_pb2.ListRulesResponse:
        scope = await self._rt.scope(request.namespace)
        rules = await self._rt.offload(self._guards.list_rules, scope, include_pack=request.include_pack)
        return guard_pb2.ListRulesResponse(rules=[conv.rule_to_proto(r) for r in rules])

    async def DeleteRules(self, request: guard_pb2.DeleteRulesRequest, context: Any) -> guard_pb2.DeleteRulesResponse:
        if not request.names:
            raise InvalidArgumentError("names", "at least one rule name is required")
        scope = await self._rt.scope(request.namespace, write=True)
        n = await self._rt.offload(self._guards.delete_rules, scope, list(request.names))
        return guard_pb2.DeleteRulesResponse(deleted=n)

    async def TestRules(self, request: guard_pb2.TestRulesRequest, context: Any) -> guard_pb2.TestRulesResponse:
        req = conv.check_from_proto(request.check, "check.")
        scope = await self._rt.scope(request.check.namespace, field_name="check.namespace")
        matches, verdict = await self._rt.offload(self._guards.test_rules, scope, req, request.yaml or None)
        return guard_pb2.TestRulesResponse(
            matches=[conv.match_to_proto(m) for m in matches], verdict=conv.verdict_to_proto(verdict)
        )

    async def GetSettings(self, request: guard_pb2.GetGuardSettingsRequest, context: Any) -> guard_pb2.GuardSettings:
        scope = await self._rt.scope(request.namespace)
        settings = await self._rt.offload(self._guards.get_settings, scope)
        return conv.settings_to_proto(request.namespace, settings)

    async def UpdateSettings(
        self, request: guard_pb2.UpdateGuardSettingsRequest, context: Any
    ) -> guard_pb2.GuardSettings:
        changes = conv.settings_changes_from_proto(request)
        scope = await self._rt.scope(request.namespace, write=True)
        settings = await self._rt.offload(self._guards.put_settings, scope, changes, field_prefix="")
        return conv.settings_to_proto(request.namespace, settings)

    async def ListGuardClusters(
        self, request: guard_pb2.ListGuardClustersRequest, context: Any
    ) -> guard_pb2.ListGuardClustersResponse:
        scope = await self._rt.scope(request.namespace)

        def run() -> guard_pb2.ListGuardClustersResponse:
            clusters = self._guards.clusters(scope, category=request.category)
            return guard_pb2.ListGuardClustersResponse(
                clusters=[conv.cluster_to_proto(c) for c in clusters], memory_version=self._guards.memory(scope).version
            )

        return await self._rt.offload(run)

    async def History(self, request: guard_pb2.GuardHistoryRequest, context: Any) -> guard_pb2.GuardHistoryResponse:
        if request.limit < 0 or request.after_version < 0:
            raise InvalidArgumentError("limit" if request.limit < 0 else "after_version", "must be >= 0")
        scope = await self._rt.scope(request.namespace)
        events = await self._rt.offload(
            self._guards.history, scope, after_version=request.after_version, limit=min(request.limit or 100, 1000)
        )
        return guard_pb2.GuardHistoryResponse(events=[conv.event_to_proto(e) for e in events])

    async def Rollback(self, request: guard_pb2.GuardRollbackRequest, context: Any) -> guard_pb2.GuardEvolutionEvent:
        if request.version < 1:
            raise InvalidArgumentError(
                "version", f"must be the version of an event in History (>= 1), got {request.version}"
            )
        scope = await self._rt.scope(request.namespace, write=True)
        event = await self._rt.offload(self._guards.rollback, scope, request.version)
        return conv.event_to_proto(event)

    async def GetVerdict(self, request: guard_pb2.GetVerdictRequest, context: Any) -> guard_pb2.GuardAuditRecord:
        bad = conv.verdict_id_violations(request.verdict_id)
        if bad:
            raise InvalidArgumentError(bad)
        scope = await self._rt.scope(request.namespace)

        def run() -> guard_pb2.GuardAuditRecord:
            self._guards.flush()
            return conv.audit_to_proto(self._guards.store.get_audit(scope, request.verdict_id))

        return await self._rt.offload(run)

    async def QueryAudit(
        self, request: guard_pb2.QueryGuardAuditRequest, context: Any
    ) -> guard_pb2.QueryGuardAuditResponse:
        filters = conv.audit_query_from_proto(request)
        scope = await self._rt.scope(request.namespace)
        limit = filters["limit"]
        filters["limit"] = limit + 1

        def run() -> guard_pb2.QueryGuardAuditResponse:
            try:
                records = self._guards.query_audit(scope, **filters)
            except NotFoundError:
                raise InvalidArgumentError("page_token", "unknown page token") from None
            token = records[limit - 1].verdict.verdict_id if len(records) > limit else ""
            return guard_pb2.QueryGuardAuditResponse(
                records=[conv.audit_to_proto(r) for r in records[:limit]], next_page_token=token
            )

        return await self._rt.offload(run)

    async def PurgeAudit(
        self, request: guard_pb2.PurgeGuardAuditRequest, context: Any
    ) -> guard_pb2.PurgeGuardAuditResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        n = await self._rt.offload(self._guards.purge_audit, scope)
        return guard_pb2.PurgeGuardAuditResponse(deleted=n)


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    """Add GuardService to the server."""
    guard_pb2_grpc.add_GuardServiceServicer_to_server(GuardServiceServicer(rt), server)
