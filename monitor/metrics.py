"""Prometheus metrics for featureguard, on a registry the caller owns (never the global one).

Labels are bounded by the policy: rule id, severity, mode, action kind, channel, SAE and
exported feature *names*. Request ids, tenants, users, text and feature indices never become
labels (CONTRACTS "Request context").

Two objects:

* :class:`Metrics` holds every metric family and the process-wide recorders (requests, alerts,
  audit, reloads, SAE health, degraded tokens).
* :meth:`Metrics.bind_policy` makes ``policy`` the active one (``featureguard_policy_info``),
  creates every label set it defines at 0 and returns a :class:`PolicyMetrics`. The runtime keeps
  that handle with its policy snapshot for the whole ``generate`` call and records each step with
  it, so a reload during a call never attributes old rule indices to the new policy's rules.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.policy.compiled import CompiledPolicy
from monitor.policy.reload import ReloadEvent

PREFIX = "featureguard_"
STEP_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1)
"""Per-step monitor overhead: 10 µs .. 100 ms (slower steps land in +Inf)."""
ACTIVATION_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0)
"""Feature activations (SAE units; ``le="0"`` counts the inactive tokens)."""
PHASES = ("prompt", "completion")
ALERT_RESULTS = ("sent", "failed", "dropped")
DEGRADED_REASONS = ("nonfinite", "sae_error", "evaluator_error", "audit_error", "error")
"""``degraded_tokens_total`` reasons; any other text (an exception message) is counted as
``error`` so that no unbounded text becomes a label."""
HTTP_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/admin/reload",
    "/admin/policy",
    "other",
)
"""``endpoint`` label values of the server metrics; any other path is counted as ``other``."""
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Server request latency: 5 ms .. 2 min."""
ON_ERROR_RULE = "on_error"
"""``rule`` label of a sequence stopped by the policy's ``on_error: fail_closed``, not a rule."""


class PolicyMetrics:
    """The metrics of one bound policy; made by :meth:`Metrics.bind_policy`. Thread-safe."""

    def __init__(self, metrics: Metrics, policy: CompiledPolicy) -> None:
        self.metrics, self.policy = metrics, policy
        m = metrics
        # Children resolved once per rule index, so a step only indexes lists.
        self._match = [
            m.rule_matches.labels(rule=r.id, severity=r.severity, mode=r.mode) for r in policy.rules
        ]
        self._actions = [
            [m.actions.labels(action=a, rule=r.id) for a in dict.fromkeys(r.action_kinds)]
            if r.mode == "enforce"
            else []
            for r in policy.rules
        ]
        for r in policy.rules:
            if r.mode == "enforce" and "stop" in r.action_kinds:
                m.sequences_stopped.labels(rule=r.id)
            if r.mode == "enforce" and "replace" in r.action_kinds:
                m.sequences_replaced.labels(rule=r.id)
        if policy.on_error == "fail_closed":
            m.sequences_stopped.labels(rule=ON_ERROR_RULE)
        self.exported = tuple(policy.feature_names[c] for c in policy.export_columns)
        """Exported feature names, in ``export_columns`` order (columns of ``activations``)."""
        self._hist = [m.feature_activation.labels(feature=n) for n in self.exported]
        self._by_name = dict(zip(self.exported, self._hist, strict=True))
        self._rule_index = {r.id: r.index for r in policy.rules}
        self._tokens = {p: m.tokens_monitored.labels(phase=p) for p in PHASES}
        self._step = {p: m.step_seconds.labels(phase=p) for p in PHASES}

    def record_step(
        self,
        phase: str,
        n_tokens: int,
        *,
        matches: Sequence[int] | None = None,
        seconds: float | None = None,
        activations: Any = None,
        degraded: int = 0,
        degraded_reason: str = "nonfinite",
    ) -> None:
        """Record one evaluator step (call once per prefill / decode step, host-side numbers).

        ``phase``: ``prompt`` or ``completion``; ``n_tokens``: valid tokens monitored in it.
        ``matches``: (R,) match counts per rule index, e.g. ``result.match.sum((0, 1)).tolist()``;
        each match of an enforce rule also counts one ``actions_total`` per action kind the rule
        declares (shadow rules never act). ``seconds``: the monitor's overhead for the step.
        ``activations``: see :meth:`observe_activations`. ``degraded``: tokens whose
        features could not be trusted (NaN/inf, SAE error), counted under ``degraded_reason``.
        """
        if n_tokens:
            self._tokens[phase].inc(n_tokens)
        if matches is not None:
            if len(matches) != len(self._match):
                raise ValueError(f"matches has {len(matches)} counts for {len(self._match)} rules")
            for i, n in enumerate(matches):
                if n:
                    self._match[i].inc(n)
                    for child in self._actions[i]:
                        child.inc(n)
        if seconds is not None:
            self._step[phase].observe(seconds)
        if activations is not None and self._hist:
            self.observe_activations(activations)
        if degraded:
            self.metrics.record_degraded(degraded_reason, degraded)

    def observe_activations(self, activations: Any) -> None:
        """Observe exported-feature values: a mapping name → values of the N valid tokens, or
        (N, E) rows in ``exported`` order (a tensor or nested lists). Names the policy does not
        export are ignored (they must never create a series)."""
        if isinstance(activations, Mapping):
            for name, values in activations.items():
                if name in self._by_name:
                    child = self._by_name[name]
                    for v in values.tolist() if hasattr(values, "tolist") else values:
                        child.observe(v)
            return
        rows = activations.tolist() if hasattr(activations, "tolist") else activations
        for row in rows:
            if len(row) != len(self._hist):
                raise ValueError(f"expected {len(self._hist)} exported features, got {len(row)}")
            for child, value in zip(self._hist, row, strict=True):
                child.observe(value)

    def record_match(self, rule: str | int, n: int = 1) -> None:
        """``n`` matches of one rule (id or index), with its actions as in :meth:`record_step`;
        for callers that see matches as events rather than per-step counts."""
        i = self._rule_index[rule] if isinstance(rule, str) else rule
        self._match[i].inc(n)
        for child in self._actions[i]:
            child.inc(n)

    def record_stopped(self, rule_index: int | None, *, replaced: bool = False, n: int = 1) -> None:
        """``n`` sequences ended by rule ``rule_index`` (``stop``, or ``replace`` when
        ``replaced``); ``None`` means ``on_error: fail_closed`` stopped them (label
        ``rule="on_error"``)."""
        rule = ON_ERROR_RULE if rule_index is None else self.policy.rules[rule_index].id
        family = self.metrics.sequences_replaced if replaced else self.metrics.sequences_stopped
        family.labels(rule=rule).inc(n)


