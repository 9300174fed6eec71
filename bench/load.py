"""Load: concurrent clients on loopback drive a mixed workload against a real ``agentrt serve`` process.

    .venv/bin/python -m bench load [--duration 4] [--max-concurrency 128] [--embedder minilm|hashing]
                                    [--backend sqlite|postgres]

For each concurrency level (1, 2, 4, … until throughput stops rising or ``--max-concurrency``) it runs an
empty-RPC baseline (``grpc.health.v1.Health/Check``) and then the mixed workload (Write, Search, Check,
Decide, Select, Invoke — whichever RPCs the server implements; Invoke calls a no-op HTTP tool on loopback
registered through ToolService) and reports throughput and p50/p99 per RPC. An overload phase restarts the
server with a low ``max_concurrent_rpcs`` and shows calls shed with RESOURCE_EXHAUSTED instead of queueing.
Server RSS is sampled throughout; on Postgres also the database's CPU time per call and its connection
count (what says when one Postgres is no longer enough). Bounded: every phase stops after ``--duration``
seconds, clients are capped by ``--max-concurrency``, the ramp stops once two levels in a row add less than
5% throughput. Results: ``bench/results/load.json`` (``load_postgres.json`` with ``--backend postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from agentrt.v1 import (
    common_pb2,
    gate_pb2,
    gate_pb2_grpc,
    guard_pb2,
    guard_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    select_pb2,
    select_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import percentiles, write_result
from runtime.process import ServerProcess as SharedServerProcess

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "load"
_TEXT = ("alice moved to lisbon last spring and started a ceramics class while bob kept his job in berlin "
         "they talk every sunday about books hiking plans and the garden project")
WORDS = tuple(_TEXT.split(" "))
Call = Callable[[float], Awaitable[Any]]


# ------------------------------------------------------------------------------------------ server

class ServerProcess(SharedServerProcess):
    """``agentrt serve`` as a subprocess on a free port, with its RSS sampled in a thread."""

    def __init__(self, data_dir: Path, env: dict[str, str], database_url: str | None):
        super().__init__(data_dir, database_url=database_url, env={"AGENTRT_LOG__LEVEL": "WARNING", **env},
                         log_path=data_dir / "server.log")
        self.rss_samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.rss_samples.append((time.monotonic(), self.rss_bytes()))

    def max_rss_between(self, start: float, end: float) -> int:
        return max((r for t, r in self.rss_samples if start <= t <= end), default=self.rss_bytes())

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        super().stop(timeout)


class _NoopTool(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _reply
    do_POST = _reply

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_noop_tool() -> tuple[ThreadingHTTPServer, str]:
    """A local HTTP endpoint answering ``{"ok": true}`` to anything: the tool Invoke calls."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoopTool)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/noop"


# ------------------------------------------------------------------------------------------ workload

def _sentence(rng: random.Random, n: int = 16) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _tokens(rng: random.Random, n: int = 24) -> list[common_pb2.TokenLogprob]:
    out = []
    for _ in range(n):
        top = sorted((rng.uniform(-6, 0) for _ in range(5)), reverse=True)
        out.append(common_pb2.TokenLogprob(
            token=rng.choice(WORDS), logprob=top[0],
            top_logprobs=[common_pb2.TopLogprob(token=rng.choice(WORDS), logprob=lp) for lp in top]))
    return out


