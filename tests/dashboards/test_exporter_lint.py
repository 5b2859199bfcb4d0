"""`promtool check metrics` on the exporter's real output: a registry with a bound policy (so
every labelled family has series), a recorded step, alerts, audit, reloads, SAE health and
server requests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from monitor.metrics import Metrics
from monitor.policy.loader import load_policy
from tests.dashboards.helpers import need, synthetic_sae, write_policy


def test_promtool_check_metrics_on_the_exporter_output(tmp_path: Path) -> None:
    promtool = need("promtool")
    policy = load_policy(
        write_policy(tmp_path, synthetic_sae(16, "blocks.0.hook_resid_post"), "http://127.0.0.1:9/")
    )
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    bound = metrics.bind_policy(policy)
    bound.record_step("prompt", 12, matches=[0, 1, 2, 0], seconds=0.002, activations=[[0.5, 0.0]])
    bound.record_step("completion", 1, matches=[1, 0, 0, 0], seconds=0.0004)
    bound.record_stopped(0)
    metrics.record_request(generated_tokens=1)
    metrics.record_alert("oncall", "sent")
    metrics.record_alert("oncall", "failed")
    metrics.record_audit(written=3, lost=1)
    metrics.record_reload(True)
    metrics.record_degraded("nonfinite", 2)
    metrics.set_sae_health("main", 7.0, 0.81)
    metrics.record_http("/v1/chat/completions", 200, 0.3)
    metrics.record_filtered("/v1/chat/completions")
    metrics.queue_depth.set(1)
    text = generate_latest(registry)
    # the output really holds the labelled series the dashboards read
    for line in (
        b'featureguard_rule_matches_total{mode="shadow",rule="f2-shadow",severity="medium"} 2.0',
        b'featureguard_feature_activation_bucket{feature="f1",le="0.5"} 1.0',
        b'featureguard_policy_info{policy="dashboards-it",sha256="',
        b'featureguard_sequences_replaced_total{rule="never-replace"} 0.0',
    ):
        assert line in text, line
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert (done.stdout + done.stderr).strip() == b"", (done.stdout + done.stderr).decode()
