"""The integration stack: configs derived from the shipped files, and processes that always stop.

Configs are never hand-written twice: :func:`prometheus_config`, :func:`short_for_alert_rules` and
:func:`alertmanager_config` load the files under ``dashboards/`` and change only addresses,
intervals and ``for:`` durations, so the integration test runs what users run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.dashboards.helpers import DASHBOARDS

T = TypeVar("T")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Every request of the test goes to 127.0.0.1 directly, whatever the environment's proxy."""


# ---- configs derived from the shipped files -------------------------------------------------


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def short_for_alert_rules(for_: str = "1s") -> dict[str, Any]:
    """``dashboards/alerts.yml`` with every non-zero ``for:`` shortened to ``for_``."""
    rules = _load(DASHBOARDS / "alerts.yml")
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if rule.get("for") not in (None, "0m", "0s", 0):
                rule["for"] = for_
    return rules


def prometheus_config(target: str, alertmanager: str, rule_file: Path) -> dict[str, Any]:
    """``dashboards/prometheus/prometheus.yml`` scraping ``target`` every second, sending alerts
    to ``alertmanager`` and loading ``rule_file`` (all ``host:port`` / paths)."""
    config = copy.deepcopy(_load(DASHBOARDS / "prometheus" / "prometheus.yml"))
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(rule_file)]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
    (job,) = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [target]
    return config


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """``dashboards/alertmanager/alertmanager.yml`` with its webhook at ``webhook_url`` and
    one-second grouping, so a firing alert is forwarded at once."""
    config = copy.deepcopy(_load(DASHBOARDS / "alertmanager" / "alertmanager.yml"))
    (receiver,) = config["receivers"]
    (hook,) = receiver["webhook_configs"]
    hook["url"] = webhook_url
    for route in [config["route"], *config["route"].get("routes", [])]:
        route["group_wait"] = "1s"
        route["group_interval"] = "1s"
    return config


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without proxies (everything here is 127.0.0.1), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not re.fullmatch(r"(?i)(https?|all|no)_proxy", k)}
    env.update(extra)
    return env


class Process:
    """A subprocess whose stdout+stderr go to ``log``; :meth:`stop` always ends it."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, **kw: Any) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.argv, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True, **kw
        )

    def output(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:]

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with {code}:\n{self.output()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of its whole process group after ``timeout``."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            self._out.close()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, *alive: Process) -> T:
    """Poll ``probe`` (a truthy value, or a falsy one / an exception meaning "not yet") until
    ``timeout``;
    fail naming ``what`` and the last error. Checks that ``alive`` processes still run."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for p in alive:
            p.check_alive()
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # a refused connection means "not yet"
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")
        time.sleep(0.25)


def get_json(url: str, params: Mapping[str, str] | None = None, timeout: float = 10.0) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with NO_PROXY.open(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_ok(url: str) -> bool:
    with NO_PROXY.open(url, timeout=5) as r:
        return bool(r.status == 200)


def serve_url(log: Path) -> str | None:
    """The URL from ``featureguard serve: listening on URL`` in the server's log, if there."""
    m = re.search(r"featureguard serve: listening on (http://\S+)", log.read_text(errors="replace"))
    return m.group(1) if m else None
