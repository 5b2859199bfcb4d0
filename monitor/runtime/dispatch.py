"""The production dispatcher: Prometheus metrics + the audit log + alert delivery.

:class:`MonitorDispatcher` implements :class:`~monitor.runtime.events.Dispatcher` on top of
:class:`~monitor.metrics.Metrics`, :class:`~monitor.audit.AuditLog` and
:class:`~monitor.alerts.AlertDispatcher` (each optional). Per match: one audit event, one
``rule_matches`` increment (with ``actions_total`` for enforce rules) and, for enforce rules with
an ``alert`` action, one queued alert per channel (``submit`` never blocks). An audit sink
failure under ``on_error: fail_closed`` is re-raised after the step's other events were handled;
the runtime then stops the affected rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monitor.alerts import AlertDispatcher, alerts_for_match
from monitor.audit import AuditLog
from monitor.metrics import Metrics, PolicyMetrics
from monitor.policy.compiled import CompiledPolicy
from monitor.runtime.events import DegradedEvent, MatchEvent, StepStats


class MonitorDispatcher:
    """Feeds ``metrics``, ``audit`` and ``alerts`` from the runtime's events."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        alerts: AlertDispatcher | None = None,
    ) -> None:
        self.metrics, self.audit, self.alerts = metrics, audit, alerts
        self._policies: dict[str, tuple[CompiledPolicy, PolicyMetrics | None]] = {}
        self._matches: dict[str, list[int]] = {}  # policy sha → per-rule matches this step

    @classmethod
    def for_policy(
        cls, policy: CompiledPolicy, metrics: Metrics | None = None, **alert_kwargs: Any
    ) -> MonitorDispatcher:
        """Audit to the policy's sink, alerts to its channels, metrics if given."""
        return cls(
            metrics,
            AuditLog.for_policy(policy, metrics=metrics),
            AlertDispatcher(policy.channels, metrics, **alert_kwargs) if policy.channels else None,
        )

    def on_policy(self, policy: CompiledPolicy) -> None:
        pm = self.metrics.bind_policy(policy) if self.metrics is not None else None
        self._policies[policy.sha256] = (policy, pm)
        if self.alerts is not None:
            self.alerts.set_channels(policy.channels)

    def _policy(self, sha: str) -> tuple[CompiledPolicy, PolicyMetrics | None]:
        if sha not in self._policies:
            raise KeyError(f"events for policy {sha[:12]} arrived before on_policy")
        return self._policies[sha]

    def on_events(self, events: Sequence[MatchEvent]) -> None:
        error: Exception | None = None
        for ev in events:
            policy, _ = self._policy(ev.sha256)
            rule = policy.rule(ev.rule)
            counts = self._matches.setdefault(ev.sha256, [0] * policy.R)
            counts[rule.index] += 1
            if self.audit is not None:
                try:
                    self.audit.emit(
                        policy,
                        rule,
                        row=ev.row,
                        token_index=ev.token_index,
                        phase=ev.phase,
                        features=ev.features,
                        actions=list(ev.actions) if ev.enforced else [],
                        context=ev.context,
                        text=ev.text,
                        probes=ev.probes,
                        probe_features=ev.probe_features,
                    )
                except Exception as exc:  # AuditSinkError under fail_closed
                    error = error or exc
            if self.alerts is not None and ev.enforced and "alert" in ev.actions:
                for alert in alerts_for_match(
                    policy,
                    rule,
                    row=ev.row,
                    token_index=ev.token_index,
                    phase=ev.phase,
                    # probe rules: their score (logit) is the evidence, as "probe:NAME"
                    features={**ev.features, **{f"probe:{k}": v for k, v in ev.probes.items()}},
                    context=ev.context,
                    now=ev.time,
                ):
                    self.alerts.submit(alert)
        if error is not None:
            raise error

    def on_step(self, stats: StepStats) -> None:
        sha = stats.sha256
        if sha not in self._policies:
            return
        _, pm = self._policies[sha]
        counts = self._matches.pop(sha, None)
        if pm is None:
            return
        acts = None
        if stats.exported and pm.exported:
            acts = [list(v) for v in zip(*(stats.exported[n] for n in pm.exported), strict=True)]
        pm.record_step(
            stats.phase,
            stats.tokens,
            matches=counts,
            seconds=stats.overhead_s,
            activations=acts,
            degraded=stats.degraded,
            degraded_reason=stats.degraded_kind,
        )
        for index, kind in stats.halts:
            pm.record_stopped(index, replaced=kind == "replace")

    def on_degraded(self, events: Sequence[DegradedEvent]) -> None:
        """Counted through ``on_step``; the runtime logs each one."""

    def on_health(self, sae: str, l0: float, explained_variance: float, n_tokens: int) -> None:
        """Set ``featureguard_sae_l0`` and ``featureguard_sae_explained_variance``."""
        if self.metrics is not None:
            self.metrics.set_sae_health(sae, l0, explained_variance)

    def on_finish(self, report: Any) -> None:
        if self.metrics is not None:
            self.metrics.record_request(sum(r.completion_tokens for r in report.rows))

    def close(self) -> None:
        """Flush and close the audit log and the alert workers."""
        if self.alerts is not None:
            self.alerts.close()
        if self.audit is not None:
            self.audit.close()
