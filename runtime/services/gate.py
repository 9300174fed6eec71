"""gRPC servicer for GateService: validate, convert, call ``rt.gates`` off the event loop, convert back."""

from __future__ import annotations

from typing import Any

import grpc
from agentrt.v1 import gate_pb2, gate_pb2_grpc

from core import errors as domain
from runtime import naming
from runtime.container import Runtime
from runtime.convert import gate as conv
from runtime.gates import GateEngine
from runtime.gates.schema import gate_decisions

#: Longest ``session_id`` a decision can be stored with (the column's length). Checked before answering: the
#: decision is written behind, where an over-long value would only fail after its id was handed out.
MAX_SESSION_ID = int(gate_decisions.c.session_id.type.length or 0)  # type: ignore[attr-defined]


def gate_config(rt: Runtime, scope: str) -> list[dict[str, Any]]:
    """The configuration levels of ``scope``'s gates, lowest precedence first: ``policies.defaults.gates``,
    then ``policies.namespaces.<ns>.gates`` by bare name, then by ``tenant/ns``.

    Kept apart rather than merged: the engine applies each level's common keys and then its per-gate keys
    before the next level, so a namespace's ``threshold: 0.3`` beats the defaults' ``retrieve: {threshold:
    0.5}`` (merged, the per-gate key of any level won over every common key). A namespace still changes one
    key of one gate (``retrieve: {threshold: 0.3}``) and keeps the rest.
    """
    policies = rt.settings.policies
    levels = [policies.defaults.get("gates", {})]
    bare = scope.split("/", 1)[-1]
    for key in dict.fromkeys((bare, scope)):
        levels.append(policies.namespaces.get(key, {}).get("gates", {}))
    return levels


def build(rt: Runtime) -> None:
    """Attach the GateEngine (``rt.gates``); configured policies come from ``policies.*.gates``.

    Policy versions stored here are announced on the change feed; other replicas reload that gate's
    policy (``GateEngine.apply_remote_change``) so GetPolicy, Decide and the next SetPolicy build on them.
    """

    def publish(conn: Any, scope: str, payload: dict[str, Any]) -> None:
        rt.changes.publish(conn, "gates", scope, payload)

    rt.gates = GateEngine(rt.db.engine, lambda scope: gate_config(rt, scope), publisher=publish,
                          durable_records=rt.settings.storage.durable_records)
    rt.replica_handlers["gates"] = rt.gates.apply_remote_change
    # Fail the start on a bad gate policy in the configuration, not on the first Decide.
    rt.gates.validate_config(["_/_", *rt.settings.policies.namespaces])


async def stop(rt: Runtime) -> None:
    """Store the decisions still queued (they are written behind) and stop their writer."""
    if rt.gates is not None:
        await rt.offload(rt.gates.close)


async def _scope_for_record(rt: Runtime, namespace: str) -> tuple[str, bool]:
    """Scoped key, and whether this caller may store (read-only tokens get answers, nothing is stored)."""
    key = await rt.scope(namespace)
    writable = not naming.current_principal.get().read_only
    if writable:
        await rt.offload(rt.db.ensure_namespace, key)
    return key, writable


