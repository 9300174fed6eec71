"""The server shell over the wire: health, reflection, malformed input, auth, binding rules, TLS, metrics."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from agentrt.v1 import memory_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runtime.client import AgentrtClient
from runtime.server import AgentrtServer, StartupError
from tests.conftest import REPO, bad_fields, make_settings
from tests.spine.tlsutil import make_pki

SERVICES = {f"agentrt.v1.{s}" for s in
            ("MemoryService", "GateService", "SelectService", "GuardService", "ToolService", "AgentService")}




def test_health_is_serving_once_ready_and_reflection_lists_every_service(make_server) -> None:
    srv = make_server(embedding_model="hashing")
    stub = health_pb2_grpc.HealthStub(srv.channel)
    assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    for name in SERVICES:
        assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    listed = {s.name for s in replies[0].list_services_response.service}
    assert listed >= SERVICES
    assert "grpc.health.v1.Health" in listed


def test_malformed_request_bytes_get_invalid_argument_naming_the_request(make_server) -> None:
    srv = make_server(embedding_model="hashing")
    call = srv.channel.unary_unary("/agentrt.v1.MemoryService/Search")  # raw bytes in, raw bytes out
    with pytest.raises(grpc.RpcError) as exc:
        call(b"\xff\xff\xff\xff garbage", timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(exc.value) == ["request"]


def test_invalid_utf8_in_a_string_field_is_invalid_argument(make_server) -> None:
    srv = make_server(embedding_model="hashing")
    # field 2 (query), wire type 2, length 2, bytes that are not UTF-8
    raw = memory_pb2.SearchRequest(namespace="ns").SerializeToString() + b"\x12\x02\xc3\x28"
    with pytest.raises(grpc.RpcError) as exc:
        srv.channel.unary_unary("/agentrt.v1.MemoryService/Search")(raw, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversize_message_is_rejected_with_resource_exhausted(make_server) -> None:
    srv = make_server(embedding_model="hashing", server={"max_message_bytes": 4096})
    req = memory_pb2.SearchRequest(namespace="ns", query="x" * 10_000)
    big_client = AgentrtClient(srv.target, max_message_bytes=1 << 20)
    with pytest.raises(grpc.RpcError) as exc:
        big_client.memory.Search(req, timeout=10)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    big_client.close()


def test_bearer_tokens_unauthenticated_and_health_open(make_server) -> None:
    srv = make_server(embedding_model="hashing", tokens=[{"token": "s3cret-a", "tenant": "acme"}])
    req = memory_pb2.SearchRequest(namespace="ns", query="hello")
    for client in (srv.new_client(), srv.new_client(token="wrong")):
        with pytest.raises(grpc.RpcError) as exc:
            client.memory.Search(req, timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "s3cret" not in (exc.value.details() or "")
        client.close()
    # probes need no token
    assert health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest()).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_refuses_non_loopback_bind_without_tokens(tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path, embedding_model="hashing", server={"host": "0.0.0.0"})
    with pytest.raises(StartupError, match=r"auth\.tokens"):
        AgentrtServer(settings)
    # ... unless tokens are configured, or --insecure is explicit
    AgentrtServer(make_settings(data_dir=tmp_path, embedding_model="hashing", server={"host": "0.0.0.0"},
                                tokens=[{"token": "t", "tenant": "x"}]))
    AgentrtServer(make_settings(data_dir=tmp_path, embedding_model="hashing",
                                server={"host": "0.0.0.0", "insecure": True}))


def test_cli_refuses_non_loopback_bind_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", "--host", "0.0.0.0", "--port", "0",
         "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "AGENTRT_LOG__FORMAT": "text"})
    assert proc.returncode == 2
    assert "refusing to bind '0.0.0.0' without authentication" in proc.stderr


def test_tls_and_mutual_tls(make_server, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    srv = make_server(embedding_model="hashing", server={"tls": tls})
    req = health_pb2.HealthCheckRequest()
    with AgentrtClient(f"localhost:{srv.port}", ca_file=str(pki["ca"])) as c:
        assert health_pb2_grpc.HealthStub(c.channel).Check(req, timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    # a plaintext client cannot talk to a TLS port
    with AgentrtClient(f"localhost:{srv.port}") as plain, pytest.raises(grpc.RpcError) as exc:
        health_pb2_grpc.HealthStub(plain.channel).Check(req, timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE

    mtls = make_server(embedding_model="hashing", server={"tls": {**tls, "client_ca_file": str(pki["ca"])}})
    with AgentrtClient(f"localhost:{mtls.port}", ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]),
                       key_file=str(pki["client_key"])) as c:
        assert health_pb2_grpc.HealthStub(c.channel).Check(req, timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    # without a client certificate the handshake fails
    with AgentrtClient(f"localhost:{mtls.port}", ca_file=str(pki["ca"])) as c, pytest.raises(grpc.RpcError) as exc:
        health_pb2_grpc.HealthStub(c.channel).Check(req, timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_half_configured_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cert_file and key_file"):
        AgentrtServer(make_settings(data_dir=tmp_path, embedding_model="hashing",
                                    server={"tls": {"cert_file": "/x.crt"}}))


def test_metrics_endpoint_exposes_rpc_histograms_and_error_counts(make_server) -> None:
    srv = make_server(embedding_model="hashing", server={"metrics_port": 0})
    with pytest.raises(grpc.RpcError):
        srv.channel.unary_unary("/agentrt.v1.MemoryService/Search")(b"\xff\xff", timeout=10)
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'agentrt_rpc_latency_seconds_bucket{le="0.005",method="/agentrt.v1.MemoryService/Search"}' in body
    assert 'agentrt_rpc_errors_total{code="INVALID_ARGUMENT",method="/agentrt.v1.MemoryService/Search"}' in body
    assert "agentrt_rpc_in_flight" in body