class Metrics:
    """Every featureguard metric family, registered on ``registry``.

    ``step_buckets`` and ``activation_buckets`` override the histogram buckets.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        step_buckets: Sequence[float] = STEP_BUCKETS,
        activation_buckets: Sequence[float] = ACTIVATION_BUCKETS,
    ) -> None:
        if not isinstance(registry, CollectorRegistry):
            raise TypeError("Metrics needs a prometheus_client CollectorRegistry")
        self.registry = registry
        r, p = registry, PREFIX
        self.requests = Counter(p + "requests", "generate calls monitored", registry=r)
        self.generated_tokens = Counter(
            p + "generated_tokens", "Tokens generated by monitored calls", registry=r
        )
        self.tokens_monitored = Counter(
            p + "tokens_monitored", "Tokens evaluated by the policy", ["phase"], registry=r
        )
        self.rule_matches = Counter(
            p + "rule_matches", "Rule matches", ["rule", "severity", "mode"], registry=r
        )
        self.actions = Counter(p + "actions", "Actions taken", ["action", "rule"], registry=r)
        self.sequences_stopped = Counter(
            p + "sequences_stopped", "Sequences ended by a stop", ["rule"], registry=r
        )
        self.sequences_replaced = Counter(
            p + "sequences_replaced", "Sequences ended by a replace", ["rule"], registry=r
        )
        self.alerts = Counter(
            p + "alerts", "Alert deliveries by outcome", ["channel", "result"], registry=r
        )
        self.step_seconds = Histogram(
            p + "monitor_step_seconds",
            "Monitor overhead per generate step",
            ["phase"],
            buckets=step_buckets,
            registry=r,
        )
        self.feature_activation = Histogram(
            p + "feature_activation",
            "Activation of features the policy exports",
            ["feature"],
            buckets=activation_buckets,
            registry=r,
        )
        self.policy_info = Gauge(
            p + "policy_info",
            "The active policy (value 1)",
            ["policy", "version", "sha256"],
            registry=r,
        )
        self.policy_reloads = Counter(
            p + "policy_reloads", "Policy reload attempts", ["result"], registry=r
        )
        self.degraded_tokens = Counter(
            p + "degraded_tokens",
            "Tokens whose features could not be trusted",
            ["reason"],
            registry=r,
        )
        self.audit_events = Counter(p + "audit_events", "Audit events written", registry=r)
        self.audit_events_lost = Counter(
            p + "audit_events_lost", "Audit events lost to a failing sink", registry=r
        )
        self.sae_l0 = Gauge(
            p + "sae_l0",
            "Sampled mean active features per token (NaN: not sampled)",
            ["sae"],
            registry=r,
        )
        self.sae_explained_variance = Gauge(
            p + "sae_explained_variance",
            "Sampled explained variance of the SAE (NaN: not sampled)",
            ["sae"],
            registry=r,
        )
        # -- server (``featureguard serve``): HTTP requests, latency, queue, filtered answers ----
        self.http_requests = Counter(
            p + "http_requests",
            "HTTP requests served, by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            p + "http_request_seconds",
            "HTTP request latency (streaming: until the last chunk)",
            ["endpoint"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            p + "queue_depth", "Generation requests waiting for the model", registry=r
        )
        self.responses_filtered = Counter(
            p + "responses_filtered",
            "Choices ended with finish_reason content_filter",
            ["endpoint"],
            registry=r,
        )
        for endpoint in HTTP_ENDPOINTS:
            self.http_request_seconds.labels(endpoint=endpoint)
        for endpoint in HTTP_ENDPOINTS[:2]:
            self.responses_filtered.labels(endpoint=endpoint)
            self.http_requests.labels(endpoint=endpoint, code="200")
        for result in ("ok", "failed"):
            self.policy_reloads.labels(result=result)
        for reason in DEGRADED_REASONS:
            self.degraded_tokens.labels(reason=reason)
        for phase in PHASES:
            self.tokens_monitored.labels(phase=phase)
            self.step_seconds.labels(phase=phase)
        self._lock = threading.Lock()
        self._info: tuple[str, str, str] | None = None
        self._bound: PolicyMetrics | None = None
        self._saes: set[str] = set()

    # -- policy ---------------------------------------------------------------------------------

    def bind_policy(self, policy: CompiledPolicy) -> PolicyMetrics:
        """Make ``policy`` the active one and create all its label sets at 0.

        Sets ``policy_info{policy,version,sha256}`` to 1 and removes the previous policy's
        series; pre-creates rule matches (rule × severity × mode), actions (action × rule),
        stops/replaces, alert results per channel, exported feature histograms and NaN SAE
        gauges. Series of rules a reload removed keep their last value. Cheap when ``policy``
        is already bound (returns the same handle).
        """
        with self._lock:
            if self._bound is not None and self._bound.policy is policy:
                return self._bound
            bound = PolicyMetrics(self, policy)
            self.declare_channels(policy.channels)
            for sae in policy.saes:
                if sae.name not in self._saes:  # NaN until the first sampled encode
                    self.set_sae_health(sae.name, math.nan, math.nan)
            info = (policy.name, policy.revision or "", policy.sha256)
            if self._info is not None and self._info != info:
                self.policy_info.remove(*self._info)
            self.policy_info.labels(*info).set(1)
            self._info, self._bound = info, bound
            return bound

    @property
    def bound(self) -> PolicyMetrics | None:
        """The handle of the active policy (None before the first :meth:`bind_policy`)."""
        return self._bound

    def record_reload(self, ok: bool) -> None:
        """Count one reload attempt (``result`` ok|failed); bind the new policy separately."""
        self.policy_reloads.labels(result="ok" if ok else "failed").inc()

    def on_reload(self, event: ReloadEvent) -> None:
        """A :class:`~monitor.policy.reload.PolicyWatcher` ``on_reload`` callback."""
        self.record_reload(event.ok)

    # -- process-wide recorders -----------------------------------------------------------------

    def record_request(self, generated_tokens: int = 0) -> None:
        """One monitored ``generate`` call that produced ``generated_tokens`` tokens."""
        self.requests.inc()
        if generated_tokens:
            self.generated_tokens.inc(generated_tokens)

    def record_degraded(self, reason: str, n: int = 1) -> None:
        """``n`` tokens that could not be checked, by ``reason`` (one of
        :data:`DEGRADED_REASONS`; anything else counts as ``error``)."""
        label = reason if reason in DEGRADED_REASONS else "error"
        self.degraded_tokens.labels(reason=label).inc(n)

    def declare_channels(self, channels: Iterable[str]) -> None:
        """Create ``alerts_total`` at 0 for each channel × sent|failed|dropped."""
        for channel in channels:
            for result in ALERT_RESULTS:
                self.alerts.labels(channel=channel, result=result)

    def record_alert(self, channel: str, result: str) -> None:
        """One alert delivery outcome: ``sent``, ``failed`` or ``dropped``."""
        if result not in ALERT_RESULTS:
            raise ValueError(f"alert result must be one of {ALERT_RESULTS}, not {result!r}")
        self.alerts.labels(channel=channel, result=result).inc()

    def record_audit(self, written: int = 0, lost: int = 0) -> None:
        """Audit events written to / lost by the sink."""
        if written:
            self.audit_events.inc(written)
        if lost:
            self.audit_events_lost.inc(lost)

    def record_http(self, endpoint: str, code: int, seconds: float) -> None:
        """One served HTTP request (``endpoint`` outside :data:`HTTP_ENDPOINTS` → ``other``)."""
        label = endpoint if endpoint in HTTP_ENDPOINTS else "other"
        self.http_requests.labels(endpoint=label, code=str(code)).inc()
        self.http_request_seconds.labels(endpoint=label).observe(seconds)

    def record_filtered(self, endpoint: str, n: int = 1) -> None:
        """``n`` choices that ended with ``finish_reason: content_filter``."""
        label = endpoint if endpoint in HTTP_ENDPOINTS else "other"
        self.responses_filtered.labels(endpoint=label).inc(n)

    def set_sae_health(self, sae: str, l0: float, explained_variance: float) -> None:
        """Update the SAE health gauges from a sampled dense encode (every N tokens)."""
        self._saes.add(sae)
        self.sae_l0.labels(sae=sae).set(l0)
        self.sae_explained_variance.labels(sae=sae).set(explained_variance)
