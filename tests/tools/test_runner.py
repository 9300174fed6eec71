"""Execution policy: deadlines, idempotent-only retries, bounded concurrency, output cap."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import DeadlineExceededError, UnavailableError
from tools.executors import ExecResult
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition
from tools.runner import ConcurrencyLimiter, cap_output, run_with_policy


def tool(**kw: object) -> ToolDefinition:
    base: dict[str, object] = {
        "name": "t",
        "description": "",
        "input_schema": {"type": "object"},
        "executor": ExecutorSpec(ExecutorKind.BUILTIN, builtin="x"),
        "version": 1,
    }
    base.update(kw)
    return ToolDefinition(**base)  # type: ignore[arg-type]


async def _no_sleep(_: float) -> None:
    return None


def flaky(failures: int) -> tuple[list[int], object]:
    calls: list[int] = []

    async def call(timeout_s: float) -> ExecResult:
        calls.append(1)
        if len(calls) <= failures:
            raise UnavailableError("endpoint down", retry_after_s=0.0)
        return ExecResult(b'{"ok": true}')

    return calls, call


async def test_idempotent_tool_is_retried_until_it_answers() -> None:
    calls, call = flaky(2)
    run = await run_with_policy(tool(idempotent=True, max_retries=2), call, ConcurrencyLimiter(), "s", sleep=_no_sleep)  # type: ignore[arg-type]
    assert (len(calls), run.attempts, run.output) == (3, 3, '{"ok": true}')


async def test_retries_stop_at_max_retries() -> None:
    calls, call = flaky(5)
    with pytest.raises(UnavailableError, match="after 3 attempt"):
        await run_with_policy(tool(idempotent=True, max_retries=2), call, ConcurrencyLimiter(), "s", sleep=_no_sleep)  # type: ignore[arg-type]
    assert len(calls) == 3


async def test_non_idempotent_tool_is_never_retried() -> None:
    calls, call = flaky(1)
    with pytest.raises(UnavailableError, match="not marked idempotent") as err:
        await run_with_policy(tool(idempotent=False), call, ConcurrencyLimiter(), "s", sleep=_no_sleep)  # type: ignore[arg-type]
    assert len(calls) == 1 and err.value.retry_after_s is not None


async def test_deadline_exceeded() -> None:
    async def call(timeout_s: float) -> ExecResult:
        await asyncio.sleep(5)
        return ExecResult(b"late")

    with pytest.raises(DeadlineExceededError):
        await run_with_policy(tool(timeout_s=0.05), call, ConcurrencyLimiter(), "s")
    with pytest.raises(DeadlineExceededError):
        await run_with_policy(tool(timeout_s=10), call, ConcurrencyLimiter(), "s", deadline_s=0.05)


async def test_concurrency_is_bounded_per_tool() -> None:
    running = 0
    peak = 0

    async def call(timeout_s: float) -> ExecResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return ExecResult(b"{}")

    limiter = ConcurrencyLimiter()
    t = tool(max_concurrency=2)
    await asyncio.gather(*(run_with_policy(t, call, limiter, "s") for _ in range(8)))
    assert peak == 2


def test_cap_output_marks_truncation_on_a_utf8_boundary() -> None:
    text, truncated, size = cap_output("é".encode() * 10, 5)
    assert truncated and size == 20
    assert text.startswith("éé") and "output truncated to 4 of 20 bytes" in text
    assert cap_output(b"short", 5) == ("short", False, 5)
    text, truncated, _ = cap_output(b"x" * 7, 5, total=-1)
    assert truncated and "more than 5" in text


def test_the_limiter_serves_calls_from_one_event_loop_after_another() -> None:
    # A semaphore belongs to the first loop that waited on it; the next loop used to get RuntimeError once calls
    # queued for a slot.
    limiter = ConcurrencyLimiter()
    t = tool(max_concurrency=2)

    async def call(timeout_s: float) -> ExecResult:
        await asyncio.sleep(0.01)
        return ExecResult(b"{}")

    async def burst() -> list[object]:
        return await asyncio.gather(*(run_with_policy(t, call, limiter, "s") for _ in range(5)), return_exceptions=True)

    for _ in range(2):
        assert [type(r).__name__ for r in asyncio.run(burst())] == ["RunResult"] * 5
