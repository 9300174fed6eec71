"""Chat completions from an OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, OpenAI), with logprobs.

Every call asks for ``logprobs`` and ``top_logprobs`` because the gates and answer selection read them.
An endpoint that is down raises ``UnavailableError`` naming the URL; one that answers without logprobs
returns a ``Completion`` whose ``tokens`` is empty, and callers fall back to their documented defaults.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.errors import DeadlineExceededError, FailedPreconditionError, UnavailableError


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its natural-log probability and the top-k alternatives."""

    token: str
    logprob: float
    top_logprobs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class LlmToolCall:
    """A function call the model asked for."""

    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class Completion:
    """One choice of a chat completion."""

    text: str
    tool_calls: tuple[LlmToolCall, ...] = ()
    tokens: tuple[TokenLogprob, ...] = ()
    model: str = ""
    finish_reason: str = ""
    # Whether the endpoint returned logprobs at all (False: gates and selection use their defaults).
    has_logprobs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """Plain-JSON form kept in the graph state (checkpointed)."""
        return {
            "text": self.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments_json": c.arguments_json} for c in self.tool_calls],
            "tokens": [[t.token, t.logprob, [list(p) for p in t.top_logprobs]] for t in self.tokens],
            "model": self.model,
            "finish_reason": self.finish_reason,
            "has_logprobs": self.has_logprobs,
        }

    @staticmethod
    def from_state(data: dict[str, Any]) -> Completion:
        """Inverse of ``to_state``."""
        return Completion(
            text=data.get("text", ""),
            tool_calls=tuple(LlmToolCall(**c) for c in data.get("tool_calls", [])),
            tokens=tuple(
                TokenLogprob(t[0], float(t[1]), tuple((p[0], float(p[1])) for p in t[2]))
                for t in data.get("tokens", [])
            ),
            model=data.get("model", ""),
            finish_reason=data.get("finish_reason", ""),
            has_logprobs=bool(data.get("has_logprobs")),
        )


def parse_completion(body: dict[str, Any]) -> Completion:
    """The first choice of an OpenAI ``chat.completion`` response body."""
    choices = body.get("choices") or []
    if not choices:
        raise FailedPreconditionError("LLM endpoint returned no choices")
    choice = choices[0]
    msg = choice.get("message") or {}
    calls = []
    for i, c in enumerate(msg.get("tool_calls") or []):
        fn = c.get("function") or {}
        args = fn.get("arguments") or "{}"
        if not isinstance(args, str):  # some servers (Ollama) send an object
            args = json.dumps(args)
        calls.append(LlmToolCall(id=c.get("id") or f"call_{i}", name=fn.get("name", ""), arguments_json=args))
    lp = choice.get("logprobs") or {}
    content = lp.get("content") if isinstance(lp, dict) else None
    tokens = tuple(
        TokenLogprob(
            token=t.get("token", ""),
            logprob=float(t.get("logprob", 0.0)),
            top_logprobs=tuple((a.get("token", ""), float(a.get("logprob", 0.0))) for a in t.get("top_logprobs") or []),
        )
        for t in content or []
    )
    return Completion(
        text=msg.get("content") or "",
        tool_calls=tuple(calls),
        tokens=tokens,
        model=body.get("model", ""),
        finish_reason=choice.get("finish_reason") or "",
        has_logprobs=content is not None,
    )


class ChatClient:
    """Async client of one OpenAI-compatible base URL (".../v1"), keeping its connections alive."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLM base URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)
        # Calls and seconds spent waiting on the endpoint, and the last (start, end) perf_counter intervals:
        # benchmarks subtract LLM wall time (the union of the intervals) from turn time.
        self.calls = 0
        self.seconds = 0.0
        self.intervals: deque[tuple[float, float]] = deque(maxlen=4096)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        temperature: float = 0.0,
        tools: list[dict[str, Any]] | None = None,
        top_logprobs: int = 5,
        max_tokens: int = 0,
        timeout_s: float | None = None,
    ) -> Completion:
        """One chat completion. Raises UnavailableError (endpoint down or 5xx), DeadlineExceededError
        (timeout) or FailedPreconditionError (the endpoint rejected the request)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "logprobs": True,
            "top_logprobs": top_logprobs,
        }
        if tools:
            body["tools"] = tools
        if max_tokens > 0:
            body["max_tokens"] = max_tokens
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        try:
            resp = await self._http.post("/chat/completions", json=body, timeout=timeout_s or httpx.USE_CLIENT_DEFAULT)
        except httpx.TimeoutException as exc:
            raise DeadlineExceededError(f"LLM endpoint {url} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise UnavailableError(f"LLM endpoint {url} is unreachable: {exc}") from exc
        finally:
            ended = time.perf_counter()
            self.calls += 1
            self.seconds += ended - started
            self.intervals.append((started, ended))
        if resp.status_code >= 500 or resp.status_code == 429:
            raise UnavailableError(f"LLM endpoint {url} answered {resp.status_code}: {resp.text[:300]}")
        if resp.status_code >= 400:
            raise FailedPreconditionError(f"LLM endpoint {url} rejected the request ({resp.status_code}): "
                                          f"{resp.text[:300]}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise UnavailableError(f"LLM endpoint {url} answered non-JSON: {resp.text[:200]}") from exc
        return parse_completion(data)

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()
