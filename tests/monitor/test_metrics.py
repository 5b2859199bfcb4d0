"""Metrics: label sets pre-created at bind, batched step recording, policy swap, the exporter."""

from __future__ import annotations

import math
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from monitor.exporter import start_exporter
from monitor.metrics import HTTP_ENDPOINTS, Metrics
from monitor.policy.compiled import CompiledPolicy
from monitor.policy.loader import load_policy_text
from monitor.policy.reload import ReloadEvent

POLICY = """\
version: 1
policy: {name: guard, revision: REV}
saes:
  main: {bundled: test-sae, d_sae: 64}
features:
  tox: {index: 3, scale: 2.0, export: true}
  pii: {index: 7, export: true}
  other: {index: 1}
channels:
  am: {type: alertmanager, url: "http://127.0.0.1:9/"}
  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}
rules:
  - id: toxic
    severity: high
    condition: {feature: tox, above: 1.0}
    actions: [{type: alert, channel: am}, {type: stop}]
  - id: pii-shadow
    severity: medium
    mode: shadow
    condition: {feature: pii, above: 0.5}
    actions: [{type: log}, {type: replace, message: redacted}]
  - id: other
    severity: low
    condition: {feature: other, above: 0.5}
    actions: [{type: log}, {type: alert, channel: hook}]
"""
ALLOWED_LABELS = {
    "phase",
    "rule",
    "severity",
    "mode",
    "action",
    "channel",
    "result",
    "feature",
    "policy",
    "version",
    "sha256",
    "reason",
    "sae",
    "le",
    "endpoint",  # bounded: monitor.metrics.HTTP_ENDPOINTS
    "code",  # HTTP status code
}


