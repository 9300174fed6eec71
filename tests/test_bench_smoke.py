"""Each benchmark the README reports runs end to end with its one command, on tiny sizes (figures are not checked:
benchmarks measure, tests do not). The JSON goes to a temporary folder (AGENTRT_BENCH_RESULTS), never over the
committed bench/results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import SHARED

REPO = Path(__file__).resolve().parents[1]
# The benchmarks read LoCoMo from the shared data folder (../shared, or AGENTRT_SHARED), which is not part of the
# repository: where it is absent they cannot run, and these tests say so.
pytestmark = pytest.mark.skipif(
    not (SHARED / "data/locomo/locomo10_dev.json").is_file(),
    reason=f"benchmark data not found under {SHARED} (set AGENTRT_SHARED)",
)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "result", "keys"), [
    (["memory-locomo", "--conversations", "1", "--budgets", "200", "--output", "locomo"],
     "locomo.json", ["results", "search_latency"]),
    (["memory-latency", "--quick", "--units", "2000", "--queries", "20", "--write-sessions", "2", "--writers", "1",
      "--link-timeout", "10"], "memory_latency_quick.json", ["units_total", "writers"]),
    (["memory-gmm", "--sizes", "1000", "--baseline-cap-s", "5"], "memory_gmm.json", ["rows", "summary"]),
    (["agent", "--turns", "2", "--warmup", "1"], "agent.json", ["full", "graph_only_default_components"]),
    (["startup", "--rounds", "1"], "startup.json", ["rounds", "summary"]),
], ids=["memory-locomo", "memory-latency", "memory-gmm", "agent", "startup"])
def test_benchmark_runs_with_its_one_command(tmp_path: Path, args: list[str], result: str, keys: list[str]) -> None:
    env = {**os.environ, "AGENTRT_BENCH_RESULTS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / result).read_text())
    assert all(k in payload for k in keys)
