"""Read the PromQL back out of generated dashboards: every panel target, the metric names an
expression uses, and Grafana variable substitution.

Used by the tests (metric names must exist in the exporter; every query must return data from a
real Prometheus) and by ``render_png``. The metric-name extraction is a small lexer, not a full
PromQL parser: it drops strings, label matchers, range selectors, grouping clauses, numbers and
durations, then every remaining identifier not followed by ``(`` and not a keyword is a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_DURATION = re.compile(r"\b\d+(?:ms|s|m|h|d|w|y)\b")
_NUMBER = re.compile(r"(?<![A-Za-z_:])(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "atan2", "inf", "nan"}
)
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)$")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel."""

    dashboard: str  # the dashboard's uid
    panel_id: int
    title: str
    ref_id: str
    expr: str
    instant: bool
    unit: str
    panel_type: str

    @property
    def where(self) -> str:
        """``uid/panel id "title" refId``, for error messages."""
        return f'{self.dashboard}/{self.panel_id} "{self.title}" {self.ref_id}'


def load(path: Path | str) -> dict[str, Any]:
    """A dashboard JSON file as a dict."""
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def committed(folder: Path = HERE) -> dict[str, dict[str, Any]]:
    """The committed dashboards in ``folder``: file name → JSON."""
    return {p.name: load(p) for p in sorted(folder.glob("featureguard-*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows and their collapsed children flattened, rows skipped)."""
    for p in dashboard.get("panels") or []:
        if p.get("type") == "row":
            yield from (c for c in p.get("panels") or [] if c.get("type") != "row")
        else:
            yield p


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every PromQL target of every panel, in layout order."""
    out = []
    for p in panels(dashboard):
        unit = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit") or ""
        for t in p.get("targets") or []:
            out.append(
                PanelQuery(
                    dashboard=dashboard.get("uid") or "",
                    panel_id=int(p.get("id") or 0),
                    title=p.get("title") or "",
                    ref_id=t.get("refId") or "",
                    expr=t.get("expr") or "",
                    instant=bool(t.get("instant")),
                    unit=unit,
                    panel_type=p.get("type") or "",
                )
            )
    return out


def variables(expr: str) -> set[str]:
    """Names of the Grafana variables ``expr`` uses (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``)."""
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every Grafana variable replaced from ``values``; an unknown variable is a
    ``KeyError`` naming it and the expression."""

    def repl(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(repl, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (see the module docstring)."""
    s = _VARIABLE.sub("x", expr)
    s = _STRING.sub('""', s)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _DURATION.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(0)
        if word.lower() in _KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def label_value_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(variable, metric, label)`` of every ``label_values(metric, label)`` query variable."""
    out = []
    for v in (dashboard.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        m = _LABEL_VALUES.match(str(v.get("query") or "").strip())
        if m is None:
            raise ValueError(f"variable ${v.get('name')}: unsupported query {v.get('query')!r}")
        out.append((v["name"], m.group(1), m.group(2)))
    return out
