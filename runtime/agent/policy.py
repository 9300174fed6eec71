"""A turn's policy: the namespace's configured ``agent`` policy overridden by the request's ``TurnPolicy``.

Resolved once when the turn starts and kept in the graph state, so a turn resumed after a restart runs
under the policy it started with. Configuration keys (``policies.defaults.agent`` /
``policies.namespaces.<ns>.agent`` in the YAML file) use the field names below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from core.errors import FieldViolation, InvalidArgumentError
from core.text import has_control_chars
from runtime.config import setting_boolean
from runtime.logs import redacted_url

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."


_STRINGS = {"llm_base_url", "model", "system_prompt", "api_key"}
_INTEGERS = {"num_candidates", "max_tool_rounds", "retrieve_top_k", "token_budget", "top_logprobs", "max_tokens"}
_NUMBERS = {"temperature", "llm_timeout_s", "temperature_spread"}
_BOOLEANS = {"write_memory", "speculative_retrieval", "parallel_input_guard", "enforce_tool_gate"}
_CANDIDATE_KEYS = {"agent_id", "model", "temperature", "system_prompt", "base_url"}


def _from_text(key: str, value: Any) -> Any:
    """A number or boolean written as text (environment variables are text) read as one; anything else as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if key in _BOOLEANS or key == "force_retrieval":
        parsed = setting_boolean(text)
        return value if parsed is None else parsed
    try:
        if key in _INTEGERS:
            return int(text)
        if key in _NUMBERS:
            return float(text)
    except ValueError:
        return value
    return value


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an LLM base URL (None when it can): an http(s) URL with a host, a valid port and no
    whitespace. Checked when the turn starts: a malformed URL failed only at the first LLM call, as UNAVAILABLE
    (which a client retries) or INTERNAL."""
    if any(ch.isspace() for ch in url) or has_control_chars(url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    if not parts.hostname:
        return "must name a host"
    return None


def _shown(url: str) -> str:
    return repr(redacted_url(url))  # the URL may carry a password or a key


def _normal_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class LlmKey:
    """The namespace's configured LLM API key and the configured URLs it may be sent to.

    Never part of a turn's policy or graph state (checkpoints would hold it in plain text): resolved from the
    current configuration on every RunTurn and Resume and handed to the runner. A URL the request names that is
    not one the configuration names (``llm_base_url`` or a configured candidate's ``base_url``) gets no key:
    otherwise any client could have the namespace's key sent to a server of its own.
    """

    api_key: str = field(default="", repr=False)
    urls: frozenset[str] = frozenset()

    def for_url(self, base_url: str) -> str:
        """The key to send to ``base_url`` ("" for none)."""
        return self.api_key if self.api_key and _normal_url(base_url) in self.urls else ""


def _type_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the policy field ``key`` (None when it can). Configured policies come from YAML and
    the environment untyped: "3" candidates raised TypeError mid-turn (INTERNAL), "false" was truthy, and a
    string for a tool list became a tuple of its letters."""
    if key in _STRINGS:
        return None if isinstance(value, str) else "must be a string"
    if key in _INTEGERS:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if key in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "must be a finite number"
        return "must be >= 0" if key == "temperature_spread" and value < 0 else None
    if key in _BOOLEANS:
        return None if isinstance(value, bool) else "must be true or false"
    if key == "force_retrieval":
        return None if value is None or isinstance(value, bool) else "must be true, false or unset"
    if key in ("tools", "approval_tools"):
        ok = isinstance(value, list | tuple) and all(isinstance(x, str) for x in value)
        return None if ok else "must be a list of tool names"
    if key == "candidates":
        if not isinstance(value, list | tuple):
            return "must be a list of candidate mappings"
        for i, c in enumerate(value):
            if not isinstance(c, dict):
                return f"candidates[{i}] must be a mapping of candidate fields"
            if unknown := sorted(set(c) - _CANDIDATE_KEYS):
                return f"candidates[{i}] has unknown keys {unknown}; known: {sorted(_CANDIDATE_KEYS)}"
            for k, v in c.items():
                if k == "temperature":
                    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                        return f"candidates[{i}].temperature must be a number"
                elif v is not None and not isinstance(v, str):
                    return f"candidates[{i}].{k} must be a string"
    return None


@dataclass(frozen=True)
class CandidateSpec:
    """One agent answering the turn."""

    agent_id: str
    base_url: str
    model: str
    temperature: float
    system_prompt: str


@dataclass(frozen=True)
class TurnPolicy:
    """How one turn runs (see ``proto/agentrt/v1/agent.proto`` ``TurnPolicy`` for each field)."""

    llm_base_url: str = ""
    model: str = "default"
    temperature: float = 0.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # [{"agent_id", "model", "temperature", "system_prompt", "base_url"}], any key optional.
    candidates: tuple[dict[str, Any], ...] = ()
    num_candidates: int = 1
    tools: tuple[str, ...] = ()
    approval_tools: tuple[str, ...] = ()
    max_tool_rounds: int = 3
    retrieve_top_k: int = 5
    token_budget: int = 0
    write_memory: bool = True
    # None: the retrieval gate decides; True/False: always/never retrieve.
    force_retrieval: bool | None = None
    # Search memory while the LLM writes its first answer, before the gate decides (see the proto field).
    speculative_retrieval: bool = True
    # Ask the LLM for the first answer while the input guard checks the message (see the proto field).
    parallel_input_guard: bool = False
    # Skip tool calls when the CALL_TOOL gate does not fire (default: the gate is advisory, reported only).
    enforce_tool_gate: bool = False
    top_logprobs: int = 5
    max_tokens: int = 0
    llm_timeout_s: float = 60.0
    # Extra copies of the default agent get temperature + spread * i.
    temperature_spread: float = 0.3
    api_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.candidates and self.num_candidates != len(self.candidates):
            object.__setattr__(self, "num_candidates", len(self.candidates))

    def validate(self, *, configured: bool = False) -> TurnPolicy:
        """Raise InvalidArgumentError naming every bad ``policy.*`` field (all of them, in one error).

        ``configured``: a namespace's configured policy, checked at start-up; it may leave the endpoint to the
        request, but every value it sets must be in range (else every turn failed, blaming the client).
        """
        found: list[FieldViolation] = []

        def bad(name: str, why: str) -> None:
            found.append(FieldViolation(f"policy.{name}", why))

        if not self.llm_base_url:
            if not configured:
                bad("llm_base_url", "no LLM endpoint: set it in the request or in the namespace's agent "
                    "policy (policies.*.agent.llm_base_url)")
        elif why := url_problem(self.llm_base_url):
            bad("llm_base_url", f"{_shown(self.llm_base_url)} {why}")
        if len(self.candidates) > 16:
            bad("candidates", f"{len(self.candidates)} candidates; at most 16")
        for name, ok, rule in self._range_checks():
            if not ok:
                bad(name, f"{getattr(self, name)!r} {rule}")
        for i, c in enumerate(self.candidates):
            if not isinstance(c, dict):
                bad(f"candidates[{i}]", f"{c!r} must be a mapping of candidate fields")
                continue
            t = c.get("temperature")
            if t is not None and not (isinstance(t, int | float) and 0.0 <= float(t) <= 2.0):
                bad(f"candidates[{i}].temperature", f"{t!r} must be in 0..2")
            # Checked here, not when the candidate's LLM call starts: the turn fails before any work, naming the field.
            url = c.get("base_url")
            if url:
                why = url_problem(url) if isinstance(url, str) else "must be a string"
                if why:
                    bad(f"candidates[{i}].base_url", f"{_shown(url) if isinstance(url, str) else repr(url)} {why}")
        if found:
            raise InvalidArgumentError(found)
        return self

    def _range_checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("num_candidates", 1 <= self.num_candidates <= 16, "must be in 1..16"),
            ("max_tool_rounds", 0 <= self.max_tool_rounds <= 16, "must be in 0..16"),
            ("retrieve_top_k", 0 <= self.retrieve_top_k <= 100, "must be in 0..100"),
            ("token_budget", self.token_budget >= 0, "must be >= 0"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "must be in 0..20"),
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
            ("temperature", 0.0 <= self.temperature <= 2.0, "must be in 0..2"),
            # 1 day: a finite bound that no real call reaches (inf would make the deadline arithmetic meaningless).
            ("llm_timeout_s", 0 < self.llm_timeout_s <= 86400, "must be in (0, 86400] seconds"),
        ]

    def llm_key(self) -> LlmKey:
        """This (configured) policy's API key and the URLs it is for (see ``LlmKey``)."""
        urls = {_normal_url(self.llm_base_url)} if self.llm_base_url else set()
        urls |= {_normal_url(c["base_url"]) for c in self.candidates
                 if isinstance(c, dict) and isinstance(c.get("base_url"), str) and c["base_url"]}
        return LlmKey(self.api_key, frozenset(urls))

    def candidate(self, index: int) -> CandidateSpec:
        """The resolved spec of candidate ``index`` (0 is the agent that also calls tools)."""
        c = self.candidates[index] if index < len(self.candidates) else {}
        temperature = c.get("temperature")
        if temperature is None:
            temperature = self.temperature + (self.temperature_spread * index if not self.candidates else 0.0)
        return CandidateSpec(
            agent_id=c.get("agent_id") or f"agent-{index}",
            base_url=c.get("base_url") or self.llm_base_url,
            model=c.get("model") or self.model,
            temperature=min(2.0, max(0.0, float(temperature))),
            system_prompt=c.get("system_prompt") or self.system_prompt,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form kept in the graph state, without ``api_key`` (see ``LlmKey``)."""
        d = asdict(self)
        del d["api_key"]
        d["candidates"] = [dict(c) for c in self.candidates]
        d["tools"] = list(self.tools)
        d["approval_tools"] = list(self.approval_tools)
        return d

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TurnPolicy:
        """Build from a (configuration or state) dict; unknown keys are rejected with their name."""
        known = {f.name for f in fields(TurnPolicy)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError("policy", f"unknown agent policy keys {unknown}; known: {sorted(known)}")
        d = {key: _from_text(key, value) for key, value in data.items()}
        for key, value in d.items():
            if why := _type_problem(key, value):
                raise InvalidArgumentError(f"policy.{key}", f"{value!r}: {why}")
        for key in ("candidates", "tools", "approval_tools"):
            if key in d:
                d[key] = tuple(d[key])
        return TurnPolicy(**d)

    def merged(self, overrides: dict[str, Any]) -> TurnPolicy:
        """This policy with ``overrides`` applied (keys with None values are ignored)."""
        d = self.to_dict()
        d.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("candidates") and "num_candidates" not in overrides:
            d["num_candidates"] = len(overrides["candidates"])
        return TurnPolicy.from_dict(d)
