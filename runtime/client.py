"""Typed Python client for the sidecar, sync (``AgentrtClient``) and async (``AsyncAgentrtClient``).

Every service's generated stub is available as an attribute (``client.memory.Search(...)``), so new RPCs
are usable at once; the common calls also have keyword-argument helpers. Bearer tokens are sent as
``authorization`` metadata on every call; TLS/mTLS by file paths.

    with AgentrtClient("127.0.0.1:50051") as c:
        c.write("demo", "s1", [{"id": "m1", "speaker": "ann", "text": "I moved to Lisbon"}])
        for hit in c.search("demo", "where does ann live?", top_k=5).hits:
            print(hit.score, hit.text)
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import grpc
import grpc.aio
from agentrt.v1 import (
    agent_pb2_grpc,
    common_pb2,
    gate_pb2,
    gate_pb2_grpc,
    guard_pb2,
    guard_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    select_pb2,
    select_pb2_grpc,
    tool_pb2_grpc,
)
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

MessageLike: TypeAlias = memory_pb2.Message | Mapping[str, Any]


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call says beyond its code: the bad fields and the server's retry advice."""

    field_violations: list[tuple[str, str]]
    """(field, why) of an INVALID_ARGUMENT's ``google.rpc.BadRequest``, e.g. ("messages[2].id", "...")."""
    retry_after_s: float | None
    """``google.rpc.RetryInfo`` delay of an UNAVAILABLE / RESOURCE_EXHAUSTED, when the server gave one."""


