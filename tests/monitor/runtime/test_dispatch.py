"""The production dispatcher: counters equal events, one audit line per match, stops counted."""

from __future__ import annotations

import io
import json

import pytest
from prometheus_client import CollectorRegistry

import monitor
from monitor.audit import AuditLog
from monitor.metrics import Metrics
from monitor.runtime import CollectingDispatcher
from monitor.runtime.dispatch import MonitorDispatcher
from tests.monitor.runtime.helpers import LOG_RULES, World


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World("llama", tmp_path_factory.mktemp("dispatch"))


class Both(CollectingDispatcher):
    def __init__(self, inner: MonitorDispatcher) -> None:
        super().__init__()
        self.inner = inner

    def on_policy(self, policy):  # type: ignore[no-untyped-def]
        super().on_policy(policy)
        self.inner.on_policy(policy)

    def on_events(self, events):  # type: ignore[no-untyped-def]
        super().on_events(events)
        self.inner.on_events(events)

    def on_step(self, stats):  # type: ignore[no-untyped-def]
        super().on_step(stats)
        self.inner.on_step(stats)

    def on_finish(self, report):  # type: ignore[no-untyped-def]
        super().on_finish(report)
        self.inner.on_finish(report)


def test_counters_equal_events_and_audit_lines(world: World) -> None:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    sink = io.StringIO()
    rules = LOG_RULES + (
        "- {id: s0, severity: high, condition: {feature: f0, above: 0.0}, actions: [{type: stop}]}"
    )
    d = Both(MonitorDispatcher(metrics, AuditLog(sink, metrics=metrics)))
    with monitor.attach(world.model, world.policy(rules, "disp"), dispatcher=d) as g:
        world.generate(g, monitor_context={"request_id": "q1"})
    lines = [json.loads(x) for x in sink.getvalue().splitlines()]
    assert len(lines) == len(d.events) > 0
    assert all(x["context"] == {"request_id": "q1"} and x["schema"] == 1 for x in lines)
    for ev in d.events:
        got = reg.get_sample_value(
            "featureguard_rule_matches_total",
            {"rule": ev.rule, "severity": ev.severity, "mode": ev.mode},
        )
        assert got == sum(e.rule == ev.rule for e in d.events)
    tokens = sum(
        reg.get_sample_value("featureguard_tokens_monitored_total", {"phase": p}) or 0
        for p in ("prompt", "completion")
    )
    assert tokens == sum(s.tokens for s in d.steps)
    assert reg.get_sample_value("featureguard_sequences_stopped_total", {"rule": "s0"}) == 1
    assert reg.get_sample_value("featureguard_requests_total") == 1


def test_audit_failure_under_fail_closed_stops_the_row(world: World) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    metrics = Metrics(CollectorRegistry())
    audit = AuditLog(Broken(), metrics=metrics, stderr=io.StringIO())
    pol = world.policy(LOG_RULES, "closed", extra="on_error: fail_closed\n")
    with monitor.attach(world.model, pol, dispatcher=MonitorDispatcher(metrics, audit)) as g:
        out = world.generate(g)
        report = g.last_report
    b, col = world.cols[2]  # r2 matches in row 2's prompt
    assert report.rows[b].stopped and report.rows[b].halt_reason == "error"
    pad = world.model.generation_config.pad_token_id
    assert (out[b, world.L0 :] == pad).all()
    assert col < world.L0


def test_probe_match_audit_lists_the_inputs_that_drove_the_score(world: World) -> None:
    from monitor.policy.catalog import sae_fingerprint
    from sae.loading import save_sae

    d = world.tmp / "probe"
    d.mkdir(exist_ok=True)
    save_sae(world.sae, d / "sae")
    sha = sae_fingerprint(d / "sae")
    (d / "cat.yaml").write_text(
        "catalog_version: 1\n"
        f'sae: {{name: sae, sha256: "{sha}"}}\n'
        "features: [{name: a, index: 0}, {name: b, index: 1}, {name: c, index: 5}]\n"
        "probes:\n"
        "  p: {features: [a, b, c], weights: [2.0, 0.5, -1.0], bias: 0.0, link: linear,\n"
        f'      threshold: 0.0, sae_sha256: "{sha}"}}\n'
    )
    rules = "- {id: pr, severity: high, condition: {probe: x.p}, actions: [{type: log}]}\n"
    extra = 'imports: [{catalog: cat.yaml, sae: main, prefix: "x."}]\n'
    pol = world.policy(rules, "probe", extra=extra)
    assert pol.rule("pr").features == () and pol.rule("pr").probes == ("x.p",)
    sink = io.StringIO()
    d_ = Both(MonitorDispatcher(Metrics(CollectorRegistry()), AuditLog(sink)))
    with monitor.attach(world.model, pol, dispatcher=d_) as g:
        world.generate(g)
    lines = [json.loads(x) for x in sink.getvalue().splitlines()]
    assert lines and len(lines) == len(d_.events)
    for line in lines:
        assert line["features"] == {}  # probe inputs are reported through the probe
        score = line["probes"]["x.p"]
        tops = line["probe_features"]["x.p"]
        assert tops and set(tops) <= {"x.a", "x.b"}  # only positive contributions
        assert all(v > 0 for v in tops.values())
        assert score <= sum(tops.values()) + 1e-5  # the negative input only lowers the score
    # row 0's planted feature 0 drives the probe there: 2.0 × its activation
    ev = next(e for e in d_.events if e.row == 0 and e.token_index == world.token(0))
    assert "x.a" in ev.probe_features["x.p"]
