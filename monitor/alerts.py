"""Alert delivery off the hot path: a bounded queue and background workers that POST JSON.

``submit`` never blocks: when the queue is full the alert is dropped and counted
``featureguard_alerts_total{result="dropped"}``. Workers deliver each alert to its channel:

* ``alertmanager``: POST ``<url>/api/v2/alerts`` (``/api/v2/alerts`` is appended unless the URL
  already ends with it) a JSON list with one ``{labels, annotations, startsAt[, endsAt]
  [, generatorURL]}`` object (Alertmanager API v2 ``postableAlerts``).
* ``webhook``: POST the rule's alert ``payload`` template rendered with
  :func:`monitor.policy.payload.render_payload`: a mapping template gives a JSON object, a text
  template (or none: ``[$severity] $rule: $summary``) gives ``{"text": ...}``.

Each attempt has the channel's ``timeout_s``; connection errors, timeouts, 429 and 5xx are retried
``retries`` times with exponential backoff, other 4xx are not. The outcome is counted ``sent`` or
``failed``; alerts still queued when :meth:`AlertDispatcher.close` gives up count ``dropped``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from monitor.closing import Closing
from monitor.metrics import Metrics
from monitor.policy import schema
from monitor.policy.compiled import CompiledPolicy, CompiledRule
from monitor.policy.payload import render_payload

_log = structlog.get_logger("featureguard.alerts")
_STOP = object()


@dataclass(frozen=True)
class Alert:
    """One delivery to one channel; build them with :func:`alerts_for_match`."""

    channel: str
    labels: Mapping[str, str]  # alertname, rule, severity, policy + the rule's labels
    annotations: Mapping[str, str]  # summary, description, runbook_url, token_index, ...
    values: Mapping[str, Any]  # payload variables (monitor.policy.payload.PAYLOAD_VARS)
    template: str | Mapping[str, str] | None = None  # the alert action's payload template
    starts_at: float = field(default_factory=time.time)  # epoch seconds


def alerts_for_match(
    policy: CompiledPolicy,
    rule: CompiledRule,
    *,
    row: int,
    token_index: int,
    phase: str,
    features: Mapping[str, float] | None = None,
    context: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> list[Alert]:
    """One :class:`Alert` per ``alert`` action of ``rule`` (none for shadow rules)."""
    if rule.mode != "enforce":
        return []
    spec, ctx = rule.spec, dict(context or {})
    feats = ", ".join(f"{k}={v:.4g}" for k, v in (features or {}).items())
    values: dict[str, Any] = {
        "rule": rule.id,
        "description": spec.description,
        "severity": rule.severity,
        "mode": rule.mode,
        "summary": spec.annotations.summary or spec.description or rule.id,
        "runbook_url": spec.annotations.runbook_url,
        "policy": policy.name,
        "revision": policy.revision,
        "policy_hash": policy.sha256,
        "token_index": token_index,
        "phase": phase,
        "row": row,
        "features": feats,
        "actions": ",".join(rule.action_kinds),
        **{k: ctx.get(k) for k in ("request_id", "tenant", "user", "route")},
    }
    labels = {
        **spec.labels,
        "alertname": rule.id,
        "rule": rule.id,
        "severity": rule.severity,
        "policy": policy.name,
    }
    ann = {
        "summary": values["summary"],
        "description": spec.annotations.description or spec.description,
        "runbook_url": spec.annotations.runbook_url or "",
        "token_index": str(token_index),
        "phase": phase,
        "features": feats,
        "policy_sha256": policy.sha256,
        "request_id": str(ctx.get("request_id") or ""),
    }
    annotations = {k: v for k, v in ann.items() if v}
    started = time.time() if now is None else now
    return [
        Alert(a.channel, labels, annotations, values, a.payload, started)
        for a in spec.actions
        if isinstance(a, schema.AlertAction)
    ]


def _warn(event: str, **fields: Any) -> None:
    """Log through the application's structlog setup; a broken log setup must not stop
    delivery (the metric already counts the failure)."""
    with contextlib.suppress(Exception):
        _log.warning(event, **fields)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def alertmanager_body(alert: Alert, ttl_s: float | None = None) -> list[dict[str, Any]]:
    """The Alertmanager v2 ``postableAlerts`` list for ``alert``. A text template becomes the
    summary; a mapping template's keys become annotations. ``ttl_s`` sets ``endsAt``."""
    ann = dict(alert.annotations)
    if alert.template is not None:
        rendered = render_payload(alert.template, alert.values)
        ann.update({"summary": rendered} if isinstance(rendered, str) else rendered)
    item: dict[str, Any] = {
        "labels": {k: str(v) for k, v in alert.labels.items()},
        "annotations": ann,
        "startsAt": _iso(alert.starts_at),
    }
    if ttl_s is not None:
        item["endsAt"] = _iso(alert.starts_at + ttl_s)
    return [item]


