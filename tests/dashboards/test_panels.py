"""The committed dashboards: units, descriptions, $__rate_interval, the datasource variable,
and metric names that the exporter really produces (derived from the exprs, not a hand list)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dashboards import queries
from tests.dashboards.helpers import exported_metric_names

DASHBOARDS = queries.committed()
QUERIES = [q for d in DASHBOARDS.values() for q in queries.panel_queries(d)]
PANELS = [(name, p) for name, d in DASHBOARDS.items() for p in queries.panels(d)]
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase|delta|deriv)\s*\(([^()]*?)\[([^\]]*)\]")


def test_both_dashboards_are_committed() -> None:
    assert set(DASHBOARDS) == {"featureguard-overview.json", "featureguard-safety.json"}
    assert len(QUERIES) >= 20


@pytest.mark.parametrize(("name", "panel"), PANELS, ids=[f"{n}:{p.get('id')}" for n, p in PANELS])
def test_every_panel_has_unit_description_datasource_and_a_query(
    name: str, panel: dict[str, Any]
) -> None:
    where = f"{name} panel {panel.get('id')} {panel.get('title')!r}"
    assert (panel.get("description") or "").strip(), f"{where}: no description"
    assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
    assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, where
    assert panel.get("targets"), f"{where}: no query"
    ref_ids = [t["refId"] for t in panel["targets"]]
    assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), f"{where}: refIds {ref_ids}"


@pytest.mark.parametrize("dash", DASHBOARDS.values(), ids=list(DASHBOARDS))
def test_datasource_is_a_template_variable_and_ids_are_unique(dash: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids) and 0 not in ids


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.where)
def test_rates_use_rate_interval(q: queries.PanelQuery) -> None:
    found = RANGE_FUNCTION.findall(q.expr)
    for fn, _, window in found:
        allowed = {"$__rate_interval"} | ({"$__range"} if fn == "increase" and q.instant else set())
        assert window in allowed, f"{q.where}: {fn}(...[{window}]) in {q.expr}"
    # every range selector belongs to one of those functions (no bare [5m] elsewhere)
    assert q.expr.count("[") == len(found), f"{q.where}: unexpected range selector in {q.expr}"


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.where)
def test_metric_names_exist_in_a_fresh_exporter_registry(q: queries.PanelQuery) -> None:
    names = queries.metric_names(q.expr)
    assert names, f"{q.where}: no metric in {q.expr}"
    unknown = names - exported_metric_names()
    assert not unknown, f"{q.where}: {sorted(unknown)} not exported by monitor.metrics"


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.where)
def test_only_known_variables_are_used(q: queries.PanelQuery) -> None:
    dash = next(d for d in DASHBOARDS.values() if d["uid"] == q.dashboard)
    declared = {v["name"] for v in dash["templating"]["list"]}
    builtin = {"__rate_interval", "__range", "__interval"}
    assert queries.variables(q.expr) <= declared | builtin, q.where


def test_label_value_variables_use_exported_metrics() -> None:
    for dash in DASHBOARDS.values():
        for name, metric, _ in queries.label_value_queries(dash):
            assert metric in exported_metric_names(), f"${name}: {metric}"


def test_every_exported_metric_family_is_on_a_dashboard() -> None:
    used = {n for q in QUERIES for n in queries.metric_names(q.expr)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported_metric_names()}
    missing = {f for f in families if not any(u.startswith(f) for u in used)}
    assert not missing, f"metrics no panel shows: {sorted(missing)}"
