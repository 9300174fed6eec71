"""gRPC servicer for SelectService: validate, convert, call ``rt.selector`` off the loop, convert back."""

from __future__ import annotations

from typing import Any

import grpc
from agentrt.v1 import select_pb2, select_pb2_grpc

from core.errors import InvalidArgumentError
from runtime import naming
from runtime.container import Runtime
from runtime.convert import select as conv
from runtime.selection import AnswerSelector

# More candidates than this is a client bug, not a vote.
MAX_CANDIDATES = 64


def build(rt: Runtime) -> None:
    """Attach the AnswerSelector (``rt.selector``); settings come from ``policies.*.select``.

    Models trained here are announced on the change feed; other replicas reload that namespace's model
    (``AnswerSelector.apply_remote_change``).
    """

    def publish(conn: Any, scope: str, payload: dict[str, Any]) -> None:
        rt.changes.publish(conn, "select", scope, payload)

    rt.selector = AnswerSelector(
        rt.db.engine, rt.embedder, lambda scope: rt.policy("select", scope), publisher=publish,
        durable_records=rt.settings.storage.durable_records,
    )
    rt.replica_handlers["select"] = rt.selector.apply_remote_change
    for scope in ["_/_", *rt.settings.policies.namespaces]:
        rt.selector.config(scope)  # a bad key fails the start, not the first Select



async def stop(rt: Runtime) -> None:
    """Store the selections still queued (they are written behind) and stop their writer."""
    if rt.selector is not None:
        await rt.offload(rt.selector.close)

class SelectServiceServicer(select_pb2_grpc.SelectServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    @property
    def _selector(self) -> AnswerSelector:
        return self._rt.selector  # type: ignore[no-any-return]

    async def Select(self, request: select_pb2.SelectRequest, context: Any) -> select_pb2.Selection:
        if not request.candidates:
            raise InvalidArgumentError("candidates", "at least one candidate is required")
        if len(request.candidates) > MAX_CANDIDATES:
            raise InvalidArgumentError(
                "candidates", f"at most {MAX_CANDIDATES} candidates, got {len(request.candidates)}"
            )
        scope = await self._rt.scope(request.namespace)
        persist = not request.dry_run and not naming.current_principal.get().read_only
        if persist:
            await self._rt.offload(self._rt.db.ensure_namespace, scope)

        def run() -> select_pb2.Selection:
            candidates = conv.candidates_from_proto(request)
            selection = self._selector.select(scope, candidates, persist=persist)
            return conv.selection_to_proto(selection, stored=persist)

        return await self._rt.offload(run)

    async def RecordOutcome(
        self, request: select_pb2.RecordSelectionOutcomeRequest, context: Any
    ) -> select_pb2.RecordSelectionOutcomeResponse:
        if not request.selection_id:
            raise InvalidArgumentError("selection_id", "must not be empty")
        scope = await self._rt.scope(request.namespace, write=True)
        labels = await self._rt.offload(
            self._selector.record_outcome,
            scope,
            request.selection_id,
            correct_indices=list(request.correct_indices),
            correct_answer=request.correct_answer or None,
        )
        return select_pb2.RecordSelectionOutcomeResponse(correct=labels)

    async def Train(
        self, request: select_pb2.TrainSelectorRequest, context: Any
    ) -> select_pb2.TrainSelectorResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        return conv.train_to_proto(await self._rt.offload(self._selector.train, scope))


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    select_pb2_grpc.add_SelectServiceServicer_to_server(SelectServiceServicer(rt), server)
