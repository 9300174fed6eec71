"""``python -m bench tools``: Invoke overhead over a direct HTTP call, and tool-search quality.

1. Overhead. A local no-op HTTP tool is called (a) directly with a keep-alive client (httpx and aiohttp;
   the baseline is whichever is faster in this run) and (b)
   through the sidecar's ``ToolService.Invoke`` over gRPC (validation + guard at STAGE_TOOL_CALL +
   CALL_TOOL gate on 8 tokens + dispatch + guard at STAGE_TOOL_RESULT + audit), in the same run, on the
   same machine. Overhead = p50(Invoke) − p50(direct); target ≤ 5 ms. Also measured with the guards
   switched off by policy, to show what the guard checks cost.
2. Search quality. A catalogue is assembled from the tool names in ../shared/data/guard (AgentHarm
   ``target_functions``, Agent-SafetyBench ``environments[].tools``; each tool described by its name's
   words and its environment). For every task (AgentHarm prompt with its "Hint: call X" sentence
   removed, Agent-SafetyBench instruction) we ask: is a needed tool in the top 5? Hybrid search is
   reported next to dense-only and lexical-only baselines computed in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import RESULTS, SHARED, embedding_precision, machine, percentiles, write_result
from runtime.config import Settings
from runtime.embedded import EmbeddedServer
from runtime.process import ServerProcess

TOKENS = [
    {"token": f"t{i}", "logprob": -1.2, "top_logprobs": [{"token": f"a{j}", "logprob": -1.2 - j} for j in range(5)]}
    for i in range(8)
]


class _NoOp(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _Server(data_dir: str) -> EmbeddedServer:
    """An in-process sidecar on its own event loop (as the tests run it)."""
    return EmbeddedServer(
        Settings(
            server={"port": 0, "metrics_port": -1, "shutdown_grace_s": 1.0},
            storage={"data_dir": str(data_dir)},
            log={"level": "WARNING", "format": "text"},
        )
    )


def bench_overhead(n: int) -> dict[str, Any]:
    import httpx
    from agentrt.v1 import tool_pb2

    from runtime.client import AgentrtClient

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoOp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/noop"
    with tempfile.TemporaryDirectory() as tmp:
        # The sidecar runs in its own process, as it does next to an app: in-process, the benchmark's
        # client and tool server would share its GIL and bill their Python work to Invoke.
        server = ServerProcess(Path(tmp))
        client = AgentrtClient(server.target)
        stub = client.tool
        schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
        # Two namespaces: guards on (the default policy) and guards off, so every variant runs in the
        # same rounds against the same server state.
        for ns in ("bench", "bench-noguard"):
            stub.Register(
                tool_pb2.RegisterToolRequest(
                    namespace=ns,
                    tool=tool_pb2.Tool(
                        name="get_weather",
                        description="Weather forecast for a city",
                        input_schema_json=json.dumps(schema),
                        http=tool_pb2.HttpToolExecutor(url=url),
                    ),
                )
            )
        stub.SetPolicy(
            tool_pb2.SetToolPolicyRequest(
                namespace="bench-noguard", policy=tool_pb2.ToolPolicy(guard_calls=False, guard_results=False)
            )
        )
        args = json.dumps({"city": "Lisbon", "days": 2})
        tokens = [
            {"token": t["token"], "logprob": t["logprob"], "top_logprobs": t["top_logprobs"]}  # type: ignore[misc]
            for t in TOKENS
        ]

        def invoke_request(ns: str, name: str = "get_weather", with_tokens: bool = True) -> Any:
            return tool_pb2.InvokeToolRequest(
                namespace=ns,
                name=name,
                arguments_json=args,
                instruction="What will the weather be in Lisbon for the next two days?",
                tokens=tokens if with_tokens else [],
            )

        requests = {
            "full": invoke_request("bench"),
            # Guards off by policy; the CALL_TOOL gate still runs on the tokens.
            "guards_off": invoke_request("bench-noguard"),
            # Without tokens the CALL_TOOL gate is skipped: validation + dispatch + audit only.
            "guards_off_no_gate": invoke_request("bench-noguard", with_tokens=False),
            # The same pipeline on the in-process echo builtin: everything but the HTTP hop to the tool.
            "echo_builtin": invoke_request("bench-noguard", name="echo", with_tokens=False),
        }
        # The first guard check of a namespace seeds its guard memory (slow, once): no deadline for it.
        last = {k: stub.Invoke(r, timeout=900) for k, r in requests.items()}

        http = httpx.Client()
        loop = asyncio.new_event_loop()
        session = loop.run_until_complete(_aiohttp_session())
        floor_req = tool_pb2.GetToolPolicyRequest(namespace="bench")

        def timed_httpx() -> float:
            t = time.perf_counter()
            http.post(url, content=args, headers={"content-type": "application/json"})
            return time.perf_counter() - t

        def timed_aiohttp() -> float:
            return loop.run_until_complete(_timed_aiohttp_post(session, url, args))

        def timed_rpc(call: Any, req: Any) -> Any:
            def run() -> float:
                t = time.perf_counter()
                call(req, timeout=60)
                return time.perf_counter() - t

            return run

        variants: dict[str, Any] = {
            "direct_httpx_sync": timed_httpx,
            "direct_aiohttp": timed_aiohttp,
            # The transport floor: a ToolService RPC that does no work (cached policy read), same client.
            "grpc_floor_getpolicy": timed_rpc(stub.GetPolicy, floor_req),
            **{k: timed_rpc(stub.Invoke, r) for k, r in requests.items()},
        }
        # Interleaved rounds: every variant sees the same drift in machine load and server state (audit
        # tables growing, background writers), so their differences are fair.
        rounds = 20
        per_round = max(1, n // rounds)
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                for _ in range(5):
                    fn()
                samples[name].extend(fn() for _ in range(per_round))
        last = {k: stub.Invoke(r) for k, r in requests.items()}
        for k, r in last.items():
            print(f"  {k}: outcome={tool_pb2.InvokeOutcome.Name(r.outcome)}")
        loop.run_until_complete(session.close())
        loop.close()
        http.close()
        client.close()
        server.stop()
    httpd.shutdown()
    direct_httpx, direct_aiohttp = samples["direct_httpx_sync"], samples["direct_aiohttp"]
    # The baseline is the faster of the two clients, so a fast client in the sidecar cannot hide
    # behind a slow one in the baseline.
    direct = min(direct_httpx, direct_aiohttp, key=lambda xs: statistics.median(xs))
    full, no_guards, bare, echo = (samples[k] for k in ("full", "guards_off", "guards_off_no_gate", "echo_builtin"))
    floor = samples["grpc_floor_getpolicy"]
    full_last = last["full"]
    d, f, g, b = percentiles(direct), percentiles(full), percentiles(no_guards), percentiles(bare)
    fl = percentiles(floor)
    ec = percentiles(echo)
    return {
        "direct_http": d,
        "direct_http_clients": {"httpx_sync": percentiles(direct_httpx), "aiohttp": percentiles(direct_aiohttp)},
        "grpc_floor_getpolicy": fl,
        "invoke_full": f,
        "invoke_guards_off": g,
        "invoke_guards_off_no_gate": b,
        "invoke_echo_builtin_guards_off_no_gate": ec,
        "overhead_p50_ms_full": round(f["p50_ms"] - d["p50_ms"], 3),
        "overhead_p50_ms_guards_off": round(g["p50_ms"] - d["p50_ms"], 3),
        "overhead_p50_ms_guards_off_no_gate": round(b["p50_ms"] - d["p50_ms"], 3),
        # What Invoke adds beyond one gRPC round trip and the tool call itself.
        "pipeline_p50_ms_beyond_transport_no_guards_no_gate": round(b["p50_ms"] - d["p50_ms"] - fl["p50_ms"], 3),
        "target_overhead_p50_ms": 5.0,
        "sidecar": "agentrt serve in its own process (SQLite, bundled MiniLM)",
        "guards_applied": full_last.HasField("call_verdict") and full_last.HasField("result_verdict"),
        "gate_applied": full_last.HasField("gate"),
        "n": len(full),
        "method": "interleaved: 20 rounds, each variant 5 warm-up calls + n/20 timed calls per round",
    }


async def _aiohttp_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession()


async def _timed_aiohttp_post(session: Any, url: str, body: str) -> float:
    """One POST on a keep-alive session, timed inside the loop (the loop's own start-up is not billed)."""
    t = time.perf_counter()
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        await resp.read()
    return time.perf_counter() - t


async def _direct_aiohttp(url: str, body: str, n: int) -> list[float]:
    """``n`` POSTs of ``body`` with a keep-alive aiohttp session (the client the sidecar's executor uses)."""
    async with await _aiohttp_session() as session:
        timings = [await _timed_aiohttp_post(session, url, body) for _ in range(n + 20)]
    return timings[20:]  # the first 20 open and warm the connection


def bench_in_process(n: int) -> dict[str, Any]:
    """The pipeline without gRPC: ToolInvoker (no guards, no gate) vs the same aiohttp call made directly."""
    from core.embedding import create_embedder
    from runtime.tool_invoke import InvokeRequest, ToolInvoker
    from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition
    from tools.registry import ToolRegistry
    from tools.search import ToolSearch
    from tools.store import InMemoryToolStore

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoOp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/noop"
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}

    async def run() -> tuple[list[float], list[float]]:
        reg = ToolRegistry(InMemoryToolStore(), ToolSearch(create_embedder("hashing")))
        await reg.register("b/n", ToolDefinition("w", "", schema, ExecutorSpec(ExecutorKind.HTTP, url=url)))
        invoker = ToolInvoker(reg, reg._offload)
        req = InvokeRequest("b/n", "w", '{"city": "Lisbon", "days": 2}')
        for _ in range(30):
            await invoker.invoke(req)
        inv = []
        for _ in range(n):
            t = time.perf_counter()
            await invoker.invoke(req)
            inv.append(time.perf_counter() - t)
        direct = await _direct_aiohttp(url, '{"city": "Lisbon", "days": 2}', n)
        await reg.aclose()
        return inv, direct

    inv, direct = asyncio.run(run())
    httpd.shutdown()
    i, d = percentiles(inv), percentiles(direct)
    return {"invoker": i, "direct_async_http": d, "overhead_p50_ms": round(i["p50_ms"] - d["p50_ms"], 3)}