def workload(channel: grpc.aio.Channel) -> dict[str, Call]:
    """The mixed workload's calls, by RPC name; each takes a timeout and makes one call."""
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    guard = guard_pb2_grpc.GuardServiceStub(channel)
    gate = gate_pb2_grpc.GateServiceStub(channel)
    select = select_pb2_grpc.SelectServiceStub(channel)
    tool = tool_pb2_grpc.ToolServiceStub(channel)
    rng = random.Random(7)
    counter = iter(range(10**12))

    def write(timeout: float) -> Awaitable[Any]:
        n = next(counter)
        msg = memory_pb2.Message(id=f"m{n}-{uuid.uuid4().hex[:6]}", speaker=rng.choice(["alice", "bob"]),
                                 text=_sentence(rng))
        return memory.Write(memory_pb2.WriteRequest(namespace=NAMESPACE, session_id=f"s{n // 20}",
                                                    messages=[msg]), timeout=timeout)

    def search(timeout: float) -> Awaitable[Any]:
        return memory.Search(memory_pb2.SearchRequest(namespace=NAMESPACE, query=_sentence(rng, 6), top_k=5),
                             timeout=timeout)

    def check(timeout: float) -> Awaitable[Any]:
        return guard.Check(guard_pb2.CheckRequest(namespace=NAMESPACE, stage=common_pb2.STAGE_INPUT,
                                                  text=_sentence(rng, 12)), timeout=timeout)

    def decide(timeout: float) -> Awaitable[Any]:
        return gate.Decide(gate_pb2.DecideRequest(namespace=NAMESPACE, gate=common_pb2.GATE_RETRIEVE,
                                                  tokens=_tokens(rng)), timeout=timeout)

    def select_(timeout: float) -> Awaitable[Any]:
        cands = [select_pb2.Candidate(agent_id=f"a{i}", answer=_sentence(rng, 8), tokens=_tokens(rng, 12))
                 for i in range(3)]
        return select.Select(select_pb2.SelectRequest(namespace=NAMESPACE, candidates=cands), timeout=timeout)

    def invoke(timeout: float) -> Awaitable[Any]:
        return tool.Invoke(tool_pb2.InvokeToolRequest(namespace=NAMESPACE, name="noop", arguments_json="{}"),
                           timeout=timeout)

    return {"Write": write, "Search": search, "Check": check, "Decide": decide, "Select": select_,
            "Invoke": invoke}


async def register_tool(channel: grpc.aio.Channel, url: str) -> str | None:
    """Register the no-op HTTP tool; returns why not where ToolService cannot."""
    stub = tool_pb2_grpc.ToolServiceStub(channel)
    tool = tool_pb2.Tool(name="noop", description="does nothing (load benchmark)",
                         input_schema_json='{"type": "object"}',
                         http=tool_pb2.HttpToolExecutor(url=url, method="POST"))
    try:
        await stub.Register(tool_pb2.RegisterToolRequest(namespace=NAMESPACE, tool=tool), timeout=30)
        return None
    except grpc.aio.AioRpcError as err:
        return f"Register: {err.code().name}: {err.details()}"


async def probe(calls: dict[str, Call]) -> tuple[dict[str, Call], dict[str, str]]:
    """Keep the RPCs that answer OK once; the others are reported with the status they got."""
    kept, dropped = {}, {}
    for name, fn in calls.items():
        try:
            await fn(60.0)
            kept[name] = fn
        except grpc.aio.AioRpcError as err:
            dropped[name] = f"{err.code().name}: {(err.details() or '')[:200]}"
    return kept, dropped


async def drive(calls: dict[str, Call], concurrency: int, duration: float,
                timeout: float = 10.0) -> dict[str, Any]:
    """``concurrency`` clients calling round-robin over ``calls`` for ``duration`` seconds."""
    loop = asyncio.get_running_loop()
    names = list(calls)
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    codes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    shed_latencies: list[float] = []
    end = loop.time() + duration

    async def client(i: int) -> None:
        k = i
        while loop.time() < end:
            name = names[k % len(names)]
            k += 1
            started = time.perf_counter()
            try:
                await calls[name](timeout)
                latencies[name].append(time.perf_counter() - started)
                codes[name]["OK"] += 1
            except grpc.aio.AioRpcError as err:
                codes[name][err.code().name] += 1
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    shed_latencies.append(time.perf_counter() - started)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    per_rpc = {}
    for name in names:
        per_rpc[name] = {**percentiles(latencies[name]), "ok_per_s": round(codes[name]["OK"] / elapsed, 2),
                         "codes": dict(codes[name])}
    ok = sum(c["OK"] for c in codes.values())
    total = sum(sum(c.values()) for c in codes.values())
    return {
        "concurrency": concurrency, "elapsed_s": round(elapsed, 3), "calls": total, "ok": ok,
        "throughput_ok_per_s": round(ok / elapsed, 2),
        "shed_fraction": round(sum(c["RESOURCE_EXHAUSTED"] for c in codes.values()) / max(total, 1), 4),
        "shed_latency": percentiles(shed_latencies) if shed_latencies else None,
        "all": percentiles([x for v in latencies.values() for x in v]),
        "rpcs": per_rpc,
    }


