"""``agentrt serve`` refuses what it cannot use in one line, exit 2, before anything listens: a port file it could
not write, a data directory or database URL that names no database (raw tracebacks before), a misspelled policy
component (accepted silently) and a bad key inside a policy (a traceback in the log after listening, exit 1)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.errors import InvalidArgumentError
from runtime.config import describe_validation_error, load_settings
from runtime.server import PolicyError, StartupError, serve
from tests.conftest import REPO, make_settings

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "AGENTRT_LOG__FORMAT": "text",
       "AGENTRT_EMBEDDING__MODEL": "hashing"}


def agentrt_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "serve", "--port", "0", "--metrics-port", "-1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_serve_refuses_a_port_file_in_a_missing_directory(tmp_path: Path) -> None:
    line = one_line_error(agentrt_serve("--data-dir", str(tmp_path / "d"),
                                        "--port-file", str(tmp_path / "no" / "port")))
    assert "--port-file" in line and "does not exist" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--database-url", "bogus://x"], "cannot use the database bogus://x"),
    (["--database-url", "not a url"], "cannot use the database not a url"),
])
def test_serve_refuses_a_database_url_naming_no_database(args: list[str], expected: str, tmp_path: Path) -> None:
    assert expected in one_line_error(agentrt_serve("--data-dir", str(tmp_path), *args))


def test_serve_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.touch()
    line = one_line_error(agentrt_serve("--data-dir", str(afile)))
    assert "cannot use the database" in line and str(afile) in line


def test_a_port_file_that_cannot_be_written_after_binding_stops_the_server(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    (tmp_path / "port.tmp").mkdir()  # the directory checks out; the write itself fails
    settings = make_settings(data_dir=tmp_path / "d", embedding_model="hashing")
    with pytest.raises(StartupError, match="cannot write --port-file"):
        asyncio.run(asyncio.wait_for(serve(settings, port_file=str(port_file)), 60))
    assert not port_file.exists()


@pytest.mark.parametrize(("policies", "key"), [
    ({"defaults": {"memroy": {"derive_duty": 0.1}}}, "policies.defaults.memroy"),
    ({"namespaces": {"demo": {"gatse": {"retrieve": {"threshold": 0.9}}}}}, "policies.namespaces.demo.gatse"),
])
def test_a_misspelled_policy_component_is_a_config_error(policies: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_settings(None, policies=policies)
    line = describe_validation_error(err.value)
    assert f"{key} is not a policy component" in line and "memory, gates, select, guards, tools, agent" in line


def test_serve_names_a_misspelled_policy_component_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text("policies:\n  defaults:\n    memroy: {derive_duty: 0.1}\n")
    assert "policies.defaults.memroy" in one_line_error(
        agentrt_serve("--config", str(config), "--data-dir", str(tmp_path / "d")))


def test_serve_names_a_bad_policy_key_where_it_is_configured_before_listening(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text("policies:\n  namespaces:\n    demo:\n      gates: {retreive: {threshold: 0.9}}\n")
    port_file = tmp_path / "port"
    line = one_line_error(agentrt_serve("--config", str(config), "--data-dir", str(tmp_path / "d"),
                                        "--port-file", str(port_file)))
    assert "policies.namespaces.demo.gates." in line and "retreive" in line
    assert not port_file.exists()  # refused before it listened


@pytest.mark.parametrize(("policies", "located"), [
    ({"namespaces": {"demo": {"select": {"simlarity": 0.9}}}}, "policies.namespaces.demo.select.simlarity"),
    ({"defaults": {"select": {"similarity": 2.0}}}, "policies.defaults.select.similarity"),
    ({"namespaces": {"acme/demo": {"tools": {"guard_calls": "maybe"}}}},
     "policies.namespaces.acme/demo.tools.guard_calls"),
    ({"defaults": {"agent": {"modle": "x"}}}, "policies.defaults.agent"),
    ({"namespaces": {"demo": {"agent": {"temperature": "hot"}}}}, "policies.namespaces.demo.agent.temperature"),
    ({"namespaces": {"demo": {"memory": {"retrieval": {"temperature": 0}}}}},
     "policies.namespaces.demo.memory.retrieval"),
])
def test_a_bad_policy_fails_the_start_naming_the_configured_key(make_server: Any, policies: dict[str, Any],
                                                                  located: str) -> None:
    with pytest.raises(PolicyError) as err:
        make_server(embedding_model="hashing", policies=policies)
    assert located in str(err.value)
    # Still the component's InvalidArgumentError for callers that catch that, and a StartupError for the CLI.
    assert isinstance(err.value, InvalidArgumentError) and isinstance(err.value, StartupError)
    assert err.value.violations


def test_a_namespace_inheriting_bad_defaults_is_not_blamed(make_server: Any) -> None:
    policies = {"defaults": {"select": {"similarity": 2.0}}, "namespaces": {"demo": {"select": {"min_words": 3}}}}
    with pytest.raises(PolicyError) as err:
        make_server(embedding_model="hashing", policies=policies)
    assert "policies.defaults.select.similarity" in str(err.value)
    assert "policies.namespaces.demo" not in str(err.value)
