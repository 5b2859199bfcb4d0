"""The dashboards and alerts against the real thing: Debian's ``prometheus`` and
``prometheus-alertmanager`` binaries, ``featureguard serve`` with a tiny model and a policy whose
rules fire, and a webhook receiver run by the test. Everything listens on 127.0.0.1 and is
stopped at the end (on failure too).

The checks: every PromQL expression of every panel of both committed dashboards returns data
(the list comes from the dashboards, so a metric removed from the exporter fails here), the
template variables have values, and the shipped critical-rule alert fires in Prometheus, reaches
Alertmanager and is forwarded to the webhook. Finally the operator overview is rendered to PNG
from the run's Prometheus data (``FEATUREGUARD_WRITE_README_PNG=1`` also writes
``dashboards/overview.png``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from dashboards import queries
from monitor.receiver import AlertReceiver
from sae.base import SAE
from tests.dashboards.helpers import DASHBOARDS, ROOT, need, synthetic_sae, write_policy
from tests.dashboards.stack import (
    Process,
    alertmanager_config,
    clean_env,
    free_port,
    get_json,
    http_ok,
    prometheus_config,
    serve_url,
    short_for_alert_rules,
    wait_for,
    write_yaml,
)
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer
from tests.monitor.runtime.helpers import hidden, hook_of

pytestmark = pytest.mark.integration

MODEL_NAME = "tiny"
VARIABLES = {
    "__rate_interval": "2m",  # ≥ 4 scrapes of 1 s, and the whole run fits in it
    "__range": "10m",
    "__interval": "1s",
    "rule": ".*",  # the variables' "All" value
    "feature": ".*",
}
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send your bank password to claim the prize money now!",
    "Once upon a time a careful engineer wrote small tests.",
]
CRITICAL_ALERT = "FeatureguardCriticalRuleMatched"
ANSWERED = 'featureguard_http_requests_total{endpoint=~"/v1/(chat/)?completions"}'


@dataclass
class Run:
    serve_url: str
    prometheus_url: str
    alertmanager_url: str
    receiver: AlertReceiver
    processes: list[Process]
    tmp: Path
    started: float
    finishes: dict[str, str | None] = field(default_factory=dict)
    traffic: tuple[float, float] = (0.0, 0.0)  # Unix seconds: first request, last answer

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = get_json(f"{self.prometheus_url}/api/v1/query", {"query": expr})
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}):\n{p.output(2000)}" for p in self.processes)


def _tiny_model_and_sae(folder: Path) -> SAE:
    """Save the tiny llama under ``folder``; return an SAE on its middle layer whose rule
    features fire (see ``synthetic_sae``) and which reconstructs the top 14 principal
    directions of the hidden states of the test's prompts, chat-templated and plain."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    hook = hook_of(model)
    texts = PROMPTS + [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    rows = [hidden(model, hook, tok(t, return_tensors="pt")["input_ids"])[0, 1:] for t in texts]
    x = torch.cat(rows)  # (N, d): every token but each text's first (an outlier position)
    center = x.mean(0)  # (d,)
    _, _, vt = torch.linalg.svd(x - center, full_matrices=False)  # vt: (d, d), rows = PCs
    return synthetic_sae(x.shape[1], hook, center=center, basis=vt[:14])


def _send_traffic(url: str) -> dict[str, str | None]:
    """Chat and text completions, streamed and not, from users the critical rule applies to and
    from a trusted user it exempts; returns each request's finish_reason."""
    from openai import OpenAI

    with pytest.MonkeyPatch.context() as env:
        for key in ("NO_PROXY", "no_proxy"):  # the client honours proxy variables: bypass them
            env.setenv(key, "127.0.0.1,localhost")
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == [MODEL_NAME]
        finishes: dict[str, str | None] = {}
        for i, prompt in enumerate(PROMPTS):
            chat = client.chat.completions.create(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=8,
                user=f"user-{i}",
            )
            finishes[f"chat user-{i}"] = chat.choices[0].finish_reason
        trusted = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": PROMPTS[0]}],
            max_tokens=8,
            user="trusted-ops",
        )
        finishes["chat trusted-ops"] = trusted.choices[0].finish_reason
        text = client.completions.create(
            model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=8, user="user-text"
        )
        finishes["completion user-text"] = text.choices[0].finish_reason
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": PROMPTS[2]}],
            max_tokens=8,
            user="user-stream",
            stream=True,
        )
        last = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                last = chunk.choices[0].finish_reason
        finishes["stream user-stream"] = last
    return finishes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    prometheus, alertmanager = need("prometheus"), need("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("stack")
    processes: list[Process] = []
    with ExitStack() as stack:
        receiver = AlertReceiver().start()
        stack.callback(receiver.close)

        am_port = free_port()
        am_config = write_yaml(
            tmp / "alertmanager.yml", alertmanager_config(f"{receiver.url}/alertmanager")
        )
        am = Process(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={am_config}",
                f"--storage.path={tmp / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp / "alertmanager.log",
            env=clean_env(),
        )
        processes.append(am)
        stack.callback(am.stop)
        am_url = f"http://127.0.0.1:{am_port}"

        sae = _tiny_model_and_sae(tmp / "model")
        policy = write_policy(tmp / "policy", sae, am_url, channel_type="alertmanager")
        serve = Process(
            "featureguard serve",
            [
                sys.executable,
                "-m",
                "monitor",
                "serve",
                "--model",
                str(tmp / "model"),
                "--model-name",
                MODEL_NAME,
                "--policy",
                str(policy),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--audit-log",
                str(tmp / "audit.jsonl"),
                "--preflight",
                "off",  # the synthetic SAE does not reconstruct the tiny model's activations
            ],
            tmp / "serve.log",
            cwd=ROOT,
            env=clean_env(
                HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1",
                FEATUREGUARD_HOME=str(tmp / "home"),
            ),
        )
        processes.append(serve)
        stack.callback(serve.stop)

        wait_for("Alertmanager /-/ready", lambda: http_ok(f"{am_url}/-/ready"), 60, am)
        url = wait_for("featureguard serve to listen", lambda: serve_url(serve.log), 180, serve)
        wait_for("featureguard serve /readyz", lambda: http_ok(f"{url}/readyz"), 60, serve)

        rules = write_yaml(tmp / "alerts.yml", short_for_alert_rules())
        prom_port = free_port()
        prom_config = write_yaml(
            tmp / "prometheus.yml",
            prometheus_config(url.removeprefix("http://"), f"127.0.0.1:{am_port}", rules),
        )
        prom = Process(
            "prometheus",
            [
                prometheus,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp / "prometheus.log",
            env=clean_env(),
        )
        processes.append(prom)
        stack.callback(prom.stop)
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_for("Prometheus /-/ready", lambda: http_ok(f"{prom_url}/-/ready"), 60, prom)

        result = Run(url, prom_url, am_url, receiver, processes, tmp, time.time())
        wait_for(
            "Prometheus to scrape featureguard serve",
            lambda: result.query('up{job="featureguard"} == 1'),
            60,
            *processes,
        )
        first = time.time()
        result.finishes = _send_traffic(url)
        result.traffic = (first, time.time())
        # the last request is in Prometheus once a scrape counted every answered request
        wait_for(
            "the traffic to be scraped",
            lambda: result.query(f"sum({ANSWERED}) >= {len(result.finishes)}"),
            60,
            *processes,
        )
        yield result
    for p in processes:
        assert p.proc.poll() is not None, f"{p.name} (pid {p.proc.pid}) still running"


def test_rules_fired_on_the_traffic(run: Run) -> None:
    """The critical stop rule ends untrusted requests; its user exception spares trusted-ops."""
    filtered = {k for k, v in run.finishes.items() if v == "content_filter"}
    assert filtered == set(run.finishes) - {"chat trusted-ops"}, run.finishes


@pytest.mark.parametrize("name", sorted(queries.committed()))
def test_every_panel_query_returns_data(run: Run, name: str) -> None:
    dashboard = queries.committed()[name]
    empty: list[str] = []

    def all_return_data() -> bool:
        empty.clear()
        for q in queries.panel_queries(dashboard):
            expr = queries.substitute(q.expr, VARIABLES)
            if not run.query(expr):
                empty.append(f"{q.where}: {expr}")
        return not empty

    try:  # a series created at the first request needs two scrapes before rate() sees it
        wait_for(f"every query of {name} to return data", all_return_data, 30, *run.processes)
    except AssertionError:
        pytest.fail(
            f"{len(empty)} panel queries of {name} returned no data:\n  " + "\n  ".join(empty)
        )


def _series(run: Run, dashboard: str, title: str, ref: str = "A") -> dict[str, float]:
    """The panel target's result as ``{legend-ish label text: value}``."""
    q = next(
        q
        for q in queries.panel_queries(queries.committed()[dashboard])
        if q.title == title and q.ref_id == ref
    )
    out = {}
    wide = {**VARIABLES, "__rate_interval": "10m"}  # the whole run, however slow the machine
    for s in run.query(queries.substitute(q.expr, wide)):
        labels = ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()))
        out[labels] = float(s["value"][1])
    return out


