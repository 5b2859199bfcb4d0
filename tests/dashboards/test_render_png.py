"""dashboards.render_png against a fake Prometheus (the real one: test_integration.py)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dashboards import queries, render_png


@pytest.fixture
def fake_prometheus() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """Answers every query_range with two series (one rising with a NaN gap, one at 0)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            params = dict(urllib.parse.parse_qsl(url.query))
            seen.append({"path": url.path, **params})
            start, step = float(params["start"]), float(params["step"])
            values = [[start + i * step, "NaN" if i == 3 else str(i)] for i in range(10)]
            zeros = [[start + i * step, "0"] for i in range(10)]
            body: dict[str, Any] = {
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [
                        {"metric": {"rule": "r1", "phase": "prompt"}, "values": values},
                        {"metric": {"rule": "r2", "phase": "completion"}, "values": zeros},
                    ],
                },
            }
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_main_panels_are_timeseries_of_the_overview() -> None:
    panels = {p["title"]: p for p in queries.panels(queries.load(render_png.OVERVIEW))}
    for title in render_png.MAIN_PANELS:
        assert panels[title]["type"] == "timeseries", title


def test_legend_fills_grafana_templates() -> None:
    assert render_png.legend("{{rule}} ({{ severity }})", {"rule": "r", "severity": "high"}) == (
        "r (high)"
    )
    assert render_png.legend("", {"b": "2", "a": "1"}) == "a=1,b=2"
    assert render_png.legend("", {}) == "value"


def test_render_queries_every_target_and_writes_a_png(
    fake_prometheus: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    url, seen = fake_prometheus
    out = render_png.render(url, 1000.0, 1600.0, tmp_path / "o.png", rate_interval="30s")
    assert out.read_bytes().startswith(b"\x89PNG")
    board = queries.load(render_png.OVERVIEW)
    wanted = [
        queries.substitute(
            q.expr, {"__rate_interval": "30s", "__range": "600s", "__interval": "1s"}
        )
        for title in render_png.MAIN_PANELS
        for q in queries.panel_queries(board)
        if q.title == title
    ]
    assert [s["query"] for s in seen] == wanted
    assert {s["path"] for s in seen} == {"/api/v1/query_range"}
    assert {(s["start"], s["end"], s["step"]) for s in seen} == {("1000.000", "1600.000", "2.5")}


def test_render_refuses_unknown_panels(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no such panel"):
        render_png.render("http://127.0.0.1:9", 0, 1, tmp_path / "x.png", panels=["no such panel"])
