"""dashboards/alerts.yml: promtool check/test, every alert's fields, and test coverage."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from dashboards import queries
from tests.dashboards.helpers import DASHBOARDS, exported_metric_names, need

ALERTS = DASHBOARDS / "alerts.yml"
ALERT_TESTS = DASHBOARDS / "alerts.test.yml"
RULES: list[dict[str, Any]] = [
    r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
]
PROMETHEUS_SERIES = {"up"}  # added by Prometheus itself, not by the exporter


def test_promtool_check_rules() -> None:
    done = subprocess.run(
        [need("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in done.stdout


def test_promtool_test_rules() -> None:
    done = subprocess.run(
        [need("promtool"), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("rule", RULES, ids=[r.get("alert", "?") for r in RULES])
def test_alert_has_for_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Featureguard")
    assert "for" in rule, f"{rule['alert']}: no for:"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["labels"]["service"] == "featureguard"
    notes = rule["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    anchor = rule["alert"].lower()
    assert notes["runbook_url"] == f"dashboards/RUNBOOK.md#{anchor}"
    assert f"\n## {rule['alert']}\n" in (DASHBOARDS / "RUNBOOK.md").read_text()


@pytest.mark.parametrize("rule", RULES, ids=[r.get("alert", "?") for r in RULES])
def test_alert_metrics_exist_in_the_exporter(rule: dict[str, Any]) -> None:
    names = queries.metric_names(rule["expr"])
    assert names
    unknown = names - exported_metric_names() - PROMETHEUS_SERIES
    assert not unknown, f"{rule['alert']}: {sorted(unknown)} not exported by monitor.metrics"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test") or []:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in RULES:
        assert cases.get(rule["alert"]) == {True, False}, (
            f"{rule['alert']}: {cases.get(rule['alert'])}"
        )