def error_details(err: grpc.RpcError) -> ErrorDetails:
    """Decode the ``google.rpc.Status`` details the sidecar attaches to its errors."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    fields: list[tuple[str, str]] = []
    retry: float | None = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToNanoseconds() / 1e9
    return ErrorDetails(fields, retry)


class _ClientCallDetails(
    collections.namedtuple("_ClientCallDetails", ("method", "timeout", "metadata", "credentials",
                                                  "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _AuthInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                  getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


class _AsyncAuthInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: Any) -> Any:
        metadata = grpc.aio.Metadata(*(tuple(d.metadata) if d.metadata else ()), self._header)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _credentials(ca_file: str | None, cert_file: str | None, key_file: str | None) -> grpc.ChannelCredentials:
    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def to_timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp from a datetime (naive datetimes are taken as UTC)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def make_message(m: MessageLike) -> memory_pb2.Message:
    """A Message from a proto or a dict with keys id, speaker, text, time (datetime), metadata."""
    if isinstance(m, memory_pb2.Message):
        return m
    msg = memory_pb2.Message(
        id=str(m.get("id", "")), speaker=str(m.get("speaker", "")), text=str(m.get("text", "")),
        metadata=dict(m.get("metadata", {})),
    )
    ts = to_timestamp(m.get("time"))
    if ts is not None:
        msg.time.CopyFrom(ts)
    return msg


def make_tokens(tokens: Iterable[common_pb2.TokenLogprob | Mapping[str, Any]]) -> list[common_pb2.TokenLogprob]:
    """TokenLogprob messages from protos or OpenAI-style dicts ({token, logprob, top_logprobs: [...]})."""
    out = []
    for t in tokens:
        if isinstance(t, common_pb2.TokenLogprob):
            out.append(t)
            continue
        msg = common_pb2.TokenLogprob(
            token=str(t.get("token", "")), logprob=float(t.get("logprob", 0.0)),
            # OpenAI sends top_logprobs: null when none were requested
            top_logprobs=[common_pb2.TopLogprob(token=str(a.get("token", "")), logprob=float(a["logprob"]))
                          for a in (t.get("top_logprobs") or [])],
        )
        if t.get("full_entropy") is not None:
            msg.full_entropy = float(t["full_entropy"])
        out.append(msg)
    return out


def write_request(namespace: str, session_id: str, messages: Sequence[MessageLike]) -> memory_pb2.WriteRequest:
    """The WriteRequest both clients send."""
    return memory_pb2.WriteRequest(namespace=namespace, session_id=session_id,
                                   messages=[make_message(m) for m in messages])


def search_request(namespace: str, query: str, top_k: int, token_budget: int) -> memory_pb2.SearchRequest:
    """The SearchRequest both clients send."""
    return memory_pb2.SearchRequest(namespace=namespace, query=query, top_k=top_k, token_budget=token_budget)


def decide_request(namespace: str, gate: int, tokens: Iterable[Any]) -> gate_pb2.DecideRequest:
    """The DecideRequest both clients send."""
    return gate_pb2.DecideRequest(namespace=namespace, gate=gate, tokens=make_tokens(tokens))  # type: ignore[arg-type]


class _Stubs:
    def _bind(self, channel: Any) -> None:
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.gate = gate_pb2_grpc.GateServiceStub(channel)
        self.select_service = select_pb2_grpc.SelectServiceStub(channel)
        self.guard = guard_pb2_grpc.GuardServiceStub(channel)
        self.tool = tool_pb2_grpc.ToolServiceStub(channel)
        self.agent = agent_pb2_grpc.AgentServiceStub(channel)


class AgentrtClient(_Stubs):
    """Blocking client. ``timeout`` (seconds) is the default deadline of every helper call."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = 30.0,
        max_message_bytes: int = 8 * 1024 * 1024,
    ):
        options = _channel_options(max_message_bytes)
        if ca_file or cert_file:
            channel = grpc.secure_channel(target, _credentials(ca_file, cert_file, key_file), options)
        else:
            channel = grpc.insecure_channel(target, options)
        if token:
            channel = grpc.intercept_channel(channel, _AuthInterceptor(token))
        self.channel: grpc.Channel = channel
        self.timeout = timeout
        self._bind(channel)

    def __enter__(self) -> AgentrtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def write(self, namespace: str, session_id: str, messages: Sequence[MessageLike]) -> memory_pb2.WriteResponse:
        """Store messages of one session (idempotent per message id)."""
        return self.memory.Write(write_request(namespace, session_id, messages), timeout=self.timeout)

    def search(self, namespace: str, query: str, *, top_k: int = 0, token_budget: int = 0) -> memory_pb2.SearchResponse:
        """Retrieve memory for a query."""
        return self.memory.Search(search_request(namespace, query, top_k, token_budget), timeout=self.timeout)

    def check(self, namespace: str, stage: int, text: str = "", *, tool_name: str = "", arguments_json: str = "",
              available_tools: Sequence[str] = ()) -> guard_pb2.Verdict:
        """Run the guard on one stage of a turn."""
        req = guard_pb2.CheckRequest(namespace=namespace, stage=stage, text=text,  # type: ignore[arg-type]
                                     available_tools=list(available_tools))
        if tool_name or arguments_json:
            req.tool_call.CopyFrom(common_pb2.ToolCall(name=tool_name, arguments_json=arguments_json))
        return self.guard.Check(req, timeout=self.timeout)

    def feedback(self, namespace: str, verdict_id: str, expected: int, note: str = "") -> guard_pb2.FeedbackResponse:
        """Tell the guard what a verdict should have been (the guard memory learns from it)."""
        req = guard_pb2.FeedbackRequest(namespace=namespace, verdict_id=verdict_id,
                                        expected=expected, note=note)  # type: ignore[arg-type]
        return self.guard.Feedback(req, timeout=self.timeout)

    def decide(self, namespace: str, gate: int, tokens: Iterable[Any]) -> gate_pb2.GateDecision:
        """Ask an entropy gate whether to fire, from token logprobs."""
        return self.gate.Decide(decide_request(namespace, gate, tokens), timeout=self.timeout)

    def record_gate_outcome(self, namespace: str, decision_id: str, *, needed: bool) -> gate_pb2.RecordOutcomeResponse:
        """Tell the gate whether retrieval / the tool / escalation was in fact needed for a decision."""
        req = gate_pb2.RecordOutcomeRequest(namespace=namespace, decision_id=decision_id, needed=needed)
        return self.gate.RecordOutcome(req, timeout=self.timeout)

    def calibrate(self, namespace: str, gate: int, **objective: Any) -> gate_pb2.CalibrateResponse:
        """Fit the gate's threshold from recorded outcomes (see docs/entropy.md for objectives)."""
        req = gate_pb2.CalibrateRequest(namespace=namespace, gate=gate, **objective)  # type: ignore[arg-type]
        return self.gate.Calibrate(req, timeout=self.timeout)

    def select(self, namespace: str, candidates: Sequence[Mapping[str, Any]]) -> select_pb2.Selection:
        """Pick one answer among candidates ({agent_id, answer, tokens})."""
        req = select_pb2.SelectRequest(namespace=namespace, candidates=[
            select_pb2.Candidate(agent_id=str(c.get("agent_id", "")), answer=str(c.get("answer", "")),
                                 tokens=make_tokens(c.get("tokens", [])))
            for c in candidates
        ])
        return self.select_service.Select(req, timeout=self.timeout)


class AsyncAgentrtClient(_Stubs):
    """asyncio client over ``grpc.aio``; same helpers as AgentrtClient, awaited."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = 30.0,
        max_message_bytes: int = 8 * 1024 * 1024,
    ):
        options = _channel_options(max_message_bytes)
        interceptors = [_AsyncAuthInterceptor(token)] if token else None
        if ca_file or cert_file:
            self.channel: grpc.aio.Channel = grpc.aio.secure_channel(
                target, _credentials(ca_file, cert_file, key_file), options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        self.timeout = timeout
        self._bind(self.channel)

    async def __aenter__(self) -> AsyncAgentrtClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def write(self, namespace: str, session_id: str, messages: Sequence[MessageLike]) -> memory_pb2.WriteResponse:
        return await self.memory.Write(write_request(namespace, session_id, messages), timeout=self.timeout)

    async def search(self, namespace: str, query: str, *, top_k: int = 0,
                     token_budget: int = 0) -> memory_pb2.SearchResponse:
        return await self.memory.Search(search_request(namespace, query, top_k, token_budget), timeout=self.timeout)

    async def decide(self, namespace: str, gate: int, tokens: Iterable[Any]) -> gate_pb2.GateDecision:
        return await self.gate.Decide(decide_request(namespace, gate, tokens), timeout=self.timeout)
