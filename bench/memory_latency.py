"""memory-latency: Search p50/p99 over gRPC loopback at 100k units, and Write throughput with
consolidation running, next to raw FAISS search, query embedding alone and an empty RPC.

    python -m bench memory-latency [--units 100000] [--queries 300] [--batch 2] [--writers 1,4] [--quick]

Set-up (what is measured is printed and written to bench/results/memory_latency.json):
1. One namespace is seeded with ``--units`` units directly through ``SqlMemoryStore`` (no Write path:
   embedding 100k texts would take minutes and is not what this measures). Units are synthetic but
   realistic: each mixes two real LoCoMo turns (text: the first turn plus a fragment of the second;
   vector: the normalised blend of their real MiniLM embeddings), spread over the four granularities.
2. A real ``agentrt serve`` subprocess starts on that data directory (start-up = index rebuild from
   the database is timed), then every LoCoMo dev turn (2,760) is written into the same namespace through
   gRPC ``Write`` in calls of ``--batch`` messages: Write throughput while the background worker
   derives exchange/session/fact units, links them and refits the GMM of the 100k-unit namespace. The
   sessions are split into one phase per ``--writers`` entry (default ``1,4``): one client writing alone,
   then four clients writing disjoint sessions at once (as a sidecar serving several conversations sees).
3. Search latency over gRPC (client-side wall time, query embedding included, no query cache) for
   LoCoMo questions with top_k 10 and token_budget 400, once the background work has drained.
4. Restart: the server is stopped (a clean shutdown writes the vector index snapshots) and started
   again on the same data directory; start-up from the snapshots is timed (that the restored index
   equals a rebuild from the database is tested in ``tests/memory/test_index_snapshots.py``).
Baselines in the same run: health-check RPC, Search on an empty namespace (an RPC that stops before
embedding), the query embedding alone in-process, and raw FAISS search over the same number of
vectors (flat exact and HNSW).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED, embedding_precision, machine, percentiles, write_result
from runtime.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
LOCOMO = SHARED / "data" / "locomo" / "locomo10_dev.json"
NAMESPACE = "large"
SCOPED = f"default/{NAMESPACE}"


def load_locomo(path: Path = LOCOMO) -> tuple[list[dict[str, Any]], list[str]]:
    """(sessions, questions): each session {conv, session, time, turns: [(dia_id, speaker, text)]}."""
    data = json.loads(path.read_text())
    sessions: list[dict[str, Any]] = []
    questions: list[str] = []
    for conv in data:
        c = conv["conversation"]
        n = 1
        while f"session_{n}" in c:
            when = datetime.strptime(c[f"session_{n}_date_time"], "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)
            turns = []
            for t in c[f"session_{n}"]:
                text = t["text"] + (f" [shares {t['blip_caption']}]" if t.get("blip_caption") else "")
                turns.append((t["dia_id"], t["speaker"], text))
            sessions.append({"conv": conv["sample_id"], "session": n, "time": when, "turns": turns})
            n += 1
        questions += [q["question"] for q in conv["qa"]]
    return sessions, questions


def seed_units(
    db_url: str, n_units: int, texts: list[str], vectors: np.ndarray, seed: int = 0, model: str = "all-MiniLM-L6-v2"
) -> float:
    """Insert ``n_units`` synthetic units into the namespace; returns seconds taken."""
    from memory.model import Granularity, MemoryUnit
    from memory.store import Change, SqlMemoryStore, StoredUnit, unit_key
    from runtime.db import Database

    db = Database(db_url)
    db.migrate()
    db.ensure_namespace(SCOPED)
    store = SqlMemoryStore(db.engine)
    rng = np.random.default_rng(seed)
    grans = [Granularity.TURN] * 12 + [Granularity.EXCHANGE] * 5 + [Granularity.FACT] * 2 + [Granularity.SESSION]
    started = time.perf_counter()
    batch: list[StoredUnit] = []
    for i in range(n_units):
        a, b = rng.integers(0, len(texts), size=2)
        vec = vectors[a] + 0.5 * vectors[b] + 0.05 * rng.standard_normal(vectors.shape[1]).astype(np.float32)
        vec = (vec / np.linalg.norm(vec)).astype(np.float32)
        words = texts[b].split()
        text = f"{texts[a]} {' '.join(words[: max(3, len(words) // 2)])}"
        gran = grans[i % len(grans)]
        uid = f"synthetic-{i // 20}/{gran.value}/{i}"
        unit = MemoryUnit(uid, gran, text, (f"synthetic-msg-{i}",), f"synthetic-{i // 20}")
        # The name of the embedder that made ``vectors``: the sidecar re-embeds units of any other model.
        batch.append(StoredUnit(unit, unit_key(SCOPED, uid), vec, model))
        if len(batch) == 5000:
            store.apply(SCOPED, Change(insert_units=batch))
            batch = []
    if batch:
        store.apply(SCOPED, Change(insert_units=batch))
    db.dispose()
    return time.perf_counter() - started


class Server(ServerProcess):
    """``agentrt serve`` on the benchmark's data directory, with its start-up time (index load included)."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        started = time.perf_counter()
        super().__init__(data_dir, env=env, log_path=data_dir / "server.log", startup_timeout=900)
        self.startup_s = time.perf_counter() - started


