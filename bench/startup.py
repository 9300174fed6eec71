"""startup: time from launching ``agentrt serve`` to SERVING, first start against the starts after it.

    python -m bench startup [--rounds 3]

Each round makes a fresh data directory (SQLite, empty database, the bundled model in fp32 or
``AGENTRT_EMBEDDING__PRECISION``) and starts a real ``agentrt serve`` subprocess on it twice:
- **first start**: nothing cached: the model is loaded with torch and exported to ONNX, the guard pack is
  embedded, and both are written to ``<data_dir>/cache``;
- **restart**: the same data directory: the ONNX encoder and the pack vectors are read from the cache.
Each start is timed from the launch to the health check answering SERVING (client side), and the server's
own ``startup_s`` (from listening to SERVING) is read from its log. The baseline, in the same run, is the
floor any start pays: a Python process that imports the server's modules (``runtime.server``) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write_result
from runtime.process import REPO, ServerProcess


def _start(data_dir: Path) -> tuple[float, float | None, bool]:
    """Seconds to SERVING, the server's own start-up seconds, and whether it opened the cached encoder."""
    began = time.perf_counter()
    server = ServerProcess(data_dir)
    elapsed = time.perf_counter() - began
    log = server.log_tail(1_000_000)
    server.stop()
    startup_s = None
    for line in log.splitlines():
        if '"serving"' in line:
            with contextlib.suppress(ValueError, TypeError):
                startup_s = float(json.loads(line).get("startup_s"))
    return elapsed, startup_s, "embedding encoder loaded from its cache" in log


def _import_floor() -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = ['.', 'proto']; import runtime.server"],
                   cwd=REPO, check=True)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    floor: list[float] = []
    for round_ in range(args.rounds):
        data = Path(tempfile.mkdtemp(prefix="agentrt-bench-startup-"))
        try:
            floor.append(_import_floor())
            first = _start(data)
            again = _start(data)
            cache_bytes = sum(p.stat().st_size for p in (data / "cache").rglob("*") if p.is_file())
        finally:
            shutil.rmtree(data, ignore_errors=True)
        row = {
            "round": round_ + 1,
            "first_start_s": round(first[0], 2),
            "first_server_startup_s": first[1],
            "restart_s": round(again[0], 2),
            "restart_server_startup_s": again[1],
            "restart_used_cached_encoder": again[2],
            "import_floor_s": round(floor[-1], 2),
            "cache_mb": round(cache_bytes / 2**20, 1),
        }
        rows.append(row)
        print(f"round {row['round']}: first start {row['first_start_s']:.1f} s (server {first[1]} s), "
              f"restart {row['restart_s']:.1f} s (server {again[1]} s, cached encoder: {again[2]}); "
              f"baseline: importing the server's modules {row['import_floor_s']:.1f} s")

    summary = {
        "first_start_s_median": round(statistics.median(r["first_start_s"] for r in rows), 2),
        "restart_s_median": round(statistics.median(r["restart_s"] for r in rows), 2),
        "import_floor_s_median": round(statistics.median(floor), 2),
    }
    summary["restart_over_first"] = round(summary["restart_s_median"] / summary["first_start_s_median"], 3)
    print(f"median: first start {summary['first_start_s_median']} s, restart {summary['restart_s_median']} s "
          f"({summary['restart_over_first']:.2f}x), import floor {summary['import_floor_s_median']} s")
    path = write_result("startup", {"rounds": rows, "summary": summary, "setup": {
        "database": "SQLite, empty", "model": "bundled all-MiniLM-L6-v2", "timed": "launch to health SERVING",
    }})
    print(f"wrote {path}")
    return 0
