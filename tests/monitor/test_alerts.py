"""Alert delivery to a real HTTP receiver on 127.0.0.1: formats, retries, drops, no blocking."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from monitor.alerts import Alert, AlertDispatcher, alerts_for_match
from monitor.metrics import Metrics
from monitor.policy.compiled import CompiledPolicy
from monitor.policy.loader import load_policy_text
from monitor.policy.schema import ChannelSpec

POLICY = """\
version: 1
policy: {name: guard, revision: r1}
saes:
  main: {bundled: test-sae, d_sae: 64}
features:
  tox: {index: 3}
  other: {index: 1}
channels:
  am: {type: alertmanager, url: "http://127.0.0.1:9/"}
  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}
rules:
  - id: toxic
    severity: high
    condition: {feature: tox, above: 1.0}
    labels: {team: safety}
    annotations: {summary: Toxic output, runbook_url: "https://runbooks.example/toxic"}
    actions: [{type: alert, channel: am}, {type: log}]
  - id: other
    severity: low
    condition: {feature: other, above: 0.5}
    actions: [{type: alert, channel: hook, payload: {msg: "$rule at $token_index", user: "$user"}}]
"""


class Receiver:
    """A stdlib HTTP server on 127.0.0.1:0 recording every POST. ``status`` gives the reply
    code of the n-th request; ``gate`` (if set) makes each request wait for it (at most 2 s)."""

    def __init__(self, status: Callable[[int], int] = lambda n: 200) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.status = status
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.answered = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                outer.entered.set()
                if outer.gate is not None:
                    outer.gate.wait(2.0)
                self.send_response(outer.status(len(outer.requests)))
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.answered.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def policy() -> CompiledPolicy:
    return load_policy_text(POLICY, "t.yaml", d_sae={"main": 64})


def toxic_alert(policy: CompiledPolicy, channel: str = "am") -> Alert:
    (alert,) = alerts_for_match(
        policy,
        policy.rule("toxic"),
        row=0,
        token_index=9,
        phase="completion",
        features={"tox": 3.25},
        context={"request_id": "req-7", "user": "u9"},
        now=1.7e9,
    )
    return (
        alert if channel == "am" else Alert(channel, alert.labels, alert.annotations, alert.values)
    )


def channel(
    url: str, type: str = "webhook", retries: int = 0, timeout_s: float = 2.0
) -> ChannelSpec:
    return ChannelSpec(type=type, url=url, retries=retries, timeout_s=timeout_s)  # type: ignore[arg-type]


def count(reg: CollectorRegistry, ch: str, result: str) -> float | None:
    return reg.get_sample_value("featureguard_alerts_total", {"channel": ch, "result": result})


def test_alertmanager_receives_v2_alert(
    receiver: Receiver, policy: CompiledPolicy, registry: CollectorRegistry
) -> None:
    m = Metrics(registry)
    m.bind_policy(policy)
    with AlertDispatcher({"am": channel(receiver.url + "/", "alertmanager")}, m) as d:
        assert d.submit(toxic_alert(policy))
        assert d.flush(10)
    ((path, body),) = receiver.requests
    assert path == "/api/v2/alerts"
    assert isinstance(body, list) and len(body) == 1
    (a,) = body
    assert a["labels"] == {
        "alertname": "toxic",
        "rule": "toxic",
        "severity": "high",
        "policy": "guard",
        "team": "safety",
    }
    assert a["annotations"]["summary"] == "Toxic output"
    assert a["annotations"]["runbook_url"] == "https://runbooks.example/toxic"
    assert a["annotations"]["request_id"] == "req-7"
    assert "u9" not in json.dumps(a)  # users stay out of Alertmanager unless a template adds them
    assert datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")).timestamp() == 1.7e9
    assert count(registry, "am", "sent") == 1 and count(registry, "am", "failed") == 0


def test_webhook_receives_rendered_template(receiver: Receiver, policy: CompiledPolicy) -> None:
    (alert,) = alerts_for_match(
        policy, policy.rule("other"), row=2, token_index=4, phase="prompt", context={"user": "u9"}
    )
    assert alert.channel == "hook"
    with AlertDispatcher({"hook": channel(receiver.url + "/hook")}) as d:
        d.submit(alert)
        assert d.flush(10)
    assert receiver.requests == [("/hook", {"msg": "other at 4", "user": "u9"})]
    assert d.counts["sent"] == 1


def test_shadow_rules_send_no_alerts(policy: CompiledPolicy) -> None:
    shadow = load_policy_text(
        POLICY.replace("severity: high", "severity: high\n    mode: shadow"),
        "t.yaml",
        d_sae={"main": 64},
    )
    assert (
        alerts_for_match(shadow, shadow.rule("toxic"), row=0, token_index=0, phase="prompt") == []
    )


def test_server_error_is_retried_then_failed(
    policy: CompiledPolicy, registry: CollectorRegistry
) -> None:
    r = Receiver(status=lambda n: 500)
    try:
        with AlertDispatcher(
            {"x": channel(r.url, retries=2)}, Metrics(registry), backoff_s=0.01
        ) as d:
            d.submit(toxic_alert(policy, "x"))
            assert d.flush(10)
        assert len(r.requests) == 3  # one try + two retries
        assert count(registry, "x", "failed") == 1 and count(registry, "x", "sent") == 0
    finally:
        r.close()


def test_retry_succeeds_after_a_server_error(policy: CompiledPolicy) -> None:
    r = Receiver(status=lambda n: 503 if n == 1 else 200)
    try:
        with AlertDispatcher({"x": channel(r.url, retries=2)}, backoff_s=0.01) as d:
            d.submit(toxic_alert(policy, "x"))
            assert d.flush(10)
        assert len(r.requests) == 2 and d.counts == {"sent": 1, "failed": 0, "dropped": 0}
    finally:
        r.close()


def test_client_error_is_not_retried(policy: CompiledPolicy) -> None:
    r = Receiver(status=lambda n: 400)
    try:
        with AlertDispatcher({"x": channel(r.url, retries=3)}, backoff_s=0.01) as d:
            d.submit(toxic_alert(policy, "x"))
            assert d.flush(10)
        assert len(r.requests) == 1 and d.counts["failed"] == 1
    finally:
        r.close()


def test_dead_port_counts_failed(policy: CompiledPolicy, registry: CollectorRegistry) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    with AlertDispatcher(
        {"x": channel(f"http://127.0.0.1:{port}/", retries=1)}, Metrics(registry), backoff_s=0.01
    ) as d:
        d.submit(toxic_alert(policy, "x"))
        assert d.flush(10)
    assert count(registry, "x", "failed") == 1


def test_unknown_channel_counts_failed(policy: CompiledPolicy) -> None:
    with AlertDispatcher({}) as d:
        d.submit(toxic_alert(policy, "gone"))
        assert d.flush(10)
    assert d.counts["failed"] == 1


def test_full_queue_drops_and_counts(
    receiver: Receiver, policy: CompiledPolicy, registry: CollectorRegistry
) -> None:
    receiver.gate = threading.Event()
    d = AlertDispatcher({"x": channel(receiver.url)}, Metrics(registry), queue_size=1)
    try:
        assert d.submit(toxic_alert(policy, "x"))
        assert receiver.entered.wait(10)  # the worker is busy with the first alert
        assert d.submit(toxic_alert(policy, "x"))  # fills the queue
        assert not d.submit(toxic_alert(policy, "x"))  # dropped, without blocking
        assert count(registry, "x", "dropped") == 1
        receiver.gate.set()
        assert d.flush(10)
    finally:
        d.close()
    assert d.counts == {"sent": 2, "failed": 0, "dropped": 1}


def test_submit_returns_before_a_slow_receiver_answers(
    receiver: Receiver, policy: CompiledPolicy
) -> None:
    receiver.gate = threading.Event()  # the receiver holds each request up to 2 s
    with AlertDispatcher({"x": channel(receiver.url, timeout_s=10)}) as d:
        assert d.submit(toxic_alert(policy, "x"))
        assert not receiver.answered.is_set()  # submit did not wait for the receiver
        assert receiver.entered.wait(10)
        receiver.gate.set()
        assert d.flush(10)
    assert d.counts["sent"] == 1


def test_timeout_counts_failed(receiver: Receiver, policy: CompiledPolicy) -> None:
    receiver.gate = threading.Event()  # never set by the test: the receiver answers after 2 s
    with AlertDispatcher({"x": channel(receiver.url, timeout_s=0.2)}) as d:
        d.submit(toxic_alert(policy, "x"))
        assert d.flush(10)
    assert d.counts["failed"] == 1


def test_close_accounts_for_every_alert(receiver: Receiver, policy: CompiledPolicy) -> None:
    receiver.gate = threading.Event()
    d = AlertDispatcher({"x": channel(receiver.url, timeout_s=10)}, queue_size=10)
    for _ in range(4):
        d.submit(toxic_alert(policy, "x"))
    assert receiver.entered.wait(10)
    d.close(timeout=0.2)  # gives up while the first is in flight; the queued rest are dropped
    receiver.gate.set()
    assert not d.submit(toxic_alert(policy, "x"))  # closed: dropped, counted
    assert d.flush(10)
    assert sum(d.counts.values()) == 5 and d.counts["dropped"] >= 4


def test_broken_application_logging_does_not_stop_delivery(policy: CompiledPolicy) -> None:
    closed = io.StringIO()
    closed.close()
    before = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=closed))
    try:
        with AlertDispatcher({}) as d:  # unknown channel: fails and logs a warning
            d.submit(toxic_alert(policy, "gone"))
            d.submit(toxic_alert(policy, "gone"))
            assert d.flush(10)  # the worker survived the logging error
        assert d.counts["failed"] == 2
    finally:
        structlog.configure(**before)