def webhook_body(alert: Alert) -> dict[str, Any]:
    """The webhook JSON: the rendered mapping template, or ``{"text": rendered}``."""
    rendered = render_payload(alert.template, alert.values)
    return {"text": rendered} if isinstance(rendered, str) else dict(rendered)


class AlertDispatcher(Closing):
    """Delivers alerts from a bounded queue with ``workers`` daemon threads.

    ``channels``: name → :class:`~monitor.policy.schema.ChannelSpec` (``policy.channels``);
    swap them on reload with :meth:`set_channels`. ``backoff_s`` doubles per retry up to
    ``max_backoff_s``. ``ttl_s`` sets Alertmanager ``endsAt`` (None: Alertmanager resolves it
    after its ``resolve_timeout``). ``counts`` holds result → number, like the metric.
    """

    def __init__(
        self,
        channels: Mapping[str, schema.ChannelSpec],
        metrics: Metrics | None = None,
        *,
        queue_size: int = 1000,
        workers: int = 1,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        ttl_s: float | None = None,
    ) -> None:
        self.metrics = metrics
        self.set_channels(channels)
        self.backoff_s, self.max_backoff_s, self.ttl_s = backoff_s, max_backoff_s, ttl_s
        self.counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._cond = threading.Condition()
        self._pending = 0  # queued + in delivery
        self._closed = False
        self._abandon = threading.Event()  # close() timed out: stop retrying, drop the rest
        self._threads = [
            threading.Thread(target=self._work, name=f"featureguard-alerts-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def set_channels(self, channels: Mapping[str, schema.ChannelSpec]) -> None:
        """Use these channels for alerts delivered from now on (their counters start at 0)."""
        self.channels = dict(channels)
        if self.metrics is not None:
            self.metrics.declare_channels(self.channels)

    def submit(self, alert: Alert) -> bool:
        """Queue ``alert``; never blocks. False when it was dropped (queue full or closed)."""
        with self._cond:
            if self._closed:
                self._count(alert.channel, "dropped")
                return False
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self._count(alert.channel, "dropped")
                return False
            self._pending += 1
            return True

    def submit_all(self, alerts: Sequence[Alert]) -> int:
        """Submit each alert; the number queued."""
        return sum(self.submit(a) for a in alerts)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert has been delivered or failed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting alerts, deliver what is queued within ``timeout`` seconds, then stop
        the workers; alerts still queued after that are counted ``dropped``."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._abandon.set()
        while True:  # whatever is left now will never be delivered
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._finish(item.channel, "dropped")
        for _ in self._threads:
            with contextlib.suppress(queue.Full):  # emptied just above
                self._queue.put_nowait(_STOP)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- worker ---------------------------------------------------------------------------------

    def _count(self, channel: str, result: str) -> None:
        self.counts[result] += 1
        if self.metrics is not None:
            self.metrics.record_alert(channel, result)

    def _finish(self, channel: str, result: str) -> None:
        with self._cond:
            self._count(channel, result)
            self._pending -= 1
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._abandon.is_set():
                self._finish(item.channel, "dropped")
                continue
            ok = False
            try:
                ok = self._deliver(item)
            except Exception as exc:  # a bug must not kill the worker
                _warn("alert_error", channel=item.channel, error=repr(exc))
            finally:
                self._finish(item.channel, "sent" if ok else "failed")

    def _deliver(self, alert: Alert) -> bool:
        spec = self.channels.get(alert.channel)
        if spec is None:
            _warn("alert_failed", channel=alert.channel, error="unknown channel")
            return False
        if spec.type == "alertmanager":
            url = spec.url.rstrip("/")
            url = url if url.endswith("/api/v2/alerts") else url + "/api/v2/alerts"
            body: Any = alertmanager_body(alert, self.ttl_s)
        else:
            url, body = spec.url, webhook_body(alert)
        data = json.dumps(body).encode("utf-8")
        error = ""
        for attempt in range(spec.retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                if self._abandon.wait(delay):
                    break
            retry, error = self._post(url, data, spec.timeout_s)
            if not error:
                return True
            if not retry:
                break
        _warn("alert_failed", channel=alert.channel, url=url, error=error)
        return False

    @staticmethod
    def _post(url: str, data: bytes, timeout_s: float) -> tuple[bool, str]:
        """One POST; ``(retryable, error)`` with ``error == ""`` on success."""
        req = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                resp.read()
            return False, ""
        except urllib.error.HTTPError as exc:
            return exc.code == 429 or exc.code >= 500, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            return True, f"{type(exc).__name__}: {exc}"
