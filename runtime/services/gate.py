"""gRPC servicer for GateService (placeholder: the owning issue fills in build() and the RPCs)."""

from __future__ import annotations

import grpc

from agentrt.v1 import gate_pb2_grpc
from runtime.container import Runtime


def build(rt: Runtime) -> None:
    """Construct this service's components and attach them to rt."""


class GateServiceServicer(gate_pb2_grpc.GateServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    gate_pb2_grpc.add_GateServiceServicer_to_server(GateServiceServicer(rt), server)
