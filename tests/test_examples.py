"""The apps in examples/ run end to end against a real sidecar, as their docstrings tell a user to run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, f"examples/{script}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import RunningServer, make_settings

    srv = RunningServer(make_settings(data_dir=tmp_path_factory.mktemp("examples")))
    yield srv
    srv.stop()


def test_agent_turn_example_runs_turns_with_a_tool_call_and_an_approval(sidecar) -> None:  # type: ignore[no-untyped-def]
    out = _run("agent_turn.py", "--stub", "--yes", "--target", sidecar.target, "Hello!",
               '[call:echo {"text": "hi"}] echo this please')
    assert out.count("assistant: ") == 2
    assert "tool call echo(" in out and "tool result" in out
    assert "thread demo: 2 turns, 4 messages" in out


def test_langgraph_store_example_remembers_and_recalls_the_users_notes(sidecar) -> None:  # type: ignore[no-untyped-def]
    out = _run("langgraph_store.py", "--target", sidecar.target)
    assert out.count("user: ") == 3
    # The last question is answered from the note about the dog, found by meaning.
    last = out.split("user: Which pet do I have?")[1]
    assert "Pixel" in last
    assert "namespaces: [('users', 'ada', 'notes')]" in out
