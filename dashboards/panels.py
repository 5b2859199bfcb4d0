"""Small typed builders shared by both dashboards (grafana-foundation-sdk underneath).

Every helper takes the panel's title, a description and a unit, so no panel can be built
without them, and points the panel at the ``${datasource}`` template variable. Targets are
PromQL strings; their ``refId`` is assigned in order (A, B, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel and variable queries the data source chosen in the ``datasource`` variable."""


@dataclass(frozen=True)
class Q:
    """One PromQL target: ``expr``, its legend template, and whether it is an instant query."""

    expr: str
    legend: str = ""
    instant: bool = False
    fmt: PromQueryFormat = PromQueryFormat.TIME_SERIES


def _targets(queries: Sequence[Q]) -> list[Builder[Dataquery]]:
    out: list[Builder[Dataquery]] = []
    for i, q in enumerate(queries):
        t = prom.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).format(q.fmt)
        t = t.instant() if q.instant else t.range()
        if q.legend:
            t = t.legend_format(q.legend)
        out.append(t)
    return out


PanelT = TypeVar("PanelT", timeseries.Panel, stat.Panel, table.Panel, bargauge.Panel, heatmap.Panel)


def _panel(
    p: PanelT, title: str, description: str, unit: str, queries: Sequence[Q], width: int
) -> PanelT:
    """What every panel has: title, description, unit, the ``${datasource}``, targets, size."""
    return (
        p.title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .span(width)
        .height(8)
    )


def _legend(as_table: bool = False) -> common_b.VizLegendOptions:
    return (
        common_b.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE if as_table else common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"] if as_table else [])
    )


def ts(
    title: str,
    description: str,
    unit: str,
    *queries: Q,
    width: int = 12,
    stack: bool = False,
    legend_table: bool = False,
) -> timeseries.Panel:
    """A time series panel (lines; stacked areas with ``stack``)."""
    p = (
        _panel(timeseries.Panel(), title, description, unit, queries, width)
        .min(0)
        .fill_opacity(25 if stack else 10)
        .line_width(1)
        .legend(_legend(legend_table))
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if stack:
        p = p.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
    return p


def stat_panel(title: str, description: str, unit: str, *queries: Q, width: int = 6) -> stat.Panel:
    """A single big number (last value), e.g. the number of distinct policy hashes."""
    return (
        _panel(stat.Panel(), title, description, unit, queries, width)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def table_panel(
    title: str, description: str, unit: str, *queries: Q, width: int = 12
) -> table.Panel:
    """A table of an instant query's series (one row per label set)."""
    return (
        _panel(table.Panel(), title, description, unit, queries, width)
        .show_header(True)
        .with_transformation(
            DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True, "__name__": True}}
            )
        )
    )


def bars(title: str, description: str, unit: str, *queries: Q, width: int = 12) -> bargauge.Panel:
    """Horizontal bars of an instant query, one per series (e.g. the top rules)."""
    return (
        _panel(bargauge.Panel(), title, description, unit, queries, width)
        .min(0)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def heatmap_panel(
    title: str, description: str, unit: str, *queries: Q, width: int = 12
) -> heatmap.Panel:
    """A heatmap of pre-bucketed Prometheus histogram rates (``format: heatmap``)."""
    return (
        _panel(heatmap.Panel(), title, description, unit, queries, width)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .cell_values(heatmap.CellValues().unit("short"))
        .show_legend()
        .show_tooltip()
    )


def datasource_variable() -> dashboard.DatasourceVariable:
    """``$datasource``: any Prometheus data source (provisioning sets a default)."""
    return (
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .description("The Prometheus that scrapes featureguard")
        .type("prometheus")
    )


def label_variable(name: str, label: str, metric: str, description: str) -> dashboard.QueryVariable:
    """A multi-select variable over ``label_values(metric, name)``; "All" is the regex ``.*``."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
