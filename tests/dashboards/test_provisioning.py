"""Provisioning files: they parse, promtool/amtool accept them, and they agree with each other
(job name, ports, mounted paths, Grafana's timeInterval = Prometheus's scrape_interval)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboards.helpers import DASHBOARDS, need

PROMETHEUS_CONFIGS = sorted((DASHBOARDS / "prometheus").glob("*.yml"))
ALERTMANAGER = DASHBOARDS / "alertmanager" / "alertmanager.yml"
COMPOSE = DASHBOARDS / "docker-compose.yml"
GRAFANA = DASHBOARDS / "provisioning" / "grafana"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "path", sorted(DASHBOARDS.rglob("*.yml")), ids=lambda p: str(p.relative_to(DASHBOARDS))
)
def test_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(load(path), dict), path


def test_both_prometheus_variants_are_shipped() -> None:
    assert [p.name for p in PROMETHEUS_CONFIGS] == ["prometheus-replicas.yml", "prometheus.yml"]


@pytest.mark.parametrize("path", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(path: Path) -> None:
    done = subprocess.run(
        [need("promtool"), "check", "config", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


@pytest.mark.parametrize("path", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_prometheus_config_loads_the_alerts_and_uses_the_alerted_job(path: Path) -> None:
    config = load(path)
    assert [(path.parent / f).resolve() for f in config["rule_files"]] == [
        (DASHBOARDS / "alerts.yml").resolve()
    ]
    assert [j["job_name"] for j in config["scrape_configs"]] == ["featureguard"]
    alerts = (DASHBOARDS / "alerts.yml").read_text()
    assert 'up{job="featureguard"}' in alerts
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_amtool_check_config() -> None:
    done = subprocess.run(
        [need("amtool"), "check-config", str(ALERTMANAGER)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_grafana_datasource_matches_prometheus_scrape_interval() -> None:
    (source,) = load(GRAFANA / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    for path in PROMETHEUS_CONFIGS:
        assert source["jsonData"]["timeInterval"] == load(path)["global"]["scrape_interval"]


def test_compose_mounts_existing_files_where_provisioning_looks() -> None:
    compose = load(COMPOSE)
    services = compose["services"]
    assert set(services) == {"featureguard", "prometheus", "alertmanager", "grafana"}
    (provider,) = load(GRAFANA / "dashboards" / "featureguard.yml")["providers"]
    folder = provider["options"]["path"]
    mounted_json = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            if host.startswith((".", "/")):
                assert (DASHBOARDS / host).exists(), f"{name}: {host} missing"
            if container.endswith(".json"):
                assert container == f"{folder}/{Path(host).name}"
                mounted_json.append(Path(host).name)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert sorted(mounted_json) == sorted(p.name for p in DASHBOARDS.glob("featureguard-*.json"))
    # the scrape target and the Alertmanager address are compose service names and ports
    assert "featureguard:8000" in str(load(DASHBOARDS / "prometheus" / "prometheus.yml"))
    assert "--port 8000" in " ".join(services["featureguard"]["command"])
    prom_cmd = " ".join(services["prometheus"]["command"])
    assert "/etc/featureguard/prometheus/" in prom_cmd
    assert "./:/etc/featureguard:ro" in services["prometheus"]["volumes"]
