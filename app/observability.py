"""What every process exposes on ``/metrics`` besides its own registry.

Each process keeps its metrics in a registry of its own (several can live in one test process). Two kinds
of metrics are process-wide and live in prometheus-client's default registry instead: the process and
Python collectors (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...) and the KIS REST
client's counters (``observer_kis_rest_*``). :func:`with_process_metrics` makes a process registry expose
them too, so one scrape of a process gives all of it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric


class _ProcessWide:
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def with_process_metrics(registry: CollectorRegistry) -> CollectorRegistry:
    """``registry``, also exposing the default registry's metrics (once per registry)."""
    if not getattr(registry, "_observer_process_wide", False):
        registry.register(_ProcessWide())
        registry._observer_process_wide = True  # type: ignore[attr-defined]
    return registry
