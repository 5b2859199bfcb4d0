"""Shared by the dashboard tests: the metric names a fresh exporter registry can produce."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import CollectorRegistry

from monitor.metrics import Metrics

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum"),
}


@lru_cache(maxsize=1)
def exported_metric_names() -> frozenset[str]:
    """Every sample name of every family a fresh ``Metrics`` registers (no hand list)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in SUFFIXES[family.type])
    return frozenset(names)
