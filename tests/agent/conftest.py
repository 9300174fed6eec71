"""Fixtures of the agent tests: the OpenAI-compatible stub server and small helpers for RunTurn."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agentrt.v1 import agent_pb2

from runtime.agent.ports import ALLOW, REVIEW, GuardOutcome, NoMemory, ToolOutcome
from tests.agent.openai_stub import OpenAIStub
from tests.conftest import RunningServer, backend_url, make_settings


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server per backend for a whole test module (tests use their own threads and words);
    starting one per test would triple the run time of this area."""
    data_dir = tmp_path_factory.mktemp("agent-server")
    with backend_url(request.param, data_dir) as url:
        server = RunningServer(make_settings(data_dir=data_dir, db_url=url, embedding_model="hashing"))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIStub]:
    """A real HTTP server speaking the OpenAI chat-completions API, deterministic."""
    with OpenAIStub() as stub:
        yield stub


class LookupTools:
    """A tool pipeline with one tool, ``lookup``, that answers ``{"answer": "<q> is 42"}``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def specs(self, names: Any) -> list[dict[str, Any]]:
        spec = {"type": "function", "function": {
            "name": "lookup", "description": "Look a fact up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        }}
        return [spec] if "lookup" in names else []

    async def invoke(self, name: str, arguments_json: str, *, call_id: str, **_: Any) -> ToolOutcome:
        self.calls.append((name, arguments_json))
        if name != "lookup":
            return ToolOutcome(error=f"unknown tool {name!r}")
        q = json.loads(arguments_json).get("q", "")
        return ToolOutcome(result_json=json.dumps({"answer": f"{q} is 42"}))


class MarkerGuard:
    """A guard that returns REVIEW for texts containing ``[review]`` (at any stage), ALLOW otherwise."""

    async def check(self, stage: str, text: str, *, tool_call: Any = None, tools: Any = (),
                    thread_id: str = "") -> GuardOutcome:
        if "[review]" in text:
            return GuardOutcome(REVIEW, verdict_id=f"v-{stage}", harm_score=0.5, entropy=0.9, reason="needs a human")
        return GuardOutcome(ALLOW, verdict_id=f"v-{stage}")

    async def warm(self, stage: str, text: str, *, tool_call: Any = None, tools: Any = ()) -> None:
        return None


def turn(client: Any, namespace: str, thread_id: str, message: str, timeout: float = 60,
         **policy: Any) -> list[agent_pb2.TurnEvent]:
    """Run one turn over the wire and return every event."""
    request = agent_pb2.RunTurnRequest(namespace=namespace, thread_id=thread_id, message=message,
                                       policy=agent_pb2.TurnPolicy(**policy))
    return list(client.agent.RunTurn(request, timeout=timeout))


def resume(
    client: Any, namespace: str, thread_id: str, decision: int, timeout: float = 60
) -> list[agent_pb2.TurnEvent]:
    """Resume a paused thread over the wire and return every event."""
    request = agent_pb2.ResumeRequest(namespace=namespace, thread_id=thread_id, decision=decision)
    return list(client.agent.Resume(request, timeout=timeout))


def of(events: list[agent_pb2.TurnEvent], kind: str) -> list[Any]:
    """The payloads of the events of one kind, in order."""
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


def stages(events: list[agent_pb2.TurnEvent]) -> list[str]:
    """Names of the stages that finished, in order."""
    return [s.name for s in of(events, "stage") if s.status == agent_pb2.STAGE_STATUS_FINISHED]


class WriteInAThread(NoMemory):
    """A memory whose write commits in a worker thread after ``delay`` s (or once ``release`` is set), as the
    engine's does: cancelling the coroutine that awaits it does not stop it."""

    def __init__(self, delay: float, release: threading.Event | None = None) -> None:
        self.delay = delay
        self.release = release
        self.stored: dict[str, str] = {}
        self.writing = threading.Event()

    async def write(self, session_id: str, messages: Any) -> list[str]:
        def commit() -> list[str]:
            self.writing.set()
            if self.release is not None:
                assert self.release.wait(30)
            time.sleep(self.delay)
            self.stored.update({mid: text for mid, _speaker, text in messages})
            return [mid for mid, _speaker, _text in messages]

        return await asyncio.get_running_loop().run_in_executor(None, commit)

    async def delete(self, message_ids: Any) -> None:
        for mid in message_ids:
            self.stored.pop(mid, None)


@pytest.fixture
def srv(shared_server: RunningServer) -> Iterator[RunningServer]:
    """The module's server with a fresh fake tool pipeline (``srv.tools_fake``), an allow-all guard (the real
    guard engine on the hashing embedder has no meaningful verdicts; see test_real_components.py) and the real
    other components. A module may define its own ``srv`` instead."""
    from runtime.agent.ports import AllowAllGuard

    tools = LookupTools()
    shared_server.rt.extras["agent_ports"] = {"tools": lambda rt, scope: tools,
                                              "guard": lambda rt, scope: AllowAllGuard()}
    shared_server.tools_fake = tools  # type: ignore[attr-defined]
    yield shared_server
    shared_server.rt.extras.pop("agent_ports", None)