def make_policy(revision: str = "r1") -> CompiledPolicy:
    return load_policy_text(POLICY.replace("REV", revision), "t.yaml", d_sae={"main": 64})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def val(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_bind_creates_every_policy_label_set_at_zero(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.bind_policy(make_policy())
    for rule, sev, mode in [("toxic", "high", "enforce"), ("pii-shadow", "medium", "shadow")]:
        assert (
            val(registry, "featureguard_rule_matches_total", rule=rule, severity=sev, mode=mode)
            == 0
        )
    for action, rule in [
        ("alert", "toxic"),
        ("stop", "toxic"),
        ("log", "other"),
        ("alert", "other"),
    ]:
        assert val(registry, "featureguard_actions_total", action=action, rule=rule) == 0
    # shadow rules never act, so they get no action series
    assert val(registry, "featureguard_actions_total", action="log", rule="pii-shadow") is None
    assert val(registry, "featureguard_sequences_stopped_total", rule="toxic") == 0
    assert val(registry, "featureguard_sequences_replaced_total", rule="pii-shadow") is None
    for channel in ("am", "hook"):
        for result in ("sent", "failed", "dropped"):
            assert val(registry, "featureguard_alerts_total", channel=channel, result=result) == 0
    for phase in ("prompt", "completion"):
        assert val(registry, "featureguard_tokens_monitored_total", phase=phase) == 0
    for result in ("ok", "failed"):
        assert val(registry, "featureguard_policy_reloads_total", result=result) == 0
    l0 = val(registry, "featureguard_sae_l0", sae="main")
    assert l0 is not None and math.isnan(l0)  # not sampled yet


def test_record_step_counts_matches_actions_tokens_and_time(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    pm = m.bind_policy(make_policy())
    pm.record_step("prompt", 12, matches=[0, 0, 0], seconds=2e-3)
    pm.record_step(
        "completion", 4, matches=[2, 1, 0], seconds=3e-4, activations=[[0.0, 1.5], [3.0, 0.2]]
    )
    assert val(registry, "featureguard_tokens_monitored_total", phase="prompt") == 12
    assert val(registry, "featureguard_tokens_monitored_total", phase="completion") == 4
    assert (
        val(
            registry,
            "featureguard_rule_matches_total",
            rule="toxic",
            severity="high",
            mode="enforce",
        )
        == 2
    )
    assert (
        val(
            registry,
            "featureguard_rule_matches_total",
            rule="pii-shadow",
            severity="medium",
            mode="shadow",
        )
        == 1
    )
    assert val(registry, "featureguard_actions_total", action="alert", rule="toxic") == 2
    assert val(registry, "featureguard_actions_total", action="stop", rule="toxic") == 2
    assert val(registry, "featureguard_actions_total", action="log", rule="pii-shadow") is None
    assert val(registry, "featureguard_monitor_step_seconds_count", phase="completion") == 1
    assert (
        val(registry, "featureguard_monitor_step_seconds_bucket", phase="completion", le="0.0005")
        == 1
    )
    assert (
        val(registry, "featureguard_monitor_step_seconds_bucket", phase="completion", le="0.0001")
        == 0
    )
    assert val(registry, "featureguard_feature_activation_count", feature="tox") == 2
    assert val(registry, "featureguard_feature_activation_bucket", feature="tox", le="0.0") == 1
    assert val(registry, "featureguard_feature_activation_sum", feature="pii") == pytest.approx(1.7)
    pm.record_stopped(0)
    pm.record_stopped(None)
    assert val(registry, "featureguard_sequences_stopped_total", rule="toxic") == 1
    assert val(registry, "featureguard_sequences_stopped_total", rule="on_error") == 1
    pm.record_match("other", 2)
    assert val(registry, "featureguard_actions_total", action="log", rule="other") == 2
    pm.record_step("completion", 1, activations={"pii": [0.3], "other": [9.0], "nope": [1.0]})
    assert val(registry, "featureguard_feature_activation_count", feature="pii") == 3
    assert val(registry, "featureguard_feature_activation_count", feature="other") is None
    with pytest.raises(ValueError, match="3 rules"):
        pm.record_step("completion", 1, matches=[1])


def test_feature_histograms_only_for_exported_features(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    pm = m.bind_policy(make_policy())
    assert pm.exported == ("tox", "pii")
    pm.record_step("completion", 1, activations=[[1.0, 2.0]])
    features = {
        s.labels["feature"]
        for fam in registry.collect()
        if fam.name == "featureguard_feature_activation"
        for s in fam.samples
    }
    assert features == {"tox", "pii"}


def test_rebind_swaps_policy_info_and_keeps_old_handles_apart(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    old, new = make_policy("r1"), make_policy("r2")
    assert old.sha256 != new.sha256
    pm_old = m.bind_policy(old)
    assert m.bind_policy(old) is pm_old  # idempotent
    assert (
        val(registry, "featureguard_policy_info", policy="guard", version="r1", sha256=old.sha256)
        == 1
    )
    m.bind_policy(new)
    assert (
        val(registry, "featureguard_policy_info", policy="guard", version="r1", sha256=old.sha256)
        is None
    )
    assert (
        val(registry, "featureguard_policy_info", policy="guard", version="r2", sha256=new.sha256)
        == 1
    )
    pm_old.record_step("completion", 1, matches=[1, 0, 0])  # an in-flight call of the old one
    assert (
        val(
            registry,
            "featureguard_rule_matches_total",
            rule="toxic",
            severity="high",
            mode="enforce",
        )
        == 1
    )


def test_process_recorders_and_bounded_labels(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.bind_policy(make_policy())
    m.record_request(generated_tokens=7)
    m.record_degraded("nonfinite", 3)
    m.record_degraded("RuntimeError: CUDA out of memory at 0x7f...")  # not a label value
    m.record_audit(written=2, lost=1)
    m.record_alert("am", "sent")
    m.set_sae_health("main", 41.5, 0.83)
    m.on_reload(ReloadEvent(False, "t.yaml", "a", "b", "r1", 1, 0.01))
    assert val(registry, "featureguard_requests_total") == 1
    assert val(registry, "featureguard_generated_tokens_total") == 7
    assert val(registry, "featureguard_degraded_tokens_total", reason="nonfinite") == 3
    assert val(registry, "featureguard_degraded_tokens_total", reason="error") == 1
    assert val(registry, "featureguard_degraded_tokens_total", reason="sae_error") == 0
    assert val(registry, "featureguard_audit_events_total") == 2
    assert val(registry, "featureguard_audit_events_lost_total") == 1
    assert val(registry, "featureguard_alerts_total", channel="am", result="sent") == 1
    assert val(registry, "featureguard_sae_l0", sae="main") == 41.5
    assert val(registry, "featureguard_sae_explained_variance", sae="main") == 0.83
    assert val(registry, "featureguard_policy_reloads_total", result="failed") == 1
    with pytest.raises(ValueError):
        m.record_alert("am", "maybe")
    names = {k for fam in registry.collect() for s in fam.samples for k in s.labels}
    assert names <= ALLOWED_LABELS
    assert all(fam.name.startswith("featureguard_") for fam in registry.collect())


def test_metrics_refuses_anything_but_a_registry() -> None:
    with pytest.raises(TypeError):
        Metrics(None)  # type: ignore[arg-type]


def test_exporter_serves_metrics_on_loopback(tmp_path) -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.bind_policy(make_policy()).record_step("completion", 2, matches=[1, 0, 0], seconds=1e-4)
    with start_exporter(registry, port=0) as exp:
        assert exp.host == "127.0.0.1" and exp.port > 0
        with urllib.request.urlopen(exp.url, timeout=5) as resp:
            body = resp.read().decode()
    assert (
        'featureguard_rule_matches_total{mode="enforce",rule="toxic",severity="high"} 1.0' in body
    )
    assert "featureguard_policy_info{" in body
    assert "featureguard_monitor_step_seconds_bucket" in body
    (tmp_path / "metrics.txt").write_text(body)
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not on PATH: metrics lint not run")
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_http_recorders_bound_the_endpoint_label(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.record_http("/v1/completions", 200, 0.2)
    m.record_http("/v1/completions", 400, 0.001)
    m.record_http("/etc/passwd?x=1", 404, 0.001)  # arbitrary paths never become labels
    m.record_filtered("/v1/chat/completions", 2)
    assert (
        val(registry, "featureguard_http_requests_total", endpoint="/v1/completions", code="200")
        == 1
    )
    assert val(registry, "featureguard_http_requests_total", endpoint="other", code="404") == 1
    assert (
        val(registry, "featureguard_responses_filtered_total", endpoint="/v1/chat/completions") == 2
    )
    endpoints = {
        s.labels["endpoint"]
        for fam in registry.collect()
        for s in fam.samples
        if "endpoint" in s.labels
    }
    assert endpoints <= set(HTTP_ENDPOINTS)