class GateServiceServicer(gate_pb2_grpc.GateServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    @property
    def _gates(self) -> GateEngine:
        return self._rt.gates  # type: ignore[no-any-return]

    async def Decide(self, request: gate_pb2.DecideRequest, context: Any) -> gate_pb2.GateDecision:
        kind = conv.gate_from_proto(request.gate)
        if len(request.session_id) > MAX_SESSION_ID:
            raise domain.InvalidArgumentError(
                "session_id", f"at most {MAX_SESSION_ID} characters, got {len(request.session_id)}"
            )
        scope, writable = await _scope_for_record(self._rt, request.namespace)
        span = conv.span_from_proto(request.answer_span, request.HasField("answer_span"), "answer_span")
        persist = writable and not request.dry_run

        def run() -> gate_pb2.GateDecision:
            # The policy first: each token keeps only the policy's top_k alternatives when it is converted.
            policy = self._gates.get_policy(scope, kind)
            # Conversion of up to thousands of logprobs is CPU work too: keep it off the event loop.
            has_packed = request.HasField("packed_tokens")
            stream = conv.stream_from_proto(
                request.tokens, request.packed_tokens, has_packed, top_k=policy.policy.top_k or None
            )
            if len(stream) == 0:
                raise domain.InvalidArgumentError(
                    "packed_tokens" if has_packed else "tokens", "at least one token is required"
                )
            decision = self._gates.decide(
                scope, kind, stream, session_id=request.session_id, span=span, persist=persist, policy=policy
            )
            return conv.decision_to_proto(decision, stored=persist)

        return await self._rt.offload(run)

    async def RecordOutcome(
        self, request: gate_pb2.RecordOutcomeRequest, context: Any
    ) -> gate_pb2.RecordOutcomeResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        needed = conv.outcome_from_proto(request)
        signals = conv.signals_from_proto(request.signals)
        # With a decision_id the gate is optional (the decision has one); a gate given must match it.
        gate = conv.gate_from_proto(request.gate) if not request.decision_id or request.gate else None
        decision_id = await self._rt.offload(
            self._gates.record_outcome,
            scope,
            needed=needed,
            decision_id=request.decision_id,
            gate=gate,
            signals=signals,
        )
        return gate_pb2.RecordOutcomeResponse(decision_id=decision_id)

    async def Calibrate(self, request: gate_pb2.CalibrateRequest, context: Any) -> gate_pb2.CalibrateResponse:
        kind = conv.gate_from_proto(request.gate)
        objective = conv.objective_from_proto(request)
        scope = await self._rt.scope(request.namespace, write=not request.dry_run)
        result = await self._rt.offload(self._gates.calibrate, scope, kind, objective)
        return conv.calibration_to_proto(result)

    async def GetPolicy(self, request: gate_pb2.GetGatePolicyRequest, context: Any) -> gate_pb2.GatePolicyVersion:
        kind = conv.gate_from_proto(request.gate)
        scope = await self._rt.scope(request.namespace)
        return conv.version_to_proto(await self._rt.offload(self._gates.get_policy, scope, kind))

    async def SetPolicy(self, request: gate_pb2.SetGatePolicyRequest, context: Any) -> gate_pb2.GatePolicyVersion:
        kind = conv.gate_from_proto(request.gate)
        scope = await self._rt.scope(request.namespace, write=True)
        changes = conv.policy_from_proto(request.policy)
        version = await self._rt.offload(self._gates.set_policy, scope, kind, changes, request.reason or "set by RPC")
        return conv.version_to_proto(version)

    async def ListPolicyVersions(
        self, request: gate_pb2.ListGatePolicyVersionsRequest, context: Any
    ) -> gate_pb2.ListGatePolicyVersionsResponse:
        kind = conv.gate_from_proto(request.gate)
        scope = await self._rt.scope(request.namespace)
        versions = await self._rt.offload(self._gates.list_policy_versions, scope, kind)
        return gate_pb2.ListGatePolicyVersionsResponse(versions=[conv.version_to_proto(v) for v in versions])

    async def RollbackPolicy(
        self, request: gate_pb2.RollbackGatePolicyRequest, context: Any
    ) -> gate_pb2.GatePolicyVersion:
        kind = conv.gate_from_proto(request.gate)
        scope = await self._rt.scope(request.namespace, write=True)
        return conv.version_to_proto(await self._rt.offload(self._gates.rollback, scope, kind, request.version))

    async def ResetPolicy(self, request: gate_pb2.ResetGatePolicyRequest, context: Any) -> gate_pb2.GatePolicyVersion:
        kind = conv.gate_from_proto(request.gate)
        scope = await self._rt.scope(request.namespace, write=True)
        reason = request.reason or "reset to the configured policy"
        return conv.version_to_proto(await self._rt.offload(self._gates.reset_policy, scope, kind, reason))


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    gate_pb2_grpc.add_GateServiceServicer_to_server(GateServiceServicer(rt), server)
