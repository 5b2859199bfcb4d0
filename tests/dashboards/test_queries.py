"""dashboards.queries: metric names from PromQL, variable substitution, panel targets."""

from __future__ import annotations

import pytest

from dashboards import queries


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (rule) (rate(a_total{rule=~"$rule"}[$__rate_interval]))', {"a_total"}),
        ("histogram_quantile(0.99, sum by (le, phase) (rate(x_bucket[5m])))", {"x_bucket"}),
        ("1000 * a / scalar(sum(rate(b_total[1m])))", {"a", "b_total"}),
        ("a / on() group_left() b", {"a", "b"}),
        ("sum(a) by (x, y) > bool 3 * avg(b offset 10m)", {"a", "b"}),
        ("count(count by (sha256) (info)) > 1 and c unless d or e", {"info", "c", "d", "e"}),
        ('a{le=~"0|0.0", s="x{y}"} > 1e-3', {"a"}),
        ("featureguard_sae_l0 < 1", {"featureguard_sae_l0"}),
        ("rate(a:recorded:rate5m[5m])", {"a:recorded:rate5m"}),
        ("time() - 3600", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert queries.metric_names(expr) == names


def test_substitute_replaces_every_form_and_names_unknown_variables() -> None:
    expr = 'rate(a{r=~"$rule", f="${feature}", g="[[g]]"}[$__rate_interval])'
    assert queries.variables(expr) == {"rule", "feature", "g", "__rate_interval"}
    values = {"rule": ".*", "feature": "f0", "g": "G", "__rate_interval": "1m"}
    assert queries.substitute(expr, values) == 'rate(a{r=~".*", f="f0", g="G"}[1m])'
    with pytest.raises(KeyError, match=r"\$feature"):
        queries.substitute(expr, {"rule": ".*"})


def test_panel_queries_flatten_collapsed_rows_and_skip_rows() -> None:
    dash = {
        "uid": "d",
        "panels": [
            {"type": "row", "id": 1, "panels": []},
            {"type": "timeseries", "id": 2, "title": "t", "targets": [{"refId": "A", "expr": "a"}]},
            {
                "type": "row",
                "id": 3,
                "collapsed": True,
                "panels": [
                    {
                        "type": "stat",
                        "id": 4,
                        "title": "s",
                        "fieldConfig": {"defaults": {"unit": "s"}},
                        "targets": [{"refId": "A", "expr": "b", "instant": True}],
                    }
                ],
            },
        ],
    }
    got = [(q.panel_id, q.expr, q.instant, q.unit) for q in queries.panel_queries(dash)]
    assert got == [(2, "a", False, ""), (4, "b", True, "s")]
    assert queries.panel_queries(dash)[1].where == 'd/4 "s" A'


def test_label_value_queries_reject_unknown_variable_queries() -> None:
    ok = {"templating": {"list": [{"type": "query", "name": "r", "query": "label_values(m, r)"}]}}
    assert queries.label_value_queries(ok) == [("r", "m", "r")]
    bad = {"templating": {"list": [{"type": "query", "name": "r", "query": "query_result(m)"}]}}
    with pytest.raises(ValueError, match=r"\$r"):
        queries.label_value_queries(bad)
