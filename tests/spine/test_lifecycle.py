"""Starting and failing to start: taken ports, unreadable TLS files, IPv6 loopback, flags out of range, and what
a failed start leaves behind (nothing: no listening port, no loop thread, no child process)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from agentrt.v1 import common_pb2, gate_pb2, gate_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.embedded import EmbeddedServer
from runtime.process import ServerProcess
from runtime.server import AgentrtServer, StartupError
from tests.conftest import REPO, bad_fields, make_settings

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "AGENTRT_EMBEDDING__MODEL": "hashing",
       "AGENTRT_LOG__FORMAT": "text"}


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "serve", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)


def _start_and_stop(settings) -> int:  # type: ignore[no-untyped-def]
    async def run() -> int:
        srv = AgentrtServer(settings)
        try:
            return await srv.start()
        finally:
            await srv.stop(0)

    return asyncio.run(run())


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_a_taken_grpc_port_is_a_startup_error_naming_the_address(tmp_path: Path, taken_port: int) -> None:
    settings = make_settings(data_dir=tmp_path, embedding_model="hashing", server={"port": taken_port})
    with pytest.raises(StartupError, match=f"127.0.0.1:{taken_port}"):
        _start_and_stop(settings)
    proc = _serve("--data-dir", str(tmp_path), "--port", str(taken_port), "--metrics-port", "-1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"agentrt: could not bind 127.0.0.1:{taken_port}: the port is in use or the address is not local")
    assert "Traceback" not in proc.stderr


def test_a_taken_metrics_port_fails_the_start_before_grpc_listens(tmp_path: Path, taken_port: int) -> None:
    proc = _serve("--data-dir", str(tmp_path), "--port", "0", "--metrics-port", str(taken_port))
    assert proc.returncode == 2, proc.stderr
    assert f"could not serve metrics on 127.0.0.1:{taken_port}" in proc.stderr
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr


def test_an_embedded_server_that_fails_to_start_leaves_no_port_or_thread(tmp_path: Path, taken_port: int) -> None:
    # The gRPC port is fixed so the test can check it was given back.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    settings = make_settings(data_dir=tmp_path, embedding_model="hashing",
                             server={"port": grpc_port, "metrics_port": taken_port})
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(StartupError, match="metrics"):
        EmbeddedServer(settings)
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {name for name in leftover if name.startswith("agentrt")}, leftover
    with socket.socket() as again:
        again.bind(("127.0.0.1", grpc_port))  # raises EADDRINUSE if the failed server still listens


def test_an_unreadable_tls_file_is_a_startup_error_naming_the_setting(tmp_path: Path) -> None:
    tls = {"cert_file": str(tmp_path / "missing.crt"), "key_file": str(tmp_path / "missing.key")}
    settings = make_settings(data_dir=tmp_path, embedding_model="hashing", server={"tls": tls})
    with pytest.raises(StartupError, match=r"server\.tls\.key_file .*missing\.key"):
        _start_and_stop(settings)


def test_an_ipv6_loopback_host_binds(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    for host in ("::1", "[::1]"):
        settings = make_settings(data_dir=tmp_path, embedding_model="hashing", server={"host": host})
        assert _start_and_stop(settings) > 0


@pytest.mark.parametrize("flag", [["--port", "70000"], ["--port", "-1"], ["--metrics-port", "-2"]])
def test_out_of_range_port_flags_are_refused_like_the_config_file(tmp_path: Path, flag: list[str]) -> None:
    args = ["--data-dir", str(tmp_path), "--metrics-port", "-1", *flag]
    proc = _serve(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "port" in proc.stderr.strip().splitlines()[-1]


def test_a_server_process_that_does_not_start_in_time_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[subprocess.Popen[bytes]] = []
    original = subprocess.Popen

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        proc = original(*args, **kwargs)
        spawned.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", spy)
    with pytest.raises(TimeoutError):
        ServerProcess(tmp_path, startup_timeout=0.2, env={"AGENTRT_EMBEDDING__MODEL": "hashing"})
    monkeypatch.undo()
    assert len(spawned) == 1
    assert spawned[0].poll() is not None  # exited (stopped), not left running with the port and database


def test_decide_refuses_a_session_id_longer_than_its_column(make_server) -> None:  # type: ignore[no-untyped-def]
    """The decision is written behind: an over-long session_id must fail the call, not (on Postgres) the batch
    that stores other callers' acknowledged decisions."""
    srv = make_server(embedding_model="hashing")
    stub = gate_pb2_grpc.GateServiceStub(srv.channel)
    tokens = [common_pb2.TokenLogprob(token="t", logprob=-1.0,
                                      top_logprobs=[common_pb2.TopLogprob(token="a", logprob=-1.0)])] * 4
    request = gate_pb2.DecideRequest(namespace="ns", gate=common_pb2.GATE_RETRIEVE, tokens=tokens,
                                     session_id="x" * 301)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["session_id"]
    request.session_id = "x" * 300
    assert stub.Decide(request).decision_id
    health = health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_second_server_on_one_sqlite_database_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    """Two sidecars on one SQLite file each answered from their own caches (a Write on one was never found by a
    Search on the other): the second start now fails, naming the first one's pid; once it stops, a start works."""
    import os

    first = EmbeddedServer(make_settings(data_dir=tmp_path, embedding_model="hashing"))
    try:
        with pytest.raises(StartupError, match=rf"in use by another agentrt process \(pid {os.getpid()}\)"):
            EmbeddedServer(make_settings(data_dir=tmp_path, embedding_model="hashing"))
        # The same database named through database_url from another data directory is the same database.
        url = f"sqlite:///{tmp_path / 'agentrt.db'}"
        with pytest.raises(StartupError, match="one sidecar per SQLite database"):
            EmbeddedServer(make_settings(data_dir=tmp_path / "other", db_url=url, embedding_model="hashing"))
        proc = _serve("--data-dir", str(tmp_path), "--port", "0", "--metrics-port", "-1")
        assert proc.returncode == 2, proc.stderr
        assert "is in use by another agentrt process" in proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr
    finally:
        first.stop()
    again = EmbeddedServer(make_settings(data_dir=tmp_path, embedding_model="hashing"))
    again.stop()


def test_a_killed_server_leaves_no_lock_behind(tmp_path: Path) -> None:
    """The kernel drops the lock with the process: after a kill -9, the next start does not wait or refuse."""
    srv = ServerProcess(tmp_path, env={"AGENTRT_EMBEDDING__MODEL": "hashing"}, log_path=tmp_path / "server.log")
    try:
        assert (tmp_path / "agentrt.db.serve.lock").read_text() == str(srv.proc.pid)
        srv.kill9()
    finally:
        srv.stop(timeout=10)
    again = EmbeddedServer(make_settings(data_dir=tmp_path, embedding_model="hashing"))
    again.stop()
