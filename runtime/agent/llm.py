"""Chat completions from an OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, OpenAI), with logprobs.

Every call asks for ``logprobs`` and ``top_logprobs`` because the gates and answer selection read them.
Every error names the endpoint's URL (its password and query values masked, ``redacted_url``: errors reach the
caller and the log): ``UnavailableError`` when it is down (or answers 5xx/429),
``DeadlineExceededError`` when no complete answer arrives within the call's timeout, ``FailedPreconditionError``
when it rejects the request, redirects it, or answers something that is not a chat completion (not UTF-8 JSON,
wrong types, an oversized body or answer). An answer without usable logprobs (none sent, or values that are not
log-probabilities) is a ``Completion`` whose ``tokens`` is empty, and callers fall back to their documented defaults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from core.errors import DeadlineExceededError, FailedPreconditionError, UnavailableError
from core.http import SessionPerLoop
from runtime.gates.types import MAX_TOP_LOGPROBS, MIN_LOGPROB
from runtime.logs import redacted_url

log = logging.getLogger(__name__)


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


#: Largest response body read from an endpoint (bytes, after any content decoding). A chat completion with logprobs
#: for a few thousand tokens is a few hundred kilobytes; a body past this is an endpoint gone wrong, and reading it
#: would hold the turn (and the sidecar's memory) for nothing.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Longest answer text taken from an endpoint: what memory keeps of one message (``memory.engine.MAX_TEXT_CHARS``).
#: A longer answer is refused when it arrives, not at the memory write that ends the turn.
MAX_ANSWER_CHARS = 100_000
#: Positive logprobs up to this are rounding (APIs round log(1) to a tiny positive number) and read as 0.
_ROUNDING = 1e-4


class _Malformed(FailedPreconditionError):
    """The endpoint answered 200 with a body that is not a chat completion."""

    def __init__(self, endpoint: str, what: str):
        super().__init__(f"LLM endpoint {endpoint} answered a malformed chat completion: {what}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number, else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(content: Any, endpoint: str) -> str:
    """The message's text: a string, or OpenAI's list of content parts (``{"type": "text", "text": ...}``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            text = part.get("text") if isinstance(part, dict) and part.get("type", "text") == "text" else None
            if not isinstance(text, str):
                raise _Malformed(endpoint, f"message.content[{i}] is not a text part ({_kind(part)} "
                                           f"{str(part)[:80]!r})")
            parts.append(text)
        return "".join(parts)
    raise _Malformed(endpoint, f"message.content is a {_kind(content)}, not a string or a list of text parts")


def _objects(raw: Any, where: str, endpoint: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(position, path, item) of a JSON list of objects at ``where``; _Malformed naming the path otherwise."""
    if not isinstance(raw, list):
        raise _Malformed(endpoint, f"{where} is a {_kind(raw)}, not a list")
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise _Malformed(endpoint, f"{at} is a {_kind(item)}, not an object")
        yield i, at, item


def _tool_calls(raw: Any, endpoint: str) -> tuple[LlmToolCall, ...]:
    if raw is None:
        return ()
    calls = []
    for i, at, c in _objects(raw, "message.tool_calls", endpoint):
        fn = c.get("function") or {}
        if not isinstance(fn, dict):
            raise _Malformed(endpoint, f"{at}.function is a {_kind(fn)}, not an object")
        name, call_id = fn.get("name") or "", c.get("id") or f"call_{i}"
        if not isinstance(name, str) or not isinstance(call_id, str):
            raise _Malformed(endpoint, f"{at}: the function name and the id must be strings")
        args = fn.get("arguments") or "{}"
        if not isinstance(args, str):  # some servers (Ollama) send an object
            args = json.dumps(args)
        calls.append(LlmToolCall(id=call_id, name=name, arguments_json=args))
    return tuple(calls)


def _token_logprobs(raw: Any, endpoint: str) -> tuple[list[tuple[str, float, list[tuple[str, float]]]], bool]:
    """``choice.logprobs`` as (token, logprob, alternatives) rows, and whether the endpoint sent any."""
    if raw is None:
        return [], False
    if not isinstance(raw, dict):
        raise _Malformed(endpoint, f"logprobs is a {_kind(raw)}, not an object")
    content = raw.get("content")
    if content is None:
        return [], False
    rows = []
    for _, at, t in _objects(content, "logprobs.content", endpoint):
        token, lp, top = t.get("token", ""), _number(t.get("logprob")), t.get("top_logprobs") or []
        if not isinstance(token, str) or lp is None:
            raise _Malformed(endpoint, f"{at} needs a string token and a numeric logprob "
                                       f"(got {_kind(token)} and {_kind(t.get('logprob'))})")
        if not isinstance(top, list):
            raise _Malformed(endpoint, f"{at}.top_logprobs is a {_kind(top)}, not a list")
        alts = []
        for j, a in enumerate(top):
            alt = a.get("token", "") if isinstance(a, dict) else None
            alp = _number(a.get("logprob")) if isinstance(a, dict) else None
            if not isinstance(alt, str) or alp is None:
                raise _Malformed(endpoint, f"{at}.top_logprobs[{j}] is not a {{token, logprob}} object")
            alts.append((alt, alp))
        rows.append((token, lp, alts))
    return rows, True


def _usable(rows: list[tuple[str, float, list[tuple[str, float]]]]) -> tuple[tuple[TokenLogprob, ...], str]:
    """The token logprobs the gates and selection can read, or none and the reason.

    A logprob is ln p <= 0. Small positive values are rounding and read as 0. An alternative at -inf (servers send it
    for a token a grammar or logit bias made impossible) has probability 0 and is left out. Anything else that is
    not a finite number <= 0 (NaN, +inf, a sampled token at -inf, a clearly positive value) means the endpoint's
    numbers cannot be trusted: the whole answer then counts as one without logprobs.
    """
    tokens = []
    for i, (token, lp, alts) in enumerate(rows):
        if not (math.isfinite(lp) and lp <= _ROUNDING):
            return (), f"logprobs.content[{i}].logprob is {lp!r}"
        kept = []
        for j, (alt, alp) in enumerate(alts):
            if alp == -math.inf or (math.isfinite(alp) and alp < MIN_LOGPROB):
                continue  # probability 0 (some servers mark it with -1e30 or float32's lowest instead of -inf)
            if not (math.isfinite(alp) and alp <= _ROUNDING):
                return (), f"logprobs.content[{i}].top_logprobs[{j}].logprob is {alp!r}"
            kept.append((alt, min(alp, 0.0)))
        # The gates refuse logprobs below MIN_LOGPROB (sums over an answer would overflow): a sampled token
        # that far down is probability 0 for every signal, and reads as the floor. More alternatives than the
        # gates take (an endpoint ignoring top_logprobs) are cut to the most likely ones.
        kept = sorted(kept, key=lambda a: -a[1])[:MAX_TOP_LOGPROBS]
        tokens.append(TokenLogprob(token, min(max(lp, MIN_LOGPROB), 0.0), tuple(kept)))
    return tuple(tokens), ""


def parse_completion(body: Any, endpoint: str = "(unnamed)") -> Completion:
    """The first choice of an OpenAI ``chat.completion`` response body.

    Raises FailedPreconditionError naming ``endpoint`` (the URL the body came from) and what is wrong when the body
    is not a chat completion, or when its answer is longer than ``MAX_ANSWER_CHARS``. Logprobs that are not valid
    log-probabilities (see ``_usable``) are dropped with a warning: the completion then has no logprobs, and the
    gates and selection use their documented fallbacks.
    """
    if not isinstance(body, dict):
        raise _Malformed(endpoint, f"the body is a JSON {_kind(body)}, not an object")
    choices = body.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise _Malformed(endpoint, f"choices is a {_kind(choices)}, not a list")
    if not choices:
        raise FailedPreconditionError(f"LLM endpoint {endpoint} returned no choices")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise _Malformed(endpoint, f"choices[0] is a {_kind(choice)}, not an object")
    msg = choice.get("message") or {}
    if not isinstance(msg, dict):
        raise _Malformed(endpoint, f"message is a {_kind(msg)}, not an object")
    text = _text(msg.get("content"), endpoint)
    if len(text) > MAX_ANSWER_CHARS:
        raise FailedPreconditionError(
            f"LLM endpoint {endpoint} answered {len(text)} characters; an answer is at most {MAX_ANSWER_CHARS} "
            "(what memory keeps of one message): bound it with policy.max_tokens")
    if "\x00" in text:
        # Not the client's fault: memory (Postgres text) refuses the character, and the turn failed at its memory
        # write as INVALID_ARGUMENT, blaming the request.
        raise FailedPreconditionError(f"LLM endpoint {endpoint} answered text holding a NUL character, which an "
                                      "answer cannot hold")
    rows, sent = _token_logprobs(choice.get("logprobs"), endpoint)
    tokens, unusable = _usable(rows)
    if unusable:
        log.warning("LLM endpoint %s sent unusable logprobs (%s): the answer counts as one without logprobs",
                    endpoint, unusable)
    model, finish = body.get("model") or "", choice.get("finish_reason") or ""
    return Completion(
        text=text,
        tool_calls=_tool_calls(msg.get("tool_calls"), endpoint),
        tokens=tokens,
        model=model if isinstance(model, str) else str(model),
        finish_reason=finish if isinstance(finish, str) else str(finish),
        has_logprobs=sent and not unusable,
    )


class ChatClient:
    """Async client of one OpenAI-compatible base URL (".../v1"), keeping its connections alive."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLM base URL {redacted_url(base_url)!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # aiohttp rather than httpx: on loopback a call's client work is 0.21 ms of CPU against httpx's 0.73-0.91
        # (measured here against the stub LLM), and a turn makes five calls while its guard checks, search and
        # warming want the same two cores.
        self._sessions = SessionPerLoop()
        # Calls and seconds spent waiting on the endpoint, and the last (start, end) perf_counter intervals:
        # benchmarks subtract LLM wall time (the union of the intervals) from turn time.
        self.calls = 0
        self.seconds = 0.0
        self.intervals: deque[tuple[float, float]] = deque(maxlen=4096)
        # Calls under way (the runner closes an evicted client only once none is).
        self.in_flight = 0

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
        """One chat completion. Raises UnavailableError (endpoint down, 5xx or 429), DeadlineExceededError (no
        complete answer within ``timeout_s``, the client's timeout by default: a limit on the whole call, however
        the endpoint spreads its bytes) or FailedPreconditionError (the endpoint rejected the request, redirected
        it, or answered something that is not a chat completion; see ``parse_completion``)."""
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
        shown = redacted_url(url)  # what messages name: the URL may carry the endpoint's key (?api_key=, user:key@)
        limit = timeout_s or self.timeout_s
        started = time.perf_counter()
        self.in_flight += 1
        try:
            # A limit on the whole call: a per-read timeout would never trip on an endpoint sending a byte now
            # and then. aiohttp's own timeouts (connect included) are TimeoutError subclasses too.
            async with asyncio.timeout(limit):
                status, location, raw = await self._post(body, url, limit)
        except TimeoutError as exc:
            raise DeadlineExceededError(
                f"LLM endpoint {shown} timed out: no complete answer within {limit:g} s") from exc
        except aiohttp.InvalidURL as exc:
            # A malformed base URL (policies check them; a client of this class may not have): retrying cannot help.
            raise FailedPreconditionError(f"LLM endpoint {shown} is not a valid URL: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            reason = str(exc).replace(url, shown)  # some aiohttp errors quote the whole URL
            raise UnavailableError(f"LLM endpoint {shown} is unreachable: {exc.__class__.__name__}: {reason}") from exc
        finally:
            self.in_flight -= 1
            ended = time.perf_counter()
            self.calls += 1
            self.seconds += ended - started
            self.intervals.append((started, ended))
        excerpt = raw[:300].decode("utf-8", "replace")
        if status >= 500 or status == 429:
            raise UnavailableError(f"LLM endpoint {shown} answered {status}: {excerpt}")
        if status >= 400:
            raise FailedPreconditionError(f"LLM endpoint {shown} rejected the request ({status}): {excerpt}")
        if 300 <= status < 400:
            where = redacted_url(location) if location else "none"
            raise FailedPreconditionError(f"LLM endpoint {shown} answered a redirect ({status}, Location: {where}); "
                                          "redirects are not followed: set the base URL the endpoint really serves")
        if not 200 <= status < 300:
            raise FailedPreconditionError(f"LLM endpoint {shown} answered {status}: {excerpt}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FailedPreconditionError(f"LLM endpoint {shown} answered a body that is not UTF-8 ({exc.reason} at "
                                          f"byte {exc.start})") from exc
        except ValueError as exc:
            raise FailedPreconditionError(f"LLM endpoint {shown} answered non-JSON ({exc}): {excerpt[:200]}") from exc
        except RecursionError:
            # Not the caller's fault (the error mapping would blame "the request"), and an extra candidate whose
            # endpoint answers this must be left out like any other endpoint failure.
            raise FailedPreconditionError(f"LLM endpoint {shown} answered JSON nested too deeply") from None
        return parse_completion(data, shown)

    async def _post(self, body: dict[str, Any], url: str, limit: float) -> tuple[int, str, bytes]:
        """POST ``body``; the status, the Location header and the body, read up to ``MAX_BODY_BYTES``.

        A successful answer past the cap raises FailedPreconditionError; an error answer is cut there (only its
        start goes into the error message).
        """
        too_big = FailedPreconditionError(f"LLM endpoint {redacted_url(url)} answered more than {MAX_BODY_BYTES} "
                                          "bytes; a chat completion is far smaller (bound the answer with "
                                          "policy.max_tokens)")
        timeout = aiohttp.ClientTimeout(total=limit)
        # Redirects are not followed: a base URL that redirects is misconfigured, and following one would send the
        # request body and the API key to wherever it points.
        async with self._sessions.get().post(url, data=json.dumps(body).encode(), headers=self._headers,
                                        timeout=timeout, allow_redirects=False) as resp:
            status, location = resp.status, resp.headers.get("location", "")
            declared = resp.headers.get("content-length", "")
            if 200 <= status < 300 and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise too_big
            raw = bytearray()
            while True:
                chunk = await resp.content.read(MAX_BODY_BYTES + 1 - len(raw))
                if not chunk:
                    break
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    if 200 <= status < 300:
                        raise too_big
                    break
            return status, location, bytes(raw)

    async def aclose(self) -> None:
        """Close the pooled connections of the running loop."""
        await self._sessions.aclose()
