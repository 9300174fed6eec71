"""Helpers shared by benchmarks: machine description, percentiles, JSON results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

# AGENTRT_BENCH_RESULTS redirects the JSON (the smoke tests run every benchmark briefly without touching the
# committed results).
RESULTS = Path(os.environ.get("AGENTRT_BENCH_RESULTS") or Path(__file__).parent / "results")
SHARED = Path(os.environ.get("AGENTRT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def embedding_precision() -> str:
    """The embedder precision of this run: ``AGENTRT_EMBEDDING__PRECISION`` (default fp32), which the
    sidecars a benchmark starts read too, so its in-process baselines and seeded vectors match theirs."""
    return os.environ.get("AGENTRT_EMBEDDING__PRECISION", "fp32")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "embedding_precision": embedding_precision(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import faiss

        info["faiss"] = {"version": faiss.__version__, "gpus": int(faiss.get_num_gpus())}
    except Exception:
        info["faiss"] = None
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["gpu"] = None
    return info


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    arr = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "n": 0}
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "n": int(arr.size),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json with the machine and a timestamp added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    return path
