"""memory-locomo: budget-recall of memory Search on LoCoMo, through the gRPC API.

    python -m bench memory-locomo [--data PATH] [--conversations N] [--budgets 100,200,400,800]
                                  [--in-process] [--no-baselines]

The gRPC mode below is the reported one. ``--in-process`` is for iterating on units and retrieval: the
same protocol on a ``MemoryEngine`` over the in-memory store in this process, with embeddings cached in
a pickle under the temp directory so a re-run embeds nothing (it gave the gRPC figures exactly).

Protocol (issue #3):
1. A real ``agentrt serve`` subprocess on a fresh data directory (SQLite). Each conversation is its own
   namespace; every session is written with ``Write`` (message id = the turn's ``dia_id``, time = the
   session date, speaker, text with the shared image's caption appended), then ``Consolidate`` derives
   the coarser units (in production the background worker does this).
2. For every question with evidence, ``Search(query, top_k=1000, token_budget=B)`` for each B, and
   ``Search(query, top_k=10)`` for recall@10.
3. budget-recall@B = share of evidence turns whose id is in ``message_ids`` of a hit that lies within
   the first B whitespace words of the response *and whose text contains that turn's text*. recall@10 =
   share of evidence turns covered by the first ten hits (same containment rule).
Baselines computed in the same run, in-process, on turn units with the same text (``"speaker: text"``)
and the same word counting: plain BM25 (core.lexical), dense MiniLM, their RRF, and the "z-scored
BM25 + dense, each turn adding 0.3 of its neighbours" trick the issue names as the floor.

Evidence ids are normalised ("D30:05" → "D30:5", "D:11:26" → "D11:26", "D8:6; D9:17" → two ids);
ids that name no turn of the conversation are dropped (they cannot be retrieved by anyone).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED, embedding_precision, percentiles, write_result

REPO = Path(__file__).resolve().parent.parent
LOCOMO = SHARED / "data" / "locomo" / "locomo10_dev.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


# -- data ---------------------------------------------------------------------------------------------


def _evidence_ids(raw: Sequence[str]) -> list[str]:
    out = []
    for item in raw:
        for part in re.split(r"[;,\s]+", item):
            match = re.match(r"D:?(\d+):0*(\d+)$", part.strip())
            if match:
                out.append(f"D{int(match.group(1))}:{int(match.group(2))}")
    return list(dict.fromkeys(out))


def load(path: Path) -> list[dict[str, Any]]:
    """Conversations: {id, sessions: [{id, time, turns: [{id, speaker, text}]}], questions: [...]}."""
    out = []
    for conv in json.loads(path.read_text()):
        c = conv["conversation"]
        sessions = []
        n = 1
        while f"session_{n}_date_time" in c:
            turns = []
            for t in c.get(f"session_{n}") or []:
                text = t["text"]
                if t.get("blip_caption"):
                    text += f" [shares an image: {t['blip_caption']}]"
                turns.append({"id": t["dia_id"], "speaker": t["speaker"], "text": text})
            if turns:
                when = datetime.strptime(c[f"session_{n}_date_time"].strip(), "%I:%M %p on %d %B, %Y")
                sessions.append({"id": f"session_{n}", "time": when.replace(tzinfo=UTC), "turns": turns})
            n += 1
        ids = {t["id"] for s in sessions for t in s["turns"]}
        questions = []
        for q in conv["qa"]:
            evidence = [e for e in _evidence_ids(q.get("evidence", [])) if e in ids]
            if evidence:
                questions.append({"question": q["question"], "evidence": evidence, "category": q["category"]})
        out.append({"id": conv["sample_id"], "sessions": sessions, "questions": questions})
    return out


# -- scoring ------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


class Scorer:
    """Accumulates budget-recall@B and recall@10, overall, per category and per conversation."""

    def __init__(self, budgets: Sequence[int]):
        self.budgets = list(budgets)
        self.found: dict[str, dict[str, float]] = {}
        self.total: dict[str, int] = {}

    def add(
        self,
        conv: str,
        category: int,
        evidence: Sequence[str],
        turn_text: dict[str, str],
        by_budget: dict[int, list[tuple[Sequence[str], str]]],
        top10: list[tuple[Sequence[str], str]],
    ) -> None:
        """``by_budget[B]`` / ``top10``: the response's hits as (message_ids, text), in order."""
        groups = ("all", f"cat{category}-{CATEGORIES.get(category, '?')}", f"conv-{conv}")
        row: dict[str, float] = {}
        for b in self.budgets:
            covered = self._covered(by_budget[b], turn_text, budget=b)
            row[f"budget@{b}"] = sum(e in covered for e in evidence)
        covered = self._covered(top10[:10], turn_text, budget=None)
        row["recall@10"] = sum(e in covered for e in evidence)
        for g in groups:
            acc = self.found.setdefault(g, {})
            for k, v in row.items():
                acc[k] = acc.get(k, 0.0) + v
            self.total[g] = self.total.get(g, 0) + len(evidence)

    @staticmethod
    def _covered(hits: list[tuple[Sequence[str], str]], turn_text: dict[str, str], budget: int | None) -> set[str]:
        used = 0
        out: set[str] = set()
        for ids, text in hits:
            used += len(text.split())
            if budget is not None and used > budget:
                break
            flat = _norm(text)
            out.update(i for i in ids if i in turn_text and _norm(turn_text[i]) in flat)
        return out

    def table(self) -> dict[str, dict[str, float]]:
        return {
            g: {k: round(v / self.total[g], 4) for k, v in acc.items()} | {"evidence": self.total[g]}
            for g, acc in self.found.items()
        }