def test_panels_show_the_traffic(run: Run) -> None:
    """The panels do not just return series: they show what the traffic did."""
    overview, safety = "featureguard-overview.json", "featureguard-safety.json"
    matches = _series(run, overview, "Rule matches / s by rule and severity")
    assert matches["rule=critical-stop,severity=critical"] > 0, matches
    assert matches["rule=never-replace,severity=low"] == 0, matches
    stopped = _series(run, overview, "Sequences stopped / replaced per s")
    assert stopped["rule=critical-stop"] > 0, stopped
    sent = _series(run, overview, "Alert deliveries / s", "B")
    assert sent["channel=oncall"] > 0, sent
    modes = _series(run, safety, "Shadow vs enforce")
    assert modes["mode=enforce"] > 0 and modes["mode=shadow"] > 0, modes
    filtered = _series(run, overview, "Responses ended by the content filter / s")
    assert filtered["endpoint=/v1/chat/completions"] > 0, filtered
    (hashes,) = _series(run, overview, "Distinct policy hashes").values()
    assert hashes == 1
    ev = _series(run, overview, "SAE explained variance (sampled)")
    assert ev and all(math.isfinite(v) for v in ev.values()), ev  # sampled, not NaN
    l0 = _series(run, overview, "SAE L0 (sampled)")
    assert l0 and all(v >= 1 for v in l0.values()), l0  # f0 alone is active on every token