def _words(name: str) -> str:
    return re.sub(r"[_.\-]+", " ", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)).lower()


_HINT = re.compile(r"\s*Hint:.*$", re.S)


def load_tasks(limit: int | None) -> tuple[dict[str, str], list[tuple[str, set[str], str]]]:
    """(catalogue name -> description, [(task text, needed tool names, source)])."""
    catalogue: dict[str, str] = {}
    tasks: list[tuple[str, set[str], str]] = []
    for fname in ("harmful_behaviors_validation.json", "benign_behaviors_validation.json"):
        for b in json.loads((SHARED / "data/guard/agentharm" / fname).read_text())["behaviors"]:
            needed = set(b.get("target_functions") or [])
            for t in needed:
                catalogue.setdefault(t, f"{_words(t)}.")
            if needed:
                tasks.append((_HINT.sub("", b["prompt"]).strip(), needed, "agentharm"))
    asb = json.loads((SHARED / "data/guard/agent_safetybench/released_data.json").read_text())
    asb_tasks = []
    for case in asb:
        needed = set()
        for env in case.get("environments") or []:
            for t in env.get("tools") or []:
                desc = f"{_words(t)}. {_words(env.get('name', ''))} tool."
                # The same name in two environments is one catalogue entry described by the first.
                catalogue.setdefault(t, desc)
                needed.add(t)
        if needed:
            asb_tasks.append((case["instruction"], needed, "agent_safetybench"))
    if limit is not None:
        asb_tasks = asb_tasks[:limit]
    return catalogue, tasks + asb_tasks