# -- baselines (in-process, same run) -----------------------------------------------------------------


def _z(x: np.ndarray) -> np.ndarray:
    s = float(x.std())
    return (x - x.mean()) / s if s > 1e-9 else np.zeros_like(x)


def baselines(conv: dict[str, Any], embedder: Any, qvecs: np.ndarray) -> dict[str, Callable[[int], list[int]]]:
    """Rankers (question index -> turn indices, best first) over the conversation's turns."""
    from core.lexical import BM25Index

    turns = [t for s in conv["sessions"] for t in s["turns"]]
    texts = [f"{t['speaker']}: {t['text']}" for t in turns]
    session_of = np.array([i for i, s in enumerate(conv["sessions"]) for _ in s["turns"]])
    bm25 = BM25Index()
    for i, text in enumerate(texts):
        bm25.add(i, text)
    vectors = embedder.embed(texts)

    def lex_scores(qi: int) -> np.ndarray:
        ids, scores = bm25.search_arrays(conv["questions"][qi]["question"], len(texts))
        out = np.zeros(len(texts))
        out[ids] = scores
        return out

    def bm25_rank(qi: int) -> list[int]:
        return np.argsort(-lex_scores(qi), kind="stable").tolist()

    def dense_rank(qi: int) -> list[int]:
        return np.argsort(-(vectors @ qvecs[qi]), kind="stable").tolist()

    def rrf_rank(qi: int) -> list[int]:
        fused = np.zeros(len(texts))
        for ranking in (bm25_rank(qi), dense_rank(qi)):
            fused[ranking] += 1.0 / (60 + np.arange(len(ranking)))
        return np.argsort(-fused, kind="stable").tolist()

    def zsum_rank(qi: int) -> list[int]:
        s = _z(lex_scores(qi)) + _z(vectors @ qvecs[qi])
        same_prev = np.r_[False, session_of[1:] == session_of[:-1]]
        same_next = np.r_[session_of[1:] == session_of[:-1], False]
        smoothed = s + 0.3 * (np.r_[0.0, s[:-1]] * same_prev + np.r_[s[1:], 0.0] * same_next)
        return np.argsort(-smoothed, kind="stable").tolist()

    return {"bm25": bm25_rank, "dense": dense_rank, "rrf": rrf_rank, "zsum_neighbours": zsum_rank}


# -- server -------------------------------------------------------------------------------------------


