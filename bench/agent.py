"""RunTurn overhead excluding LLM time, for a turn with retrieval, one tool call and three candidates.

Setup: an in-process sidecar (SQLite in a temp dir, the real MiniLM embedder, the real guard, gate,
memory, selection and tool Invoke components) whose memory holds the first sessions of LoCoMo conv-26;
an OpenAI-compatible stub LLM (tests/agent/openai_stub.py) in a separate process that answers at once.

Each measured turn asks a LoCoMo question, with ``num_candidates=3``; the stub's markers in the turn's system
prompt make every answer ``[unsure]`` (flat top-5 logprobs, so the real retrieval gate fires) and make the LLM
call the builtin ``echo`` tool once. (Runs before 2026-11-24 put the markers in the user's message, which the
guard then checked as a second sentence; that form is still measured, as ``full_markers_in_message``.) The graph
then runs: input guard -> LLM -> retrieval gate -> memory search -> LLM -> tool gate -> tool guard ->
echo through the Invoke pipeline (guarded) -> LLM -> 2 more candidate LLM calls (parallel) -> selection
-> output guard -> memory write: 5 LLM calls per turn.

Figures (milliseconds, over ``--turns`` turns after ``--warmup``):
- ``turn``: RunTurn wall time seen by a gRPC client, all events streamed. The client runs in a process of its own
  (``bench/_agent_client.py``), as an app's would; ``--client-in-process`` calls from this process instead, where
  the client's work shares the sidecar's interpreter lock (how runs before 2026-11-24 05:45 UTC measured);
- ``llm``: time the server spent waiting on the LLM endpoint in that turn (union of call intervals);
- ``overhead`` = turn - llm: what the sidecar adds (target p50 <= 30 ms);
- ``sidecar_cpu_per_turn``: CPU time this process used during the turn (all threads; the client's too with
  ``--client-in-process``), robust to other load;
- baseline, same run: the same 5 LLM calls made directly by a client with aiohttp, as the sidecar's (what the LLM part
  costs without the sidecar), and per-stage p50 from the StageEvents.

    python -m bench agent [--turns 40] [--warmup 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from agentrt.v1 import agent_pb2

from bench.common import SHARED, machine, percentiles, write_result
from runtime.config import Settings
from runtime.embedded import EmbeddedServer

REPO = Path(__file__).resolve().parents[1]
NS = "bench-agent"


def _cpu() -> float:
    """CPU seconds of this process (the sidecar and the bench's gRPC client; the stub LLM runs elsewhere).
    Much less sensitive than wall time to other processes sharing the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _locomo_turns(max_sessions: int) -> tuple[list[tuple[str, list[dict[str, str]]]], list[str]]:
    data = json.loads((SHARED / "data/locomo/locomo10_dev.json").read_text())
    conv = data[0]["conversation"]
    sessions = []
    for i in range(1, max_sessions + 1):
        turns = conv.get(f"session_{i}")
        if not turns:
            break
        msgs = [{"id": t["dia_id"], "speaker": t["speaker"], "text": t["text"]} for t in turns]
        sessions.append((f"s{i}", msgs))
    questions = [str(q["question"]) for q in data[0]["qa"] if q.get("category") in (1, 4)]
    return sessions, questions


def _Server(data_dir: str) -> EmbeddedServer:
    """An in-process sidecar on its own event loop (as the tests run it)."""
    return EmbeddedServer(Settings(
        server={"port": 0, "metrics_port": -1, "shutdown_grace_s": 1.0},
        storage={"data_dir": str(data_dir)},
        log={"level": "WARNING", "format": "text"},
    ))


def _direct_baseline(base_url: str, message: str, n: int) -> list[float]:
    """The same five LLM calls a turn makes (two sequential agent calls, a tool round, two parallel
    candidates), made directly by a client."""
    echo = {"name": "echo", "description": "echo", "parameters": {"type": "object"}}
    tools = [{"type": "function", "function": echo}]

    async def run() -> list[float]:
        out = []
        # aiohttp, as the sidecar's own LLM client (the faster of the two on loopback).
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
            async def call(messages: list[dict[str, Any]], temperature: float = 0.0, with_tools: bool = True) -> Any:
                body = {"model": "default", "messages": messages, "temperature": temperature, "logprobs": True,
                        "top_logprobs": 5, **({"tools": tools} if with_tools else {})}
                async with client.post(f"{base_url}/chat/completions", json=body) as resp:
                    return await resp.json()

            for _ in range(n):
                t0 = time.perf_counter()
                base = [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": message}]
                await call(base)
                first = await call([{**base[0], "content": base[0]["content"] + "\n\nMemories:\n- x"}, base[1]])
                call_msg = first["choices"][0]["message"]
                after = [*base, call_msg, {"role": "tool", "tool_call_id": "c", "content": "{}"}]
                await call(after)
                await asyncio.gather(call(after, 0.3, False), call(after, 0.6, False))
                out.append(time.perf_counter() - t0)
        return out

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench agent", description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=5, help="LoCoMo conv-26 sessions written to memory first")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure the three setups this many times, interleaved; figures pool every repeat's turns")
    ap.add_argument("--llm-delay-ms", type=float, default=0.0,
                    help="the stub waits this long before each answer, as a real LLM would (default: answers at once)")
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="the client waits this long between turns, as an app's user would (default: back to back, so "
                         "the background work each turn's memory write queues competes with the next turn)")
    ap.add_argument("--client-in-process", action="store_true",
                    help="call RunTurn from this process, beside the sidecar (the runs before 2026-11-24 05:45 UTC); "
                         "default: from a client process of its own, as an app would")
    ap.add_argument("--parallel-input-guard", action="store_true",
                    help="turn policy parallel_input_guard=true (the first LLM call starts with the input guard)")
    ap.add_argument("--no-speculative-retrieval", action="store_true",
                    help="turn policy speculative_retrieval=false (search only after the gate fired)")
    args = ap.parse_args(argv)

    stub = subprocess.Popen([sys.executable, "-m", "tests.agent.openai_stub"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert stub.stdout is not None
    base_url = stub.stdout.readline().strip()
    tmp = tempfile.TemporaryDirectory(prefix="bench-agent-")
    srv = _Server(tmp.name)
    try:
        from runtime.client import AgentrtClient

        client = AgentrtClient(f"127.0.0.1:{srv.port}", timeout=60)
        remote = None if args.client_in_process else _ClientProcess(f"127.0.0.1:{srv.port}")
        sessions, questions = _locomo_turns(args.sessions)
        n_messages = 0
        for sid, msgs in sessions:
            client.write(NS, sid, msgs)
            n_messages += len(msgs)
        srv.call(_flush(srv))
        runner = srv.server.rt.agent.runner
        rt = srv.server.rt

        def llm_intervals() -> list[tuple[float, float]]:
            # tuple(deque) copies in one step (a generator over it could see the server's thread append).
            return [iv for c in list(runner._clients.values()) for iv in tuple(c.intervals)]

        policy = agent_pb2.TurnPolicy(llm_base_url=base_url, tools=["echo"], num_candidates=3)
        if args.no_speculative_retrieval:
            policy.speculative_retrieval = False
        if args.parallel_input_guard:
            policy.parallel_input_guard = True
        delay = f" [slow:{args.llm_delay_ms / 1000:g}]" if args.llm_delay_ms > 0 else ""

        def measure(label: str, acc: dict[str, Any], markers_in_message: bool = False) -> float:
            """Turns until ``--turns`` of them took the full path (retrieval, one tool call, 3 candidates,
            completed), added to ``acc``; turns the guard blocked or paused are counted and left out of the
            figures. Returns this measurement's overhead p50 (ms)."""
            turn_s: list[float] = acc["turn"]
            llm_s: list[float] = acc["llm"]
            cpu_s: list[float] = acc["cpu"]
            stage_s: dict[str, list[float]] = acc["stages"]
            counts: dict[str, int] = acc["counts"]
            first = len(turn_s)
            # Every measurement asks the same questions, and the tool calls and answers repeat with them: without
            # this, a later measurement would find their vectors in the embedder's cache and skip model passes
            # the first one paid for.
            clear = getattr(rt.embedder, "clear", None)
            if clear is not None:
                clear()
            i = 0
            while len(turn_s) - first < args.turns and i < 4 * (args.turns + args.warmup):
                q = questions[i % len(questions)]
                steer = f'[unsure] [call:echo {{"q": {json.dumps(q)}}}]{delay}'
                turn_policy = agent_pb2.TurnPolicy()
                turn_policy.CopyFrom(policy)
                if markers_in_message:
                    # The form of the runs before 2026-11-24 03:10 UTC: the user's message carries the stub's
                    # markers, so the guard sees a second sentence and the query differs from it.
                    msg = f"[unsure] {q} [call:echo {{\"q\": {json.dumps(q)}}}]"
                    if delay:
                        turn_policy.system_prompt = f"You are a helpful assistant.{delay}"
                else:
                    # The app's user asks the question; the stub's steering rides in the system prompt.
                    msg = q
                    turn_policy.system_prompt = f"You are a helpful assistant. {steer}"
                request = agent_pb2.RunTurnRequest(namespace=NS, thread_id=f"{label}-{i}", message=msg,
                                                   policy=turn_policy)
                if args.think_ms > 0:
                    time.sleep(args.think_ms / 1000)
                c0 = _cpu()
                if remote is None:
                    t0 = time.perf_counter()
                    events = list(client.agent.RunTurn(request, timeout=60))
                    elapsed = time.perf_counter() - t0
                else:
                    t0, elapsed, events = remote.run(request)
                cpu = _cpu() - c0
                i += 1
                if i <= args.warmup:
                    continue
                kinds = [e.WhichOneof("event") for e in events]
                status = agent_pb2.TurnStatus.Name(events[-1].result.status)
                full = ("retrieval" in kinds and kinds.count("tool_call") == 1 and kinds.count("candidate") == 3
                        and status == "TURN_STATUS_COMPLETED")
                counts[status] += 1
                if not full:
                    counts["left_out"] += 1
                    continue
                # The turn's LLM calls by time window, not by position: each client keeps only its last 4,096
                # intervals (a bounded deque), so an index taken before the turn stops pointing at its calls.
                # perf_counter is the system's monotonic clock, shared with the client process.
                ivs = [iv for iv in llm_intervals() if t0 - 1e-3 <= iv[0] <= t0 + elapsed]
                turn_s.append(elapsed)
                llm_s.append(_union(ivs))
                cpu_s.append(cpu)
                counts["llm_calls"] += len(ivs)
                for e in events:
                    if e.WhichOneof("event") == "stage" and e.stage.status == agent_pb2.STAGE_STATUS_FINISHED:
                        stage_s[e.stage.name].append(e.stage.elapsed_ms / 1000)
            mine = [t - lm for t, lm in zip(turn_s[first:], llm_s[first:], strict=True)]
            return float(percentiles(mine)["p50_ms"])

        def summary(acc: dict[str, Any]) -> dict[str, Any]:
            turn_s, llm_s, counts = acc["turn"], acc["llm"], acc["counts"]
            overhead = [t - lm for t, lm in zip(turn_s, llm_s, strict=True)]
            repeats = acc["p50s"]
            return {
                "overhead": percentiles(overhead), "turn": percentiles(turn_s), "llm_in_turn": percentiles(llm_s),
                "sidecar_cpu_per_turn": percentiles(acc["cpu"]),
                "stages_p50_ms": {k: percentiles(v)["p50_ms"] for k, v in acc["stages"].items()},
                "counts": dict(counts), "llm_calls_per_turn": round(counts["llm_calls"] / max(1, len(turn_s)), 2),
                "overhead_p50_per_repeat_ms": [round(x, 3) for x in repeats],
                "overhead_median_of_repeat_p50s_ms": round(float(np.median(repeats)), 3),
            }

        def new_acc() -> dict[str, Any]:
            return {"turn": [], "llm": [], "cpu": [], "stages": defaultdict(list), "counts": defaultdict(int),
                    "p50s": []}

        # The same turns with the built-in defaults instead of the guard, gate, selection and memory engines
        # (tools still go through the Invoke pipeline): what LangGraph, checkpointing and gRPC cost alone.
        from runtime.agent.ports import AllowAllGuard, ConfidenceSelector, DefaultGates, MemoryHitView, NoMemory

        class _OneMemory(NoMemory):
            async def search(self, query: str, top_k: int, token_budget: int) -> Any:
                return [MemoryHitView("m", "a memory", 1.0, "turn")], {}

            async def write(self, session_id: str, messages: Any) -> list[str]:
                return [m[0] for m in messages]

        defaults = {"guard": lambda rt, scope: AllowAllGuard(), "gates": lambda rt, scope: DefaultGates(),
                    "selector": lambda rt, scope: ConfidenceSelector(), "memory": lambda rt, scope: _OneMemory()}
        accs = {"full": new_acc(), "markers": new_acc(), "graph": new_acc()}
        # Repeats interleave the three measurements, so a change of the VM's speed (it swings by a third from one
        # minute to the next) falls on all of them alike.
        for r in range(args.repeats):
            accs["full"]["p50s"].append(measure(f"full{r}", accs["full"]))
            # Each full turn leaves memory consolidation queued (it wrote to memory); let it finish so it does
            # not run during, and bill its CPU to, the next measurement.
            srv.call(_flush(srv))
            accs["markers"]["p50s"].append(measure(f"markers{r}", accs["markers"], markers_in_message=True))
            srv.call(_flush(srv))
            rt.extras["agent_ports"] = defaults
            accs["graph"]["p50s"].append(measure(f"graph{r}", accs["graph"]))
            rt.extras.pop("agent_ports")
        full, markers, graph_only = (summary(accs[k]) for k in ("full", "markers", "graph"))
        baseline = _direct_baseline(base_url, f'[unsure] {questions[0]} [call:echo {{"q": "x"}}]{delay}', args.turns)
        client.close()
        if remote is not None:
            remote.close()
    finally:
        srv.stop()
        stub.terminate()
        stub.wait(10)
        tmp.cleanup()

    res = {
        "setup": {"turns": args.turns, "warmup": args.warmup, "repeats": args.repeats, "memory_messages": n_messages,
                  "llm_delay_ms": args.llm_delay_ms, "think_ms": args.think_ms,
                  "speculative_retrieval": not args.no_speculative_retrieval,
                  "parallel_input_guard": args.parallel_input_guard,
                  "candidates": 3, "tool_calls_per_turn": 1, "llm": "tests/agent/openai_stub.py (separate process)",
                  "client": "this process (beside the sidecar)" if args.client_in_process
                  else "bench/_agent_client.py (separate process)"},
        "full": full,
        "full_markers_in_message": markers,
        "graph_only_default_components": graph_only,
        "baseline_direct_llm_calls": percentiles(baseline),
        "target_overhead_p50_ms": 30.0,
        # Other processes share these cores; a high load inflates every figure.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    m = machine()
    print(f"machine: {m['cpu_count']} CPUs, {m['platform']}, load average {res['load_average_1m_at_end']}")
    print(f"memory: {n_messages} LoCoMo messages; turns with retrieval + 1 tool call + 3 candidates "
          f"({full['llm_calls_per_turn']} LLM calls/turn)")
    for label, r in (("real components", full), ("real components, markers in the message", markers),
                     ("built-in defaults", graph_only)):
        print(f"{label}: {r['counts']}")
        for name in ("overhead", "turn", "llm_in_turn", "sidecar_cpu_per_turn"):
            p = r[name]
            print(f"  {name:>12}: p50 {p['p50_ms']:8.2f} ms  p90 {p['p90_ms']:8.2f} ms  mean {p['mean_ms']:8.2f} ms")
        print("  stage p50 (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_p50_ms"].items()))
    b = res["baseline_direct_llm_calls"]
    print(f"baseline, the same 5 LLM calls made directly: p50 {b['p50_ms']:.2f} ms")
    print(f"RunTurn overhead p50: {full['overhead']['p50_ms']:.2f} ms with the real components, "
          f"{graph_only['overhead']['p50_ms']:.2f} ms with built-in defaults (target <= 30 ms)")
    if args.repeats > 1:
        for label, r in (("real components", full), ("markers in the message", markers),
                         ("built-in defaults", graph_only)):
            print(f"  {label}: p50 per repeat {r['overhead_p50_per_repeat_ms']}, "
                  f"median {r['overhead_median_of_repeat_p50s_ms']:.2f} ms")
    name = "agent" + (f"_llm{args.llm_delay_ms:g}ms" if args.llm_delay_ms > 0 else "")
    name += f"_think{args.think_ms:g}ms" if args.think_ms > 0 else ""
    name += "_parallel_input_guard" if args.parallel_input_guard else ""
    name += "_client_in_process" if args.client_in_process else ""
    path = write_result(name + ("_no_speculation" if args.no_speculative_retrieval else ""), res)
    print(f"wrote {path}")
    return 0


class _ClientProcess:
    """``bench/_agent_client.py``: runs each RunTurn in its own process and reports the call's bounds."""

    def __init__(self, target: str):
        self._proc = subprocess.Popen([sys.executable, "-m", "bench._agent_client", target], cwd=REPO,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, request: agent_pb2.RunTurnRequest) -> tuple[float, float, list[agent_pb2.TurnEvent]]:
        """(start, wall seconds, events) of one RunTurn; start is on this host's perf_counter clock."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(base64.b64encode(request.SerializeToString()).decode() + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the bench's client process ended")
        out = json.loads(line)
        events = [agent_pb2.TurnEvent.FromString(base64.b64decode(e)) for e in out["events"]]
        return out["t0"], out["t1"] - out["t0"], events

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(30)


async def _flush(srv: _Server) -> None:
    rt = srv.server.rt
    if rt.memory is not None and hasattr(rt.memory, "flush"):
        await rt.offload(rt.memory.flush, 120.0)


if __name__ == "__main__":
    sys.exit(main())
