"""Draw the operator overview's main panels from a live Prometheus into one PNG (matplotlib).

Grafana is not installable here, so the README's figure is made from the same PromQL the
dashboard runs, queried over a time range with ``/api/v1/query_range``, and says so in its
title: it is not a Grafana screenshot.

    python -m dashboards.render_png --prometheus http://127.0.0.1:9090 --last 10m -o out.png

The integration test (tests/dashboards/test_integration.py) calls :func:`render` at the end of
its run; with ``FEATUREGUARD_WRITE_README_PNG=1`` it also writes ``dashboards/overview.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboards import queries

OVERVIEW = queries.HERE / "featureguard-overview.json"
MAIN_PANELS = (
    "Tokens monitored / s",
    "Requests / s",
    "HTTP latency p50 / p99 by endpoint",
    "Rule matches / s by rule and severity",
    "Actions / s by type",
    "Sequences stopped / replaced per s",
    "Alert deliveries / s",
    "Responses ended by the content filter / s",
    "Degraded tokens / s",
    "Audit events / s",
    "Monitor step overhead p50 / p99",
    "SAE explained variance (sampled)",
)
"""Overview panels drawn, in this order (a test checks each exists on the dashboard)."""
TITLE = (
    "featureguard operator overview: rendered with matplotlib from real Prometheus query "
    "results of the integration run (not a Grafana screenshot)"
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """``/api/v1/query_range`` of ``expr``; the result's series (``metric``, ``values``)."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    full = f"{url.rstrip('/')}/api/v1/query_range?{urllib.parse.urlencode(params)}"
    with _NO_PROXY.open(full, timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's ``{{label}}`` legend template filled from a series' labels."""
    text = _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template).strip()
    return text or ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def _axis(ax: Any, unit: str) -> None:
    from matplotlib.ticker import EngFormatter, PercentFormatter

    if unit == "s":
        ax.yaxis.set_major_formatter(EngFormatter(unit="s"))
    elif unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit.startswith("suffix:"):
        ax.set_ylabel(unit.removeprefix("suffix:").strip())
    elif unit == "reqps":
        ax.set_ylabel("req/s")


def render(
    prometheus_url: str,
    start: float,
    end: float,
    out: Path | str,
    *,
    panels: Sequence[str] = MAIN_PANELS,
    rate_interval: str = "15s",
    dashboard: Path = OVERVIEW,
) -> Path:
    """Query each of ``panels`` (titles on ``dashboard``) from ``start`` to ``end`` (Unix
    seconds) and draw them on a grid; returns ``out``. ``$__rate_interval`` becomes
    ``rate_interval``; other variables take their "All" value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = queries.load(dashboard)
    by_title = {p["title"]: p for p in queries.panels(board)}
    missing = [t for t in panels if t not in by_title]
    if missing:
        raise KeyError(f"{dashboard.name} has no panel {missing}")
    values = {"__rate_interval": rate_interval, "__range": f"{math.ceil(end - start)}s"}
    values["__interval"] = "1s"
    step = max(1.0, (end - start) / 240)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.3 * rows), squeeze=False)
    for ax, title in zip(axes.flat, panels, strict=False):
        panel = by_title[title]
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        quiet = 0
        for target in panel["targets"]:
            expr = queries.substitute(target["expr"], values)
            for series in query_range(prometheus_url, expr, start, end, step):
                t = [float(ts) - start for ts, _ in series["values"]]
                y = [float(v) for _, v in series["values"]]
                name = legend(target.get("legendFormat", ""), series["metric"])
                if all(v == 0 or math.isnan(v) for v in y):
                    ax.plot(t, y, color="0.8", linewidth=1)  # at zero all run: not in the legend
                    quiet += 1
                else:
                    ax.plot(t, y, linewidth=1.6, label=name)
        ax.set_title(title, fontsize=11, loc="left")
        _axis(ax, unit)
        ax.set_xlim(0, end - start)
        if all(v >= 0 for line in ax.get_lines() for v in line.get_ydata() if not math.isnan(v)):
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        handles, _ = ax.get_legend_handles_labels()
        note = f"grey: {quiet} series at 0 all run" if quiet else None
        if handles:
            ax.legend(fontsize=7, loc="upper left", title=note, title_fontsize=7)
        elif note:
            ax.text(0.02, 0.92, note, transform=ax.transAxes, fontsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds since the start of the run", fontsize=8)
    fig.suptitle(TITLE, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 90s, 10m, 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dashboards.render_png", description=__doc__.splitlines()[0])
    p.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--last", type=_seconds, default=600.0, help="time range ending now")
    p.add_argument("--rate-interval", default="15s", help="value of $__rate_interval")
    p.add_argument("-o", "--out", type=Path, default=Path("overview.png"))
    args = p.parse_args(argv)
    end = time.time()
    print(render(args.prometheus, end - args.last, end, args.out, rate_interval=args.rate_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