class _Server:
    """An ``agentrt serve`` subprocess on loopback with its own data directory."""

    def __init__(self, data_dir: Path):
        port_file = data_dir / "port"
        self.log_path = data_dir / "server.log"
        log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        env = dict(os.environ, AGENTRT_TELEMETRY="0")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--port-file",
                str(port_file),
                "--data-dir",
                str(data_dir),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 900
        while not port_file.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(self.log_path.read_text()[-4000:])
            time.sleep(0.1)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"
        self._wait_serving(deadline)

    def _wait_serving(self, deadline: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.time() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                        return
                except grpc.RpcError:
                    pass
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError(self.log_path.read_text()[-4000:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _payload(
    args: argparse.Namespace,
    budgets: list[int],
    done: list[str],
    ours: Scorer,
    base: dict[str, Scorer],
    search_s: list[float],
    started: float,
) -> dict[str, Any]:
    return {
        "data": str(args.data),
        "mode": "in-process" if args.in_process else "grpc",
        "conversations": done,
        "budgets": budgets,
        "results": {"agentrt": ours.table(), **{name: s.table() for name, s in base.items()}},
        "search_latency": percentiles(search_s),
        "total_seconds": round(time.perf_counter() - started, 1),
        "baselines_published_dev": {"bm25": [0.388, 0.504, 0.588, 0.666], "rrf": [0.382, 0.524, 0.638, 0.747]},
        "targets_dev": {"budget@200": 0.72, "budget@400": 0.82, "budget@800": 0.88},
    }


# -- backends -----------------------------------------------------------------------------------------


class _GrpcBackend:
    """The reported mode: a real server subprocess, everything through the public API."""

    def __init__(self, data_dir: Path):
        from runtime.client import AgentrtClient

        self.server = _Server(data_dir)
        self.client = AgentrtClient(self.server.target, timeout=600)

    def write(self, ns: str, session_id: str, batch: list[dict[str, Any]]) -> None:
        self.client.write(ns, session_id, batch)

    def consolidate(self, ns: str) -> None:
        from agentrt.v1 import memory_pb2

        # Let the background worker derive the sessions (calling Consolidate while it runs would derive
        # them twice), then Consolidate for the GMM refit and links.
        while self.client.memory.Stats(memory_pb2.StatsRequest(namespace=ns)).pending_sessions:
            time.sleep(0.5)
        self.client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace=ns), timeout=1800)

    def search(self, ns: str, query: str, top_k: int, token_budget: int = 0) -> list[tuple[list[str], str]]:
        resp = self.client.search(ns, query, top_k=top_k, token_budget=token_budget)
        return [(list(h.message_ids), h.text) for h in resp.hits]

    def close(self) -> None:
        self.client.close()
        self.server.stop()


class _DiskCachedEmbedder:
    """Embeddings kept in a pickle under /tmp between runs, so an iteration re-embeds nothing."""

    def __init__(self, inner: Any, path: Path):
        self.inner = inner
        self.path = path
        self.cache: dict[str, np.ndarray] = {}
        if path.exists():
            with open(path, "rb") as f:
                self.cache = pickle.load(f)  # our own file under /tmp
        self.dirty = False

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            self.cache.update(zip(missing, self.inner.embed(missing), strict=True))
            self.dirty = True
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts]).astype(np.float32, copy=False)

    def save(self) -> None:
        if self.dirty:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(self.cache, f)
            tmp.replace(self.path)
            self.dirty = False


class _InProcessBackend:
    """Fast iteration mode: ``MemoryEngine`` on an in-memory store, embeddings cached on disk.

    Same units, same retrieval code and same policy defaults as the server; no gRPC, no SQLite, and
    no background worker (sessions are derived by ``flush`` before Consolidate).
    """

    def __init__(self, embedder: Any):
        from memory.engine import MemoryEngine
        from memory.store import InMemoryStore

        self.embedder = _DiskCachedEmbedder(
            embedder, Path(tempfile.gettempdir()) / f"agentrt-locomo-{embedder.name.replace('/', '_')}.pkl"
        )
        self.engine = MemoryEngine(InMemoryStore(), self.embedder, background=False)

    def write(self, ns: str, session_id: str, batch: list[dict[str, Any]]) -> None:
        from memory.model import MemoryMessage

        self.engine.write(ns, session_id, [MemoryMessage(session_id=session_id, **m) for m in batch])

    def consolidate(self, ns: str) -> None:
        self.engine.flush()
        self.engine.consolidate(ns)
        self.embedder.save()

    def search(self, ns: str, query: str, top_k: int, token_budget: int = 0) -> list[tuple[list[str], str]]:
        from memory.model import SearchQuery

        result = self.engine.search(ns, SearchQuery(query=query, top_k=top_k, token_budget=token_budget))
        return [(list(h.unit.message_ids), h.unit.text) for h in result.hits]

    def close(self) -> None:
        self.embedder.save()
        self.engine.close()


