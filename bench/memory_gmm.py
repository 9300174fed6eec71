"""memory-gmm: cost of GMM association as a namespace grows (1k → 100k units).

    python -m bench memory-gmm [--sizes 1000,3000,10000,30000,100000] [--quick]

For each size n, a ``NamespaceIndex`` is filled with n unit vectors distributed like real memory
(blends of two real MiniLM embeddings of LoCoMo turns, see ``bench/memory_latency.py``), then:
- cold refit: PCA + GaussianMixture on the capped sample and reassignment of every unit;
- a background linking pass (1,000 units), reported per unit;
- warm refit after 25% growth (the next scheduled refit);
- per-Write cost: linking 10 new units into the fitted clusters (what the background worker does
  after each derived session), for the first Write after that refit (which builds the candidates of
  each cluster it touches) and as the mean over the next ``WRITES`` Writes (which reuse and extend them);
next to the baseline measured in the same run: a plain ``GaussianMixture`` (same K, diagonal, full
384-d) fitted on all n units, the uncapped approach, run while it stays under a time cap.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import embedding_precision, machine, write_result
from bench.memory_latency import load_locomo, pool_for_faiss

# Writes of 10 new units timed after the warm refit (the first one apart).
WRITES = 50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory-gmm", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    parser.add_argument("--baseline-cap-s", type=float, default=60.0, help="skip the uncapped baseline beyond this")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,3000,10000")
    args = parser.parse_args(argv)
    sizes = [1000, 3000, 10000] if args.quick else [int(x) for x in args.sizes.split(",")]

    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    # Capped iterations end before convergence by design; the warning would drown the table.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    from core.embedding import create_embedder
    from memory.association import AssociationConfig, AssociationManager
    from memory.index import NamespaceIndex
    from memory.model import Granularity, MemoryUnit
    from memory.store import InMemoryStore, StoredUnit

    sessions, _ = load_locomo()
    texts = [f"{spk}: {text}" for s in sessions for _, spk, text in s["turns"]][:3000]
    pool = create_embedder(precision=embedding_precision()).embed(texts)
    config = AssociationConfig()
    rows: list[dict[str, Any]] = []
    baseline_alive = True
    print(
        f"{'units':>8} {'K':>4} {'cold refit s':>13} {'warm refit s':>13} {'1st link/Write ms':>18} "
        f"{'link/Write ms':>14} {'link ms/unit':>12} "
        f"{'uncapped GMM s':>15}"
    )
    for n in sizes:
        total = int(n * 1.25) + 10 * (WRITES + 1)
        vectors = pool_for_faiss(pool, total, seed=n)

        def stored(i: int, vectors: Any = vectors) -> StoredUnit:
            unit = MemoryUnit(f"u{i}", Granularity.TURN, f"unit {i}", (f"m{i}",), f"s{i // 20}")
            return StoredUnit(unit, i + 1, vectors[i], "bench")

        index = NamespaceIndex(pool.shape[1], vector_factory=lambda d: _flat(d))
        index.apply((), [stored(i) for i in range(n)])
        manager = AssociationManager(InMemoryStore(), config)
        t = time.perf_counter()
        model = manager.refit("bench/ns", index)
        cold = time.perf_counter() - t
        assert model is not None
        t = time.perf_counter()
        linked = manager.link_backlog("bench/ns", index, limit=1000)
        link_pass_ms_per_unit = (time.perf_counter() - t) * 1000 / max(linked, 1)
        index.apply((), [stored(i) for i in range(n, int(n * 1.25))])
        t = time.perf_counter()
        manager.refit("bench/ns", index)
        warm = time.perf_counter() - t
        link_times = []
        for start in range(int(n * 1.25), total, 10):
            new = [stored(i) for i in range(start, start + 10)]
            index.apply((), new)
            t = time.perf_counter()
            manager.link("bench/ns", index, [s.key for s in new])
            link_times.append((time.perf_counter() - t) * 1000)
        first_link_ms, link_ms = link_times[0], sum(link_times[1:]) / len(link_times[1:])
        baseline = None
        if baseline_alive:
            t = time.perf_counter()
            GaussianMixture(
                n_components=model.k,
                covariance_type="diag",
                max_iter=config.max_iter,
                init_params="k-means++",
                reg_covar=1e-4,
                random_state=0,
            ).fit(vectors[:n])
            baseline = time.perf_counter() - t
            baseline_alive = baseline < args.baseline_cap_s / 3.5  # the next size is ~3x larger
        rows.append(
            {
                "units": n,
                "clusters": model.k,
                "cold_refit_s": round(cold, 3),
                "warm_refit_s": round(warm, 3),
                "first_link_after_refit_ms": round(first_link_ms, 2),
                "link_per_write_ms": round(link_ms, 2),
                "edges": index.edge_count(),
                "link_pass_ms_per_unit": round(link_pass_ms_per_unit, 3),
                "uncapped_gmm_fit_s": None if baseline is None else round(baseline, 3),
            }
        )
        print(
            f"{n:>8} {model.k:>4} {cold:>13.3f} {warm:>13.3f} {first_link_ms:>18.2f} {link_ms:>14.2f} "
            f"{link_pass_ms_per_unit:>12.3f} "
            f"{'skipped' if baseline is None else f'{baseline:.3f}':>15}"
        )
    first, last = rows[0], rows[-1]
    growth = last["units"] / first["units"]
    summary = {
        "size_growth": growth,
        "warm_refit_growth": round(last["warm_refit_s"] / max(first["warm_refit_s"], 1e-9), 2),
        "cold_refit_growth": round(last["cold_refit_s"] / max(first["cold_refit_s"], 1e-9), 2),
        "link_per_write_growth": round(last["link_per_write_ms"] / max(first["link_per_write_ms"], 1e-9), 2),
    }
    print(
        f"units grew {growth:.0f}x; warm refit grew {summary['warm_refit_growth']}x, "
        f"per-Write linking {summary['link_per_write_growth']}x"
    )
    path = write_result(
        "memory_gmm_quick" if args.quick else "memory_gmm",
        {"config": config.__dict__, "rows": rows, "summary": summary},
    )
    print(f"machine: {machine()['cpu_count']} CPUs; wrote {path}")
    return 0


def _flat(dim: int) -> Any:
    from core.vector_index import FaissVectorIndex

    return FaissVectorIndex(dim)


if __name__ == "__main__":
    raise SystemExit(main())