def wait_for(client: Any, done: Callable[[Any], bool], timeout: float, interval: float = 0.5) -> float:
    """Poll the namespace's Stats until ``done(stats)``; seconds waited, NaN on timeout."""
    from agentrt.v1 import memory_pb2

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if done(client.memory.Stats(memory_pb2.StatsRequest(namespace=NAMESPACE))):
            return time.perf_counter() - started
        time.sleep(interval)
    return float("nan")


def wait_drained(client: Any, timeout: float = 1800) -> float:
    """Until no session is pending derivation."""
    return wait_for(client, lambda stats: stats.pending_sessions == 0, timeout)


def wait_linked(client: Any, timeout: float) -> float:
    """Until no session is pending and the background association has linked every unit."""
    return wait_for(client, lambda stats: stats.pending_links == 0 and stats.pending_sessions == 0, timeout, 1.0)


def raw_faiss(vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Per-query search time of flat and HNSW FAISS over the same number of vectors (one thread of
    the caller, as the server's searches run)."""
    import faiss

    out: dict[str, Any] = {}
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    t = time.perf_counter()
    hnsw.add(vectors)
    out["hnsw_build_s"] = round(time.perf_counter() - t, 2)
    hnsw.hnsw.efSearch = 64
    indexes = [("flat", flat), ("hnsw", hnsw)]
    if faiss.get_num_gpus() > 0:
        # What the sidecar serves past gpu_threshold on a GPU host: exact flat on the GPU.
        indexes.append(("gpu_flat", faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(vectors.shape[1]))))
        indexes[-1][1].add(vectors)
        for q in queries[:10]:  # warm-up: CUDA context, cuBLAS handles, scratch memory
            indexes[-1][1].search(q.reshape(1, -1), 50)
    for name, index in indexes:
        samples = []
        for q in queries:
            t = time.perf_counter()
            index.search(q.reshape(1, -1), 50)
            samples.append(time.perf_counter() - t)
        out[name] = percentiles(samples)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory-latency", description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2, help="messages per Write call")
    parser.add_argument(
        "--writers",
        default="1,4",
        help="concurrent Write clients (disjoint sessions); a comma list runs one phase per entry on its "
        "own share of the sessions",
    )
    parser.add_argument(
        "--write-sessions", type=int, default=0, help="write only the first N LoCoMo sessions (0 = all)"
    )
    parser.add_argument("--quick", action="store_true", help="10k units, 3 sessions per conversation, 100 queries")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument(
        "--link-timeout", type=float, default=300.0, help="seconds to wait for the association to catch up"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="memory policy settle_s of the server")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads of torch/FAISS/BLAS in the server and here (0 = library default); 1 avoids "
        "thread oversubscription on a busy machine",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.units, args.queries = 10_000, 100

    from agentrt.v1 import memory_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from core.embedding import create_embedder
    from runtime.client import AgentrtClient

    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    sessions, questions = load_locomo()
    if args.quick:
        sessions = [s for s in sessions if s["session"] <= 3]
    texts = [f"{spk}: {text}" for s in sessions for _, spk, text in s["turns"]]
    to_write = sessions[: args.write_sessions] if args.write_sessions else sessions
    print(f"LoCoMo: {len(sessions)} sessions, {len(texts)} turns, {len(questions)} questions")
    load_before = os.getloadavg()

    embedder = create_embedder(precision=embedding_precision())
    t = time.perf_counter()
    pool = embedder.embed(texts)
    embed_rate = len(texts) / (time.perf_counter() - t)
    print(f"embedded the turn pool at {embed_rate:.0f} texts/s (batched)")

    rng = random.Random(0)
    picked = rng.sample(questions, min(args.queries, len(questions)))

    def time_queries(model: Any) -> dict[str, float]:
        for q in picked[-5:]:  # warm-up (a GPU's first calls load kernels)
            model.embed([q])
        samples = []
        for q in picked[:50]:
            t = time.perf_counter()
            model.embed([q])
            samples.append(time.perf_counter() - t)
        return percentiles(samples)

    query_embedding = time_queries(embedder)
    print(f"query embedding alone (in-process): p50 {query_embedding['p50_ms']} ms, p99 {query_embedding['p99_ms']} ms")
    query_embedding_cpu = None
    if getattr(embedder, "device", "cpu") != "cpu":
        # On a GPU host the server embeds with torch on the GPU; the CPU encoder it would use otherwise, beside it.
        query_embedding_cpu = time_queries(create_embedder(device="cpu", precision=embedding_precision()))
        print(f"the same on the CPU (ONNX Runtime): p50 {query_embedding_cpu['p50_ms']} ms")

    data_dir = Path(tempfile.mkdtemp(prefix="agentrt-bench-"))
    db_url = f"sqlite:///{data_dir / 'agentrt.db'}"
    seed_s = seed_units(db_url, args.units, texts, pool, model=embedder.name)
    print(f"seeded {args.units} units in {seed_s:.1f} s")

    # The server's query-embedding cache is switched off: every Search pays for its embedding.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "AGENTRT_LOG__FORMAT": "text",
        "AGENTRT_LOG__LEVEL": "WARNING",
        "AGENTRT_EMBEDDING__CACHE_SIZE": "0",
        # Coalesce re-derivation of a session being written (one derivation per burst, not per Write).
        "AGENTRT_POLICIES__DEFAULTS": json.dumps({"memory": {"settle_s": args.settle}}),
    }
    server = Server(data_dir, env)
    first_startup_s = server.startup_s
    print(f"server SERVING after {first_startup_s:.1f} s (index rebuild of {args.units} units included)")
    result: dict[str, Any] = {}
    try:
        client = AgentrtClient(server.target, timeout=120)
        health = health_pb2_grpc.HealthStub(client.channel)
        empty_rpc, empty_search = [], []
        for _ in range(300):
            t = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest())
            empty_rpc.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.memory.Search(memory_pb2.SearchRequest(namespace="empty", query="hello", top_k=10))
            empty_search.append(time.perf_counter() - t)

        # Write throughput with consolidation running (background derive, link, GMM refit). Each entry of
        # --writers is one phase on its own share of the sessions: N clients write disjoint sessions at
        # once (their commits are grouped, their embeddings run on both cores); one client alone is
        # bound by its own round trips.
        def write_all(group: list[dict[str, Any]], lat: list[float]) -> int:
            written = 0
            for s in group:
                sid = f"{s['conv']}-s{s['session']}"
                turns = s["turns"]
                for start in range(0, len(turns), args.batch):
                    chunk = turns[start : start + args.batch]
                    msgs = [
                        {"id": f"{s['conv']}:{d}", "speaker": spk, "text": text, "time": s["time"]}
                        for d, spk, text in chunk
                    ]
                    t = time.perf_counter()
                    client.write(NAMESPACE, sid, msgs)
                    lat.append(time.perf_counter() - t)
                    written += len(msgs)
            return written

        writer_counts = [int(w) for w in str(args.writers).split(",") if w.strip()]
        write_phases: dict[str, Any] = {}
        n_messages = 0
        for phase, writers in enumerate(writer_counts):
            share = to_write[phase :: len(writer_counts)]
            write_lat: list[float] = []
            t_write = time.perf_counter()
            with ThreadPoolExecutor(writers) as pool_writers:
                groups = [share[i::writers] for i in range(writers)]
                written = sum(pool_writers.map(write_all, groups, [write_lat] * writers))
            write_s = time.perf_counter() - t_write
            drain_s = wait_drained(client)
            n_messages += written
            write_phases[f"writers_{writers}"] = {
                "messages": written,
                "messages_per_s_acknowledged": round(written / write_s, 1),
                "messages_per_s_end_to_end": round(written / (write_s + drain_s), 1),
                "drain_after_last_write_s": round(drain_s, 2),
                "latency_per_call": percentiles(write_lat),
            }
            print(
                f"Write, {writers} writer(s): {written} messages in {write_s:.1f} s = {written / write_s:.0f} msg/s "
                f"acknowledged; background derivation drained {drain_s:.1f} s later "
                f"({written / (write_s + drain_s):.0f} msg/s end to end), call p50 "
                f"{write_phases[f'writers_{writers}']['latency_per_call']['p50_ms']} ms"
            )
        stats = client.memory.Stats(memory_pb2.StatsRequest(namespace=NAMESPACE))

        def search_phase() -> dict[str, Any]:
            lat = []
            for q in picked:
                t = time.perf_counter()
                client.memory.Search(memory_pb2.SearchRequest(namespace=NAMESPACE, query=q, top_k=10, token_budget=400))
                lat.append(time.perf_counter() - t)
            return percentiles(lat)

        # First right after the writes, while the background still links: the seeded units were never
        # linked (a bulk load), so the association works through them for a minute or two. Then again once
        # it has caught up (pending_links 0), the steady state of a namespace written through Write.
        units_total = sum(stats.units.values())
        pending_before = stats.pending_links
        search = search_phase()
        print(
            f"Search over {units_total} units while {pending_before} units wait to be linked: "
            f"p50 {search['p50_ms']} ms, p99 {search['p99_ms']} ms"
        )
        caught_up_s = wait_linked(client, args.link_timeout)
        search_idle = None if math.isnan(caught_up_s) else search_phase()
        if search_idle is not None:
            print(
                f"Search after the association caught up ({caught_up_s:.0f} s later): p50 {search_idle['p50_ms']} ms, "
                f"p99 {search_idle['p99_ms']} ms"
            )
        else:
            print(f"the association had not caught up after {args.link_timeout:.0f} s; no idle Search phase")
        client.close()

        # Restart: the clean shutdown snapshots the vector indexes; the new process loads them and checks
        # them against the database instead of rebuilding every HNSW graph.
        t = time.perf_counter()
        server.stop()
        shutdown_s = time.perf_counter() - t
        server = Server(data_dir, env)
        print(f"restart: shutdown (snapshot written) {shutdown_s:.1f} s, SERVING again after {server.startup_s:.1f} s")

        qvecs = embedder.embed(picked[:100])
        raw = raw_faiss(pool_for_faiss(pool, units_total), qvecs)
        print(
            f"raw FAISS over {units_total} vectors: flat p50 {raw['flat']['p50_ms']} ms, "
            f"HNSW p50 {raw['hnsw']['p50_ms']} ms"
            + (f", GPU flat p50 {raw['gpu_flat']['p50_ms']} ms" if "gpu_flat" in raw else "")
        )
        result = {
            "units_seeded": args.units,
            "units_total": units_total,
            "units_by_granularity": dict(stats.units),
            "index_backends": dict(stats.index_backends),
            "clusters": stats.clusters,
            "edges": stats.edges,
            "locomo_turns_written": n_messages,
            "write_batch": args.batch,
            "writers": writer_counts,
            "startup_s": round(first_startup_s, 2),
            "restart": {
                "shutdown_s": round(shutdown_s, 2),
                "startup_from_snapshot_s": round(server.startup_s, 2),
            },
            "seed_s": round(seed_s, 2),
            "write": write_phases,
            "search": search,
            "search_pending_links_at_start": pending_before,
            "search_after_linking": search_idle,
            "linking_caught_up_after_s": None if math.isnan(caught_up_s) else round(caught_up_s, 1),
            "baselines": {
                "health_rpc": percentiles(empty_rpc),
                "search_empty_namespace_rpc": percentiles(empty_search),
                "query_embedding_in_process": query_embedding,
                "query_embedding_in_process_cpu": query_embedding_cpu,
                "raw_faiss": raw,
                "embedding_batched_texts_per_s": round(embed_rate, 1),
            },
            "targets": {"search_p50_ms": 15, "search_p99_ms": 40, "write_messages_per_s": 150},
            "embedding": {"backend": getattr(embedder, "backend", None), "device": getattr(embedder, "device", None)},
            "threads": args.threads or "library default",
            "settle_s": args.settle,
            "write_sessions": len(to_write),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    name = "memory_latency_quick" if args.quick else "memory_latency"
    if result.get("index_backends") and "gpu-flat" in result["index_backends"].values():
        name += "_gpu"  # a GPU host's figures sit beside the CPU ones, not over them
    path = write_result(name, result)
    print(f"machine: {machine()['cpu_count']} CPUs, {machine()['platform']}; load avg before {load_before}")
    print(f"wrote {path}")
    return 0


def pool_for_faiss(pool: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """``n`` vectors distributed like the seeded units (blends of two real turn embeddings)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(pool), size=n)
    b = rng.integers(0, len(pool), size=n)
    x = pool[a] + 0.5 * pool[b] + 0.05 * rng.standard_normal((n, pool.shape[1])).astype(np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


if __name__ == "__main__":
    raise SystemExit(main())