def test_template_variables_have_values(run: Run) -> None:
    for name, dashboard in queries.committed().items():
        for variable, metric, label in queries.label_value_queries(dashboard):
            body = get_json(
                f"{run.prometheus_url}/api/v1/label/{label}/values", {"match[]": metric}
            )
            assert body["data"], f"{name}: ${variable} has no values"
    rules = get_json(f"{run.prometheus_url}/api/v1/label/rule/values")["data"]
    assert {"critical-stop", "f1-alert", "f2-shadow", "never-replace"} <= set(rules)


def test_critical_rule_alert_reaches_the_webhook_through_alertmanager(run: Run) -> None:
    def firing() -> list[dict[str, Any]]:
        alerts = get_json(f"{run.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == CRITICAL_ALERT and a["state"] == "firing"
        ]

    (alert,) = wait_for(f"{CRITICAL_ALERT} to fire in Prometheus", firing, 60, *run.processes)
    assert alert["labels"]["rule"] == "critical-stop"
    assert alert["labels"]["severity"] == "critical"

    def in_alertmanager() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get_json(
            f"{run.alertmanager_url}/api/v2/alerts", {"filter": f'alertname="{CRITICAL_ALERT}"'}
        )
        return found

    wait_for(f"{CRITICAL_ALERT} in Alertmanager", in_alertmanager, 60, *run.processes)

    def delivered(alertname: str) -> list[dict[str, Any]]:
        return [
            a
            for path, body in list(run.receiver.received)
            if path == "/alertmanager" and isinstance(body, dict)
            for a in body.get("alerts", [])
            if a["labels"].get("alertname") == alertname
        ]

    (hook,) = wait_for(
        "the webhook to receive it", lambda: delivered(CRITICAL_ALERT)[:1], 60, *run.processes
    )
    assert hook["status"] == "firing"
    assert hook["labels"]["rule"] == "critical-stop"
    assert hook["annotations"]["runbook_url"].endswith("#featureguardcriticalrulematched")
    # featureguard's own per-match alerts (channel type alertmanager) take the same route
    assert wait_for(
        "featureguard's direct alert", lambda: delivered("critical-stop"), 60, *run.processes
    )


def test_render_the_overview_png(run: Run, tmp_path: Path) -> None:
    """The README figure: the run's traffic plus the 10 s rate window after it."""
    from dashboards import render_png

    start, end = run.traffic[0] - 5, run.traffic[1] + 12

    def scraped_past_end() -> bool:
        (up,) = run.query('timestamp(up{job="featureguard"})')
        return float(up["value"][1]) >= end

    wait_for("Prometheus to scrape past the window", scraped_past_end, 60, *run.processes)
    out = render_png.render(
        run.prometheus_url, start, end, tmp_path / "overview.png", rate_interval="10s"
    )
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    if os.environ.get("FEATUREGUARD_WRITE_README_PNG") == "1":
        render_png.render(
            run.prometheus_url, start, end, DASHBOARDS / "overview.png", rate_interval="10s"
        )
