"""Bearer tokens never reach the log: neither the configured ones nor the wrong ones callers present."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import grpc
import pytest
from agentrt.v1 import guard_pb2, memory_pb2

from runtime.client import AgentrtClient


def test_bearer_tokens_never_appear_in_the_server_log(spawn_server, tmp_path: Path) -> None:
    good = f"good-{secrets.token_hex(16)}"
    read_only = f"ro-{secrets.token_hex(16)}"
    wrong = f"wrong-{secrets.token_hex(16)}"
    tokens = [{"token": good, "tenant": "acme"}, {"token": read_only, "tenant": "acme", "read_only": True}]
    server = spawn_server(data_dir=tmp_path / "data", env={
        "AGENTRT_AUTH__TOKENS": json.dumps(tokens),
        "AGENTRT_EMBEDDING__MODEL": "hashing",
        # The most talkative setting, in the production (JSON) format that also logs ``extra=`` fields.
        "AGENTRT_LOG__LEVEL": "DEBUG",
        "AGENTRT_LOG__FORMAT": "json",
    })

    with AgentrtClient(server.target, token=good) as client:
        client.memory.Write(memory_pb2.WriteRequest(namespace="sec", session_id="s", messages=[
            memory_pb2.Message(id="m1", speaker="u", text="hello")]), timeout=30)
        client.memory.Search(memory_pb2.SearchRequest(namespace="sec", query="hello", top_k=3), timeout=30)
        # A failing call with a valid token (error paths log more than happy ones).
        with pytest.raises(grpc.RpcError):
            client.memory.Get(memory_pb2.GetRequest(namespace="sec", message_ids=["missing"]), timeout=30)
        with pytest.raises(grpc.RpcError):
            client.guard.Check(guard_pb2.CheckRequest(namespace="../bad", stage=99), timeout=30)
    with AgentrtClient(server.target, token=read_only) as client, pytest.raises(grpc.RpcError) as denied:
        client.memory.Write(memory_pb2.WriteRequest(namespace="sec", session_id="s", messages=[
            memory_pb2.Message(id="m2", speaker="u", text="not allowed")]), timeout=30)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with AgentrtClient(server.target, token=wrong) as client, pytest.raises(grpc.RpcError) as bad:
        client.memory.Search(memory_pb2.SearchRequest(namespace="sec", query="x"), timeout=30)
    assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/agentrt.v1.MemoryService/Search")
        for header in (f"Basic {good}", f"bearer{good}", good, f"Bearer {good}x", f"Bearer  {wrong} "):
            with pytest.raises(grpc.RpcError) as err:
                call(b"", metadata=[("authorization", header)], timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, header

    assert server.terminate() == 0
    log = server.log_path.read_text()
    assert log.strip(), "the server wrote no log at all; the check would be empty"
    for secret in (good, read_only, wrong):
        for piece in (secret, secret.split("-", 1)[1]):
            assert piece not in log, f"a bearer token appears in the server log ({secret[:6]}…)"