def health_call(channel: grpc.aio.Channel) -> dict[str, Call]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {"Health.Check": lambda timeout: stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)}


# ------------------------------------------------------------------------------------------ phases

async def ramp(server: ServerProcess, tool_url: str, levels: list[int], duration: float,
               pg: PostgresProbe | None = None) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        not_registered = await register_tool(channel, tool_url)
        calls, dropped = await probe(workload(channel))
        if not_registered:
            dropped.setdefault("Invoke", not_registered)
        print(f"mixed workload: {', '.join(calls) or 'nothing'}"
              + (f"; left out: {dropped}" if dropped else ""))
        rows = []
        best, flat = 0.0, 0
        for c in levels:
            t0 = time.monotonic()
            base = await drive(health_call(channel), c, duration)
            pg_cpu0 = PostgresProbe.cpu_seconds() if pg else 0.0
            mixed = await drive(calls, c, duration) if calls else None
            rss = server.max_rss_between(t0, time.monotonic())
            row = {"concurrency": c, "baseline": base, "mixed": mixed, "server_max_rss_mb": round(rss / 2**20, 1),
                   # Other work on the machine skews every figure; the 1-minute load average says how much.
                   "loadavg_1m": round(os.getloadavg()[0], 2)}
            if pg and mixed:
                cpu = PostgresProbe.cpu_seconds() - pg_cpu0
                row["postgres"] = {
                    "cpu_s": round(cpu, 3),
                    "cpu_share_of_one_core": round(cpu / mixed["elapsed_s"], 3),
                    "cpu_ms_per_ok_call": round(1000 * cpu / max(mixed["ok"], 1), 3),
                    "max_connections_so_far": pg.max_connections,
                }
            rows.append(row)
            tput = mixed["throughput_ok_per_s"] if mixed else base["throughput_ok_per_s"]
            _print_level(row)
            if tput > best * 1.05:
                best, flat = tput, 0
            else:
                flat += 1
                if flat >= 2:  # saturated: two levels in a row without 5% more throughput
                    break
        return {"levels": rows, "workload": list(calls), "left_out": dropped, "saturated_at": rows[-1]["concurrency"]
                if flat >= 2 else None, "best_throughput_ok_per_s": best}


async def overload(server: ServerProcess, tool_url: str, concurrency: int, duration: float,
                   cap: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        await register_tool(channel, tool_url)
        calls, _ = await probe(workload(channel))
        t0 = time.monotonic()
        result = await drive(calls or health_call(channel), concurrency, duration)
        rss = server.max_rss_between(t0, time.monotonic())
        out = {"max_concurrent_rpcs": cap, **result, "server_max_rss_mb": round(rss / 2**20, 1),
               "loadavg_1m": round(os.getloadavg()[0], 2)}
        shed_p50 = (result["shed_latency"] or {}).get("p50_ms")
        print(f"\noverload: cap {cap}, {concurrency} clients: {result['calls']} calls, shed (RESOURCE_EXHAUSTED) "
              f"{100 * result['shed_fraction']:.1f}%, ok {result['throughput_ok_per_s']}/s, shed reply p50 "
              f"{shed_p50} ms, server RSS max {out['server_max_rss_mb']} MB")
        return out


class PostgresProbe:
    """CPU seconds spent by the local Postgres server processes, and connections to one database."""

    def __init__(self, database: str):
        self.database = database
        self.max_connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def cpu_seconds() -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if name == "postgres" or name.startswith("postgres:"):
                fields = stat[stat.rindex(")") + 2:].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def connections(self) -> int:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as c:
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchone()
            return int(row[0]) if row else 0

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):  # a failed sample is only a missing data point
                self.max_connections = max(self.max_connections, self.connections())

    def stop(self) -> None:
        self._stop.set()


