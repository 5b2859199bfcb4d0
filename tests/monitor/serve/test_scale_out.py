"""The scale-out guide, tested: two ``serve`` replicas scraped by one real Prometheus with the
shipped ``dashboards/prometheus/prometheus-replicas.yml`` (targets made static), requests spread
over both, totals summed over instances, one policy hash across replicas, and the shipped
``FeatureguardPolicyMismatch`` alert firing when one replica is pushed a different policy."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.serve.server import ServerThread
from tests.dashboards.helpers import DASHBOARDS
from tests.dashboards.stack import (
    Process,
    clean_env,
    free_port,
    get_json,
    short_for_alert_rules,
    wait_for,
    write_yaml,
)
from tests.monitor.serve.helpers import BAD_CHAT, BENIGN, ServeWorld
from tests.monitor.serve.http import call

pytestmark = pytest.mark.integration
PROMETHEUS = shutil.which("prometheus")
TOKEN = "replica-admin"


def replicas_config(targets: list[str], rule_file: Path) -> dict[str, Any]:
    """The shipped replicas config with static targets, 1 s scrapes and no Alertmanager."""
    config = copy.deepcopy(
        yaml.safe_load((DASHBOARDS / "prometheus" / "prometheus-replicas.yml").read_text())
    )
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rule_file)]
    config.pop("alerting", None)
    (job,) = config["scrape_configs"]
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": targets}]
    return config


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[list[str], str, Path]]:
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    world = ServeWorld(tmp_path)
    with ExitStack() as es:
        urls = []
        for i in range(2):
            svc = es.enter_context(
                world.service(admin_token=TOKEN, audit_log=str(tmp_path / f"audit-{i}.jsonl"))
            )
            urls.append(es.enter_context(ServerThread(svc.app)).url)
        rules = write_yaml(tmp_path / "alerts.yml", short_for_alert_rules("1s"))
        targets = [u.removeprefix("http://") for u in urls]
        config = write_yaml(tmp_path / "prometheus.yml", replicas_config(targets, rules))
        port = free_port()
        prom = Process(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            tmp_path / "prometheus.log",
            env=clean_env(),
        )
        es.callback(prom.stop)
        prom_url = f"http://127.0.0.1:{port}"
        wait_for(
            "both replicas up in Prometheus",
            lambda: len(query(prom_url, 'up{job="featureguard"} == 1')) == 2,
            120,
            prom,
        )
        yield urls, prom_url, world.policy_path


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = get_json(prom + "/api/v1/query", {"query": expr})
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def mismatch_expr() -> str:
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "FeatureguardPolicyMismatch":
                return str(rule["expr"])
    raise AssertionError("alerts.yml has no FeatureguardPolicyMismatch")


def test_replicas_behind_one_prometheus(stack: tuple[list[str], str, Path]) -> None:
    urls, prom, policy = stack
    texts = [BAD_CHAT if i % 3 == 0 else BENIGN[i % len(BENIGN)] for i in range(12)]
    for i, text in enumerate(texts):  # round robin, as a load balancer would
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 3,
            "temperature": 0,
        }
        status, _, _ = call(urls[i % 2] + "/v1/chat/completions", "POST", body)
        assert status == 200
    total = 'sum(featureguard_http_requests_total{endpoint="/v1/chat/completions",code="200"})'
    wait_for(
        "12 requests summed over both instances",
        lambda: (r := query(prom, total)) and float(r[0]["value"][1]) == len(texts),
        60,
    )
    per_instance = query(
        prom, 'featureguard_http_requests_total{code="200",endpoint="/v1/chat/completions"}'
    )
    assert sorted(float(r["value"][1]) for r in per_instance) == [6.0, 6.0]
    matches = query(prom, 'sum(featureguard_rule_matches_total{rule="bad-chat"})')
    assert float(matches[0]["value"][1]) == 4
    hashes = query(prom, "count by (sha256) (featureguard_policy_info)")
    assert len(hashes) == 1 and hashes[0]["value"][1] == "2"  # one hash, on both replicas
    assert query(prom, mismatch_expr()) == []

    newer = policy.read_text().replace("revision: r1", "revision: r2")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _, body = call(urls[1] + "/admin/policy", "PUT", newer, headers=auth)
    assert status == 200 and body["ok"]

    def firing() -> bool:
        alerts = get_json(prom + "/api/v1/alerts")["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "FeatureguardPolicyMismatch" and a["state"] == "firing"
            for a in alerts
        )

    wait_for("FeatureguardPolicyMismatch firing", firing, 60)
    assert len(query(prom, "count by (sha256) (featureguard_policy_info)")) == 2
