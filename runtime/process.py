"""``agentrt serve`` as a child process: start it on a free loopback port, wait for SERVING, stop it.

Tests (restart and kill -9 durability, SIGTERM drain), benchmarks (a server in its own process so the
client does not share its GIL) and examples all start the sidecar this one way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    """One ``python -m runtime.cli serve`` child on ``127.0.0.1:<free port>``; blocks until it is SERVING.

    ``env`` is added to this process's environment (``HF_HUB_OFFLINE=1`` is always set: nothing is
    downloaded). Output goes to ``log_path`` (default: a new file in ``data_dir``). Raises RuntimeError
    with the end of the log if the server exits during start-up, TimeoutError if it is not SERVING in time.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 300,
    ):
        data_dir.mkdir(parents=True, exist_ok=True)
        suffix = uuid.uuid4().hex[:6]
        self.port_file = data_dir / f"port-{suffix}"
        self.log_path = log_path or data_dir / f"server-{suffix}.log"
        self._log: IO[str] = open(self.log_path, "w+")  # noqa: SIM115 - closed by stop()/close()
        args = ["--data-dir", str(data_dir)] + (["--database-url", database_url] if database_url else [])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "serve", "--port", "0", "--metrics-port", "-1",
             "--port-file", str(self.port_file), *args, *extra_args],
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + startup_timeout
        try:
            self.port = self._wait_port(deadline)
            self.target = f"127.0.0.1:{self.port}"
            self.wait_serving(max(1.0, deadline - time.monotonic()))
        except BaseException:
            # Nobody gets a handle on a server that did not start: stop the child (it may still be loading)
            # and close its log, or it outlives the caller holding the port and the database.
            self.stop(timeout=10)
            raise

    def _wait_port(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            if self.port_file.exists() and (text := self.port_file.read_text().strip()):
                return int(text)
            self._raise_if_exited()
            time.sleep(0.05)
        raise TimeoutError(f"server did not bind in time:\n{self.log_tail()}")

    def _raise_if_exited(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")

    def wait_serving(self, timeout: float = 300) -> None:
        """Poll the gRPC health service until it reports SERVING."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                self._raise_if_exited()
                time.sleep(0.1)
        raise TimeoutError(f"server not SERVING in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 5000) -> str:
        """The last ``chars`` characters the server wrote."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-chars:]

    def rss_bytes(self) -> int:
        """Resident memory of the server process (0 once it has exited)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (graceful: drain, flush, close) and wait; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL: the crash a durability test simulates."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> None:
        """Terminate gracefully, kill if it does not exit in ``timeout``, and close the log."""
        if self.proc.poll() is None:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