def _print_level(row: dict[str, Any]) -> None:
    base = row["baseline"]
    print(f"\nconcurrency {row['concurrency']:>3}: baseline Health.Check {base['throughput_ok_per_s']:>8.1f}/s "
          f"p50 {base['all']['p50_ms']:.2f} ms p99 {base['all']['p99_ms']:.2f} ms | server RSS max "
          f"{row['server_max_rss_mb']} MB | load average {row['loadavg_1m']}")
    mixed = row["mixed"]
    if not mixed:
        return
    print(f"  mixed {mixed['throughput_ok_per_s']:>8.1f} ok/s, shed {100 * mixed['shed_fraction']:.1f}%")
    if "postgres" in row:
        pg = row["postgres"]
        print(f"  postgres: {pg['cpu_share_of_one_core']:.2f} cores busy, {pg['cpu_ms_per_ok_call']:.2f} ms CPU per "
              f"call, {pg['max_connections_so_far']} connections max")
    for name, r in mixed["rpcs"].items():
        errors = {k: v for k, v in r["codes"].items() if k != "OK"}
        print(f"    {name:<8} {r['ok_per_s']:>8.1f}/s  p50 {r['p50_ms']:>8.2f} ms  p99 {r['p99_ms']:>8.2f} ms"
              + (f"  errors {errors}" if errors else ""))


def _postgres_database() -> tuple[str, Callable[[], None]]:
    """A fresh database on the local Postgres (127.0.0.1:5432, trust auth), and its drop function."""
    import psycopg

    name = f"agentrt_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per phase (default 4)")
    parser.add_argument("--max-concurrency", type=int, default=128)
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--overload-cap", type=int, default=4, help="max_concurrent_rpcs in the overload phase")
    parser.add_argument("--overload-concurrency", type=int, default=64)
    parser.add_argument("--out", help="results name: bench/results/<out>.json (default load, load_postgres)")
    args = parser.parse_args(argv)
    out_name = args.out or ("load" if args.backend == "sqlite" else "load_postgres")

    levels = [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if c <= args.max_concurrency]
    env = {"AGENTRT_EMBEDDING__MODEL": "hashing"} if args.embedder == "hashing" else {}
    httpd, tool_url = start_noop_tool()
    drop: Callable[[], None] | None = None
    url = None
    if args.backend == "postgres":
        url, drop = _postgres_database()
    print(f"load: {args.backend}, embedder {args.embedder}, {args.duration:g}s per phase, levels {levels}")
    try:
        with tempfile.TemporaryDirectory(prefix="agentrt-load-") as tmp:
            data = Path(tmp) / "ramp"
            data.mkdir()
            server = ServerProcess(data, env, url)
            idle_rss = server.rss_bytes()
            pg = PostgresProbe(url.rsplit("/", 1)[1]) if url else None
            try:
                ramp_result = asyncio.run(ramp(server, tool_url, levels, args.duration, pg))
            finally:
                server.stop()
                if pg:
                    pg.stop()
            data = Path(tmp) / "overload"
            data.mkdir()
            cap_env = {**env, "AGENTRT_SERVER__MAX_CONCURRENT_RPCS": str(args.overload_cap)}
            if drop is not None:
                drop()
                url, drop = _postgres_database()
            server = ServerProcess(data, cap_env, url)
            try:
                over = asyncio.run(overload(server, tool_url, args.overload_concurrency, args.duration,
                                            args.overload_cap))
            finally:
                server.stop()
    finally:
        httpd.shutdown()
        if drop is not None:
            drop()
    payload = {
        "config": {"backend": args.backend, "embedder": args.embedder, "duration_s": args.duration,
                   "levels": levels, "client": "grpc.aio, one channel, in the benchmark process",
                   "server": "agentrt serve subprocess, default settings (max_concurrent_rpcs 64, 8 workers)"},
        "server_idle_rss_mb": round(idle_rss / 2**20, 1),
        "ramp": ramp_result,
        "overload": over,
    }
    path = write_result(out_name, payload)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
