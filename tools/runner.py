"""Execution policy around an executor: deadline, bounded concurrency, idempotent-only retries, size cap."""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.errors import DeadlineExceededError, UnavailableError
from tools.executors import ExecResult
from tools.model import ToolDefinition

TRUNCATION_MARKER = "\n[agentrt: output truncated to {shown} of {total} bytes]"


@dataclass(frozen=True)
class RunResult:
    """The executed call as Invoke reports it."""

    output: str
    is_error: bool
    truncated: bool
    output_bytes: int
    """Size of the tool's whole output when known, else of what was read."""
    attempts: int
    duration_ms: float


def cap_output(body: bytes, cap: int, total: int | None = None) -> tuple[str, bool, int]:
    """Cut ``body`` to ``cap`` bytes on a UTF-8 boundary and append a marker saying so.

    ``total`` is the whole output's size when the executor stopped reading early (-1: unknown);
    None means ``body`` is the whole output. Returns (text, truncated, size).
    """
    size = len(body) if total is None else total
    if len(body) <= cap and (total is None or 0 <= total <= cap):
        return body.decode("utf-8", errors="replace"), False, size
    shown = body[:cap].decode("utf-8", errors="ignore")
    total_text = f"more than {cap}" if size < 0 else str(size)
    marker = TRUNCATION_MARKER.format(shown=len(shown.encode()), total=total_text)
    return shown + marker, True, max(size, len(body))


class ConcurrencyLimiter:
    """One semaphore per (scope, tool, version) and event loop: max_concurrency calls at once, others queue.

    A semaphore belongs to the first loop that waits on it, and a registry may be used from several loops in
    turn (as ``core.http.SessionPerLoop`` allows): each loop gets its own, dropped when the loop is collected.
    """

    def __init__(self) -> None:
        self._sems: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, str, int], tuple[int, asyncio.Semaphore]]
        ] = weakref.WeakKeyDictionary()

    def get(self, scope: str, tool: ToolDefinition) -> asyncio.Semaphore:
        """The running loop's semaphore for this tool version (recreated when its limit changed)."""
        sems = self._sems.setdefault(asyncio.get_running_loop(), {})
        key = (scope, tool.name, tool.version)
        entry = sems.get(key)
        if entry is None or entry[0] != tool.max_concurrency:
            entry = (tool.max_concurrency, asyncio.Semaphore(tool.max_concurrency))
            sems[key] = entry
        return entry[1]


Call = Callable[[float], Awaitable[ExecResult]]


async def run_with_policy(
    tool: ToolDefinition,
    call: Call,
    limiter: ConcurrencyLimiter,
    scope: str,
    *,
    deadline_s: float | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> RunResult:
    """Run ``call(timeout_s)`` under the tool's deadline and concurrency limit.

    The deadline is min(tool.timeout_s, deadline_s) and covers queueing for a slot and every attempt.
    Only idempotent tools are retried, only after UnavailableError, with jittered exponential backoff
    (or the endpoint's Retry-After) as long as the deadline allows.
    """
    budget = tool.timeout_s if deadline_s is None else min(tool.timeout_s, deadline_s)
    start = time.monotonic()
    end = start + budget
    attempts = 0
    sem = limiter.get(scope, tool)
    try:
        await asyncio.wait_for(sem.acquire(), budget)
    except TimeoutError:
        raise DeadlineExceededError(
            f"tool {tool.name!r}: no free slot within {budget:.3g}s (max_concurrency={tool.max_concurrency})"
        ) from None
    try:
        while True:
            attempts += 1
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError(f"tool {tool.name!r} ran past its {budget:.3g}s deadline")
            try:
                result = await asyncio.wait_for(call(remaining), remaining)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"tool {tool.name!r} did not answer within {budget:.3g}s (attempt {attempts})"
                ) from None
            except UnavailableError as exc:
                retries_left = tool.idempotent and attempts <= tool.max_retries
                wait = max(exc.retry_after_s or 0.0, 0.05 * 2 ** (attempts - 1)) * (0.5 + random.random() / 2)
                if not retries_left or time.monotonic() + wait >= end:
                    note = "" if tool.idempotent else " (not retried: the tool is not marked idempotent)"
                    raise UnavailableError(
                        f"{exc} after {attempts} attempt(s){note}", retry_after_s=exc.retry_after_s or 1.0
                    ) from exc
                await sleep(wait)
                continue
            text, truncated, size = cap_output(result.output, tool.max_output_bytes, result.total_bytes)
            return RunResult(
                output=text,
                is_error=result.is_error,
                truncated=truncated,
                output_bytes=size,
                attempts=attempts,
                duration_ms=(time.monotonic() - start) * 1000,
            )
    finally:
        sem.release()
