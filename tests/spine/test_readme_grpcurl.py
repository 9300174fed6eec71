"""Every ``grpcurl`` command in the README, run the way grpcurl runs it, against a real server.

grpcurl itself cannot be installed here (no Go toolchain or binary on the reachable registries), so this
runs each command twice:

- with a Python client that does what grpcurl does: learn the API from server reflection alone (no
  compiled stubs, a fresh descriptor pool), turn the ``-d`` JSON into the request with the proto3 JSON
  mapping, call the method by name, and print the reply as JSON;
- with ``buf curl``, an independent Go gRPC client (from npm's ``@bufbuild/buf-linux-x64``, fetched by
  ``make test`` into ``.tools/``) that works the same way (reflection, JSON in, JSON out): the
  command's flags are translated one for one (``-plaintext`` → ``--protocol grpc
  --http2-prior-knowledge``, ``-d`` → ``-d``, ``list`` → ``--list-services``).

A README example with a wrong field name, a wrong method path or a service missing from reflection
fails here as it would fail for a user.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.conftest import REPO

README_ADDRESS = "127.0.0.1:50051"


def readme_grpcurl_commands() -> list[list[str]]:
    """The grpcurl command lines of the README's bash blocks (continuations joined, placeholders skipped)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        # A -d '...' argument may span lines inside its quotes: shlex reads the whole block at once.
        words = shlex.split(joined, comments=True)
        current: list[str] | None = None
        for word in words:
            if word == "grpcurl":
                current = []
                commands.append(current)
            elif current is not None:
                current.append(word)
    return [c for c in commands if not any("…" in w or "<token>" in w for w in c)]


class ReflectionClient:
    """grpcurl's model: descriptors from server reflection, JSON in, JSON out."""

    def __init__(self, channel: grpc.Channel):
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    def list_services(self) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]))))
        return sorted(s.name for s in reply.list_services_response.service)

    def call(self, method_path: str, body: str) -> dict[str, Any]:
        service_name, method_name = method_path.split("/")
        method = self.pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request = message_factory.GetMessageClass(method.input_type)()
        json_format.Parse(body or "{}", request)
        reply_class = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(f"/{service_name}/{method_name}")
        reply = reply_class.FromString(call(request.SerializeToString(), timeout=120))
        return json_format.MessageToDict(reply)


def _parse(args: list[str]) -> tuple[str, list[str]]:
    data, positional = "", []
    i = 0
    while i < len(args):
        if args[i] == "-d":
            data, i = args[i + 1], i + 2
        elif args[i] == "-plaintext":
            i += 1
        else:
            positional.append(args[i])
            i += 1
    address, *rest = positional
    assert address == README_ADDRESS, f"README examples use {README_ADDRESS}"
    # The README starts the MCP example server with `python <relative path>` from the checkout: `python` is
    # found on PATH as `make serve` sets it (see the `venv_first_on_path` fixture); only the path is made absolute.
    data = data.replace('"examples/', f'"{REPO}/examples/')
    return data, rest


def run_grpcurl(args: list[str], target: str) -> Any:
    data, rest = _parse(args)
    with grpc.insecure_channel(target) as channel:
        client = ReflectionClient(channel)
        if rest == ["list"]:
            return client.list_services()
        return client.call(rest[0], data)


def buf_binary() -> str | None:
    """``buf`` from $AGENTRT_BUF, ``.tools/buf`` (what ``make test`` fetches) or PATH."""
    for candidate in (os.environ.get("AGENTRT_BUF"), str(REPO / ".tools" / "buf"), shutil.which("buf")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_buf_curl(buf: str, args: list[str], target: str) -> Any:
    """The same command through ``buf curl`` (a Go client using server reflection)."""
    data, rest = _parse(args)
    base = ["--protocol", "grpc", "--http2-prior-knowledge"]
    if rest == ["list"]:
        cmd = [buf, "curl", *base, "--list-services", f"http://{target}"]
    else:
        cmd = [buf, "curl", *base, *(["-d", data] if data else []), f"http://{target}/{rest[0]}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    if rest == ["list"]:
        return sorted(done.stdout.split())
    return json.loads(done.stdout)


def check_replies(replies: dict[str, Any]) -> None:
    assert "agentrt.v1.MemoryService" in replies["list"] and "agentrt.v1.ToolService" in replies["list"]
    assert replies["agentrt.v1.MemoryService/Write"]["messageIds"] == ["m1"]
    hits = replies["agentrt.v1.MemoryService/Search"]["hits"]
    assert hits[0]["messageIds"] == ["m1"] and "Lisbon" in hits[0]["text"]
    imported = {t["name"] for t in replies["agentrt.v1.ToolService/ImportMcp"]["tools"]}
    assert imported == {"notes.add_note", "notes.find_notes"}
    invoked = replies["agentrt.v1.ToolService/Invoke"]
    assert invoked["outcome"] == "INVOKE_OUTCOME_OK" and "saved note 1" in invoked["output"]
    assert replies["agentrt.v1.ToolService/Search"]["hits"]
    assert replies["grpc.health.v1.Health/Check"]["status"] == "SERVING"


def test_readme_has_the_commands_this_test_runs() -> None:
    methods = [c[-1] for c in readme_grpcurl_commands()]
    assert "list" in methods
    for method in ("MemoryService/Write", "MemoryService/Search", "ToolService/ImportMcp", "ToolService/Invoke"):
        assert f"agentrt.v1.{method}" in methods


@pytest.fixture(autouse=True)
def venv_first_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH as ``make serve`` gives the sidecar: this interpreter's bin directory first. The README's
    ``"command": "python"`` then runs an interpreter with the mcp package, as it does for a user; with the
    shell's PATH it ran the system python and ImportMcp failed."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_make_serve_puts_the_venv_first_on_path() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert 'VENV_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"' in makefile
    assert "$(VENV_PATH) HF_HUB_OFFLINE=1 $(VENV)/bin/agentrt serve" in makefile


def test_every_readme_grpcurl_command_works_over_reflection(make_server, tmp_path: Path) -> None:
    srv = make_server(embedding_model="hashing")  # about the API surface, not embedding quality
    replies = {c[-1]: run_grpcurl(c, srv.target) for c in readme_grpcurl_commands()}
    check_replies(replies)


def test_every_readme_grpcurl_command_works_with_buf_curl(make_server) -> None:
    buf = buf_binary()
    if buf is None:
        pytest.skip("no buf binary (make test fetches it into .tools/ with npm; set AGENTRT_BUF to use another)")
    srv = make_server(embedding_model="hashing")
    replies = {c[-1]: run_buf_curl(buf, c, srv.target) for c in readme_grpcurl_commands()}
    check_replies(replies)
