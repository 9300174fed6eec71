"""Prometheus metrics: per-RPC latency histograms, error counts by code, in-flight calls, store sizes.

Metrics are process-wide (one registry); components report sizes through ``register_size_reporter``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

RPC_LATENCY = Histogram(
    "agentrt_rpc_latency_seconds",
    "Server-side latency of each RPC",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.04, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RPC_ERRORS = Counter("agentrt_rpc_errors_total", "RPCs that ended with a non-OK status", ["method", "code"])
RPC_IN_FLIGHT = Gauge("agentrt_rpc_in_flight", "RPCs being served right now")
RPC_SHED = Counter("agentrt_rpc_shed_total", "RPCs rejected with RESOURCE_EXHAUSTED by the concurrency cap")

SizeReporter = Callable[[], dict[str, float]]


class _SizeCollector(Collector):
    """Asks every registered component for its sizes at scrape time (no bookkeeping on hot paths)."""

    def __init__(self) -> None:
        self._reporters: list[SizeReporter] = []
        self._lock = threading.Lock()

    def add(self, reporter: SizeReporter) -> None:
        with self._lock:
            self._reporters.append(reporter)

    def remove(self, reporter: SizeReporter) -> None:
        with self._lock:
            if reporter in self._reporters:
                self._reporters.remove(reporter)

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily("agentrt_store_size", "Sizes of stores and indexes", labels=["what"])
        with self._lock:
            reporters = list(self._reporters)
        for reporter in reporters:
            try:
                for what, value in reporter().items():
                    family.add_metric([what], float(value))
            except Exception:  # a broken reporter must not break the scrape
                log.exception("size reporter failed")
        yield family


_SIZES = _SizeCollector()
REGISTRY.register(_SIZES)


def register_size_reporter(reporter: SizeReporter) -> None:
    """Report ``{name: size}`` at every scrape, e.g. ``{"memory_units": 1234}``."""
    _SIZES.add(reporter)


def unregister_size_reporter(reporter: SizeReporter) -> None:
    _SIZES.remove(reporter)


def start_metrics_server(host: str, port: int) -> tuple[Any, int]:
    """Serve /metrics on a side HTTP port; returns (server, bound port)."""
    httpd, _thread = start_http_server(port, addr=host)
    return httpd, int(httpd.server_port)