def bench_search(limit: int | None, top_k: int = 5) -> dict[str, Any]:
    from core.embedding import create_embedder
    from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition
    from tools.search import ToolSearch

    catalogue, tasks = load_tasks(limit)
    tools = [
        ToolDefinition(name, desc, {"type": "object"}, ExecutorSpec(ExecutorKind.BUILTIN, builtin="x"))
        for name, desc in sorted(catalogue.items())
    ]
    embedder = create_embedder(precision=embedding_precision())
    search = ToolSearch(embedder)
    t0 = time.perf_counter()
    search.search("bench", "warm up", top_k, tools)
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors = embedder.embed([text for text, _, _ in tasks])
    embed_s = time.perf_counter() - t0
    results: dict[str, Any] = {}
    entropies: dict[str, list[float]] = {"hit": [], "miss": []}
    for label, weight in (("hybrid", search.dense_weight), ("dense_only", 1.0), ("lexical_only", 0.0)):
        by_source: dict[str, list[int]] = {}
        latencies = []
        for (text, needed, source), vec in zip(tasks, vectors, strict=True):
            t = time.perf_counter()
            r = search.search("bench", text, top_k, tools, dense_weight=weight, query_vector=vec)
            latencies.append(time.perf_counter() - t)
            hit = int(any(h.tool.name in needed for h in r.hits))
            by_source.setdefault(source, []).append(hit)
            if label == "hybrid":
                entropies["hit" if hit else "miss"].append(r.entropy)
        all_hits = [h for v in by_source.values() for h in v]
        results[label] = {
            f"hit_at_{top_k}": round(sum(all_hits) / len(all_hits), 4),
            **{f"hit_at_{top_k}_{s}": round(sum(v) / len(v), 4) for s, v in by_source.items()},
            # Ranking only: the query vectors were embedded in one batch beforehand.
            "rank_latency": percentiles(latencies),
        }
    return {
        "catalogue_tools": len(tools),
        "tasks": len(tasks),
        "tasks_by_source": {s: sum(1 for t in tasks if t[2] == s) for s in ("agentharm", "agent_safetybench")},
        "index_build_s": round(index_s, 2),
        "query_embedding_s_per_query": round(embed_s / max(1, len(tasks)), 4),
        "dense_weight": search.dense_weight,
        "results": results,
        "mean_entropy_when_hit": round(statistics.fmean(entropies["hit"]), 4) if entropies["hit"] else None,
        "mean_entropy_when_miss": round(statistics.fmean(entropies["miss"]), 4) if entropies["miss"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench tools", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="timed calls per variant")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N Agent-SafetyBench tasks")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args(argv)
    # Other work on the machine inflates every latency here; the load average says how much there was.
    payload: dict[str, Any] = {"machine": {**machine(), "loadavg_at_start": list(os.getloadavg())}}
    previous = RESULTS / "tools.json"
    if previous.exists() and (args.skip_overhead or args.skip_search):
        # A partial run keeps the other section of the last full or partial run, with its own date.
        old = json.loads(previous.read_text())
        for section in ("overhead", "search"):
            if section in old:
                payload[section] = {
                    **old[section],
                    "measured_at": old[section].get("measured_at", old.get("measured_at")),
                }
    if not args.skip_overhead:
        print("Invoke overhead vs a direct HTTP call (same run):", flush=True)
        o = bench_overhead(args.n)
        o["in_process"] = bench_in_process(args.n)
        o["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        payload["overhead"] = o
        for client_name, p in o["direct_http_clients"].items():
            print(f"  direct HTTP ({client_name:10s}) p50 {p['p50_ms']:.3f} ms  p90 {p['p90_ms']:.3f} ms")
        print(f"  baseline: the faster direct client, p50 {o['direct_http']['p50_ms']:.3f} ms")
        ip = o["in_process"]
        print(
            f"  in process, no gRPC: ToolInvoker p50 {ip['invoker']['p50_ms']:.3f} ms vs async HTTP "
            f"{ip['direct_async_http']['p50_ms']:.3f} ms -> pipeline overhead {ip['overhead_p50_ms']:.3f} ms"
        )
        print(f"  gRPC floor (GetPolicy) p50 {o['grpc_floor_getpolicy']['p50_ms']:.3f} ms")
        print(
            f"  Invoke, full pipeline  p50 {o['invoke_full']['p50_ms']:.3f} ms  p90 {o['invoke_full']['p90_ms']:.3f} ms"
        )
        print(f"  Invoke, guards off     p50 {o['invoke_guards_off']['p50_ms']:.3f} ms")
        print(f"  Invoke, no guards/gate p50 {o['invoke_guards_off_no_gate']['p50_ms']:.3f} ms")
        print(
            f"  Invoke echo builtin, no guards/gate p50 {o['invoke_echo_builtin_guards_off_no_gate']['p50_ms']:.3f} ms"
        )
        print(
            f"  overhead p50: full {o['overhead_p50_ms_full']:.3f} ms, "
            f"guards off {o['overhead_p50_ms_guards_off']:.3f} ms, "
            f"no guards/gate {o['overhead_p50_ms_guards_off_no_gate']:.3f} ms "
            f"(target <= 5 ms); guards applied: {o['guards_applied']}; gate applied: {o['gate_applied']}"
        )
    if not args.skip_search:
        print("Tool search, is a needed tool in the top 5:", flush=True)
        s = bench_search(args.limit)
        s["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        payload["search"] = s
        print(f"  catalogue {s['catalogue_tools']} tools, {s['tasks']} tasks {s['tasks_by_source']}")
        for label, r in s["results"].items():
            parts = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("hit_at"))
            print(f"  {label:13s} {parts}; ranking p50 {r['rank_latency']['p50_ms']:.2f} ms")
        print(
            f"  mean normalised entropy of the hits: {s['mean_entropy_when_hit']} when hit, "
            f"{s['mean_entropy_when_miss']} when missed"
        )
    payload["machine"]["loadavg_at_end"] = list(os.getloadavg())
    path = write_result("tools", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
