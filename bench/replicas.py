"""Replicas on one Postgres: how fast a write on one sidecar becomes searchable on the others.

    .venv/bin/python -m bench replicas [--replicas 3] [--writes 150] [--duration 8] [--embedder minilm|hashing]

Starts N ``agentrt serve`` processes on one fresh Postgres database (127.0.0.1:5432) and measures:
- propagation lag: a Write acknowledged by replica i, then Search on every replica polled together (one
  thread each, every 2 ms) until the new message id is in its hits; each lag is timed from the Write's
  acknowledgement (the moment the RPC returned) to the end of the first Search that saw it; p50/p99 over
  all (write, other reader) pairs — plus the same for Delete (until the id is gone), and, as the baseline
  measured in the same run, the lag to be searchable on the replica that took the write (read-your-writes:
  ~ one Search);
- catch-up: one replica is stopped, writes go on elsewhere, the replica restarts; time until it serves
  all of them;
- write throughput with the same number of concurrent clients on one replica vs spread over all of them.
Results: bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from agentrt.v1 import memory_pb2

from bench.common import percentiles, write_result
from bench.load import ServerProcess
from runtime.client import AgentrtClient

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
NS = "replicas"


def _create_db() -> tuple[str, Any]:
    import psycopg

    name = f"agentrt_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return PG.format(db=name), drop


def _visible(client: AgentrtClient, token: str, message_id: str) -> bool:
    hits = client.search(NS, token, top_k=5).hits
    return any(message_id in h.message_ids for h in hits)


def _wait(pred: Any, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if pred():
            return time.perf_counter() - start
        time.sleep(0.002)
    raise TimeoutError("change never became visible")


def _poll_from(acked: float, readers: list[Any], pred: Any, timeout: float = 30.0) -> list[float]:
    """Poll every reader at once (one thread each, every 2 ms) until ``pred(reader)`` holds; for each reader,
    the seconds from ``acked`` (the moment the Write/Delete RPC returned) to the end of the first Search that
    saw the change. One clock for all readers, so a slow reader does not delay the next one's timing."""
    seen: list[float | None] = [None] * len(readers)
    errors: list[BaseException] = []

    def poll(k: int) -> None:
        try:
            while time.perf_counter() - acked < timeout:
                if pred(readers[k]):
                    seen[k] = time.perf_counter() - acked
                    return
                time.sleep(0.002)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=poll, args=(k,), daemon=True) for k in range(len(readers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    if errors:
        raise errors[0]
    if any(v is None for v in seen):
        raise TimeoutError("change never became visible")
    return [float(v) for v in seen if v is not None]


def measure_lag(clients: list[AgentrtClient], writes: int) -> dict[str, Any]:
    """Lag from the acknowledgement: ``acked`` is taken right after the Write (Delete) RPC returns, then the
    writer and every other replica are polled together and each records ``first_seen - acked``."""
    local: list[float] = []
    remote: list[float] = []
    deletes: list[float] = []
    for i in range(writes):
        writer = clients[i % len(clients)]
        others = [c for c in clients if c is not writer]
        token = f"zq{uuid.uuid4().hex[:10]}"
        mid = f"m-{token}"
        writer.write(NS, f"s{i % 5}", [{"id": mid, "speaker": "bench", "text": f"marker {token} was written"}])
        acked = time.perf_counter()
        lags = _poll_from(acked, [writer, *others], lambda r, t=token, m=mid: _visible(r, t, m))
        local.append(lags[0])
        remote.extend(lags[1:])
        if i % 5 == 0:
            writer.memory.Delete(memory_pb2.DeleteRequest(namespace=NS, message_ids=[mid]), timeout=30)
            acked = time.perf_counter()
            deletes.extend(_poll_from(acked, others, lambda r, t=token, m=mid: not _visible(r, t, m)))
    return {"write_to_search_same_replica": percentiles(local), "write_to_search_other_replica": percentiles(remote),
            "delete_to_gone_other_replica": percentiles(deletes)}


def measure_throughput(targets: list[str], clients_n: int, duration: float) -> float:
    done = [0] * clients_n
    stop = time.perf_counter() + duration

    def run(k: int) -> None:
        with AgentrtClient(targets[k % len(targets)]) as c:
            n = 0
            while time.perf_counter() < stop:
                try:
                    c.write(NS, f"t{k}", [{"id": f"tp-{k}-{n}-{j}", "speaker": "bench", "text": f"load {k} {n} {j}"}
                                          for j in range(4)])
                    done[k] += 4
                except grpc.RpcError:
                    pass
                n += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients_n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench replicas", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--writes", type=int, default=150)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    args = parser.parse_args(argv)

    url, drop = _create_db()
    env = {} if args.embedder == "minilm" else {"AGENTRT_EMBEDDING__MODEL": "hashing"}
    tmp = Path(tempfile.mkdtemp(prefix="agentrt-replicas-"))
    servers: list[ServerProcess] = []
    try:
        for i in range(args.replicas):
            d = tmp / f"r{i}"
            d.mkdir()
            servers.append(ServerProcess(d, env, url))
        clients = [AgentrtClient(s.target) for s in servers]
        lag = measure_lag(clients, args.writes)

        # catch-up: the last replica is down while writes go on elsewhere
        down = servers.pop()
        clients.pop().close()
        down.stop()
        missed = [f"cu-{i}" for i in range(50)]
        clients[0].write(NS, "catchup", [{"id": m, "speaker": "bench", "text": f"catchup marker {m}"}
                                         for m in missed])
        t0 = time.perf_counter()
        d = tmp / "r-restarted"
        d.mkdir()
        back = ServerProcess(d, env, url)
        servers.append(back)
        with AgentrtClient(back.target) as c:
            _wait(lambda: all(_visible(c, f"catchup marker {m}", m) for m in missed[-3:]), timeout=120)
        catch_up_s = time.perf_counter() - t0

        targets = [s.target for s in servers]
        one = measure_throughput(targets[:1], args.clients, args.duration)
        spread = measure_throughput(targets, args.clients, args.duration)
        for c in clients:
            c.close()
    finally:
        for s in servers:
            s.stop()
        drop()

    result = {
        "setup": {"replicas": args.replicas, "writes": args.writes, "embedder": args.embedder,
                  "database": "PostgreSQL 127.0.0.1:5432 (one local server)", "clients": args.clients},
        "lag": lag,
        "catch_up_after_restart_s": round(catch_up_s, 3),
        "catch_up_note": "includes process start (model load, index rebuild from the database)",
        "write_throughput_msgs_per_s": {"one_replica": round(one, 1), f"{args.replicas}_replicas": round(spread, 1)},
    }
    path = write_result("replicas", result)
    print(f"replicas={args.replicas} embedder={args.embedder}")
    for k, v in lag.items():
        print(f"  {k:34} p50 {v['p50_ms']:8.2f} ms   p99 {v['p99_ms']:8.2f} ms   n={v['n']}")
    print(f"  catch-up after restart: {catch_up_s:.2f} s (incl. start-up)")
    print(f"  write throughput: one replica {one:.0f} msg/s, {args.replicas} replicas {spread:.0f} msg/s")
    print(f"wrote {path}")
    return 0