# -- main ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory-locomo", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=LOCOMO)
    parser.add_argument("--conversations", type=int, default=0, help="only the first N (0 = all)")
    parser.add_argument("--budgets", default="100,200,400,800")
    parser.add_argument("--output", default="memory_locomo")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="iteration mode: MemoryEngine in this process, embeddings cached under /tmp (not the reported mode)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the in-process baselines")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]

    from core.embedding import create_embedder

    convs = load(args.data)
    if args.conversations:
        convs = convs[: args.conversations]
    embedder = create_embedder(precision=embedding_precision())
    ours = Scorer(budgets)
    base: dict[str, Scorer] = {}
    search_s: list[float] = []
    done: list[str] = []
    write_s = 0.0
    consolidate_s = 0.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentrt-locomo-") as tmp:
        backend: _GrpcBackend | _InProcessBackend = (
            _InProcessBackend(embedder) if args.in_process else _GrpcBackend(Path(tmp))
        )
        if args.in_process:
            embedder = backend.embedder  # type: ignore[union-attr]
        try:
            for conv in convs:
                ns = f"locomo-{conv['id']}"
                t = time.perf_counter()
                for session in conv["sessions"]:
                    when = session["time"]
                    batch = [
                        {"id": turn["id"], "speaker": turn["speaker"], "text": turn["text"], "time": when}
                        for turn in session["turns"]
                    ]
                    backend.write(ns, session["id"], batch)
                write_s += time.perf_counter() - t
                t = time.perf_counter()
                backend.consolidate(ns)
                consolidate_s += time.perf_counter() - t
                turns = [turn for s in conv["sessions"] for turn in s["turns"]]
                turn_text = {turn["id"]: f"{turn['speaker']}: {turn['text']}" for turn in turns}
                questions = conv["questions"]
                for q in questions:
                    by_budget = {}
                    for b in budgets:
                        t = time.perf_counter()
                        by_budget[b] = backend.search(ns, q["question"], top_k=1000, token_budget=b)
                        search_s.append(time.perf_counter() - t)
                    top10 = backend.search(ns, q["question"], top_k=10)
                    ours.add(conv["id"], q["category"], q["evidence"], turn_text, by_budget, top10)
                if not args.no_baselines:
                    # Baselines on the same conversation and questions.
                    qvecs = embedder.embed([q["question"] for q in questions])
                    ids = [turn["id"] for s in conv["sessions"] for turn in s["turns"]]
                    for name, rank in baselines(conv, embedder, qvecs).items():
                        scorer = base.setdefault(name, Scorer(budgets))
                        for qi, q in enumerate(questions):
                            hits = [([ids[i]], turn_text[ids[i]]) for i in rank(qi)]
                            scorer.add(
                                conv["id"], q["category"], q["evidence"], turn_text, dict.fromkeys(budgets, hits), hits
                            )
                mine = ours.table()["conv-" + conv["id"]]
                print(f"{conv['id']}: {len(questions)} questions, {mine}", flush=True)
                done.append(conv["id"])
                # Written after every conversation, so a long run that is cut short still reports.
                write_result(
                    args.output,
                    _payload(args, budgets, done, ours, base, search_s, started) | {"partial": len(done) < len(convs)},
                )
        finally:
            backend.close()

    table = {"agentrt": ours.table(), **{name: s.table() for name, s in base.items()}}
    payload = _payload(args, budgets, done, ours, base, search_s, started)
    payload |= {"write_seconds": round(write_s, 2), "consolidate_seconds": round(consolidate_s, 2)}
    cols = [f"budget@{b}" for b in budgets] + ["recall@10"]
    print(f"\n{'retriever':18s} " + " ".join(f"{c:>11s}" for c in cols))
    for name, t in table.items():
        print(f"{name:18s} " + " ".join(f"{t['all'][c]:11.3f}" for c in cols))
    print("\nper category (agentrt" + (" vs bm25" if "bm25" in table else "") + "):")
    for group in sorted(g for g in table["agentrt"] if g.startswith("cat")):
        a = table["agentrt"][group]
        b = table["bm25"][group] if "bm25" in table else None
        print(
            f"  {group:16s} n={a['evidence']:4d} "
            + " ".join(f"{c}: {a[c]:.3f}" + (f" ({b[c]:.3f})" if b else "") for c in cols)
        )
    print("per conversation (agentrt):")
    for group in sorted(g for g in table["agentrt"] if g.startswith("conv")):
        print(f"  {group:16s} " + " ".join(f"{c}: {table['agentrt'][group][c]:.3f}" for c in cols))
    lat = percentiles(search_s)
    where = "in-process" if args.in_process else "over gRPC (client wall time, this benchmark's small namespaces)"
    print(f"\nSearch {where}: {lat}")
    path = write_result(args.output, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
