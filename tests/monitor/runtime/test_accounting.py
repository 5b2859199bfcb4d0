"""End-to-end accounting: Prometheus counters, audit lines, report firings and delivered alerts
all agree after one batched generate; a receiver that never answers does not block generate."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

import monitor
from monitor.alerts import AlertDispatcher
from monitor.audit import AuditLog
from monitor.metrics import Metrics
from monitor.policy.compiled import CompiledPolicy
from monitor.receiver import AlertReceiver
from monitor.runtime.dispatch import MonitorDispatcher
from tests.monitor.runtime.helpers import World

RULES = """
- {id: r0, severity: high, condition: {feature: f0, above: 0.0}, actions: [{type: log}]}
- id: a1
  severity: medium
  condition: {feature: f1, above: 0.0}
  actions: [{type: alert, channel: hook, payload: "$rule at $token_index"}, {type: log}]
- id: a2
  severity: low
  condition: {feature: f2, above: 0.0}
  actions: [{type: alert, channel: hook}]
- {id: s0, severity: low, mode: shadow, condition: {feature: f0, above: 0.0},
   actions: [{type: alert, channel: hook}]}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World("llama", tmp_path_factory.mktemp("accounting"))


class HeldReceiver(AlertReceiver):
    """An :class:`AlertReceiver` whose handler waits for ``release`` before answering;
    ``holding`` is set when the first request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.release = threading.Event(), threading.Event()
        outer, base = self, self.server.RequestHandlerClass

        class Held(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                outer.holding.set()
                outer.release.wait(60)
                super().do_POST()

        self.server.RequestHandlerClass = Held


def policy(world: World, url: str, name: str, timeout_s: float = 30.0) -> CompiledPolicy:
    extra = (
        f"channels:\n  hook: {{type: webhook, url: '{url}', timeout_s: {timeout_s}, retries: 0}}\n"
    )
    return world.policy(RULES, name, extra=extra)


def value(reg: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    got = reg.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def run(
    world: World, pol: CompiledPolicy, audit_path: Path
) -> tuple[CollectorRegistry, MonitorDispatcher, Any, torch.Tensor]:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    d = MonitorDispatcher(
        metrics, AuditLog(str(audit_path), metrics=metrics), AlertDispatcher(pol.channels, metrics)
    )
    with monitor.attach(world.model, pol, dispatcher=d) as g:
        out = world.generate(g, monitor_context={"request_id": "acct"})
        report = g.last_report
    return reg, d, report, out


def test_counters_audit_lines_report_and_alerts_agree(world: World, tmp_path: Path) -> None:
    receiver = AlertReceiver().start()
    try:
        pol = policy(world, receiver.url + "/hook", "acct")
        reg, d, report, out = run(world, pol, tmp_path / "audit.jsonl")
        assert d.alerts is not None
        d.close()  # delivers what is queued, then flushes and closes the audit file
    finally:
        receiver.close()
    assert torch.equal(out, world.ref)  # log + alert only: outputs untouched
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    audited = Counter(x["rule"] for x in lines)
    fired = Counter(f.rule for _, f in report.fired)
    for rule in pol.rules:
        matches = value(
            reg,
            "featureguard_rule_matches_total",
            {"rule": rule.id, "severity": rule.severity, "mode": rule.mode},
        )
        assert matches == audited[rule.id] == fired[rule.id] >= 1, rule.id
    for phase, attr in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        got = value(reg, "featureguard_tokens_monitored_total", {"phase": phase})
        assert got == sum(getattr(r, attr) for r in report.rows) > 0
    alert_matches = sum(
        1
        for _, f in report.fired
        if f.mode == "enforce"
        for a in pol.rule(f.rule).spec.actions
        if a.type == "alert"
    )
    assert alert_matches == fired["a1"] + fired["a2"]  # the shadow rule s0 never alerts
    assert len(receiver.received) == alert_matches
    assert value(reg, "featureguard_alerts_total", {"channel": "hook", "result": "sent"}) == (
        alert_matches
    )
    texts = [body.get("text") for _, body in receiver.received]
    assert any(t and t.startswith("a1 at ") for t in texts)


@pytest.mark.parametrize("outcome", ["sent", "failed"])
def test_a_receiver_that_never_answers_does_not_block_generate(
    world: World, tmp_path: Path, outcome: str
) -> None:
    receiver = HeldReceiver().start()
    # "failed": the channel's per-attempt timeout ends the delivery while the receiver holds it.
    timeout_s = 30.0 if outcome == "sent" else 0.2
    try:
        pol = policy(world, receiver.url + "/hook", f"held-{outcome}", timeout_s)
        reg, d, report, out = run(world, pol, tmp_path / "audit.jsonl")
        assert d.alerts is not None
        n = sum(1 for _, f in report.fired if f.rule in ("a1", "a2"))
        assert n >= 2 and torch.equal(out, world.ref)
        # generate has returned; the first alert reaches the receiver and is held there.
        assert receiver.holding.wait(30)
        assert not receiver.release.is_set()
        if outcome == "sent":
            assert d.alerts.counts["sent"] == 0 and receiver.received == []
        else:
            assert d.alerts.flush(30)  # every attempt timed out while the receiver held it
            assert d.alerts.counts["failed"] == n
        receiver.release.set()
        assert d.alerts.flush(30)
        d.close()
    finally:
        receiver.release.set()
        receiver.close()
    label = {"channel": "hook", "result": outcome}
    assert d.alerts.counts[outcome] == n == value(reg, "featureguard_alerts_total", label)
    assert d.alerts.counts["dropped"] == 0
