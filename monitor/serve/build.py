"""Assemble a running ``featureguard serve`` from a loaded model, a policy file and options.

:class:`Service` owns everything the server needs and closes it in reverse order: the
Prometheus registry and :class:`~monitor.metrics.Metrics`, the hot-reloading
:class:`~monitor.policy.reload.PolicyWatcher`, the audit log, the alert dispatcher, the guarded
model (hooks), the preflight result, the :class:`~monitor.serve.engine.Engine` and the app.
The CLI, the tests and ``bench serve`` all build the server through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.alerts import AlertDispatcher
from monitor.audit import AuditLog
from monitor.closing import Closing
from monitor.metrics import Metrics
from monitor.policy.reload import PolicyWatcher, ReloadEvent
from monitor.runtime.dispatch import MonitorDispatcher
from monitor.runtime.guarded import GuardedModel, attach
from monitor.serve.app import ServeSettings, ServeState, create_app
from monitor.serve.engine import Engine

log = logging.getLogger("featureguard.serve")

PREFLIGHT_TEXTS = [
    "The museum opens at nine in the morning and closes at five in the afternoon.",
    "She poured the tea, sat by the window, and watched the rain fall on the garden.",
    "To reset your password, open the settings page and choose the security tab.",
    "The committee will meet next Tuesday to review the budget for the coming year.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "He practised the piano every evening until the piece finally sounded right.",
    "Our train was delayed by twenty minutes because of a signal failure.",
    "Add the flour slowly and keep stirring so that no lumps form in the sauce.",
]
"""Benign texts for the start-up preflight (a few hundred tokens)."""


@dataclass
class ServeOptions:
    """What ``featureguard serve`` can be told (CLI flags map one to one)."""

    model_name: str
    audit_log: str | None = None  # None: the policy's audit sink
    max_batch_rows: int = 8
    max_queue: int = 256
    hold_back: int = 1
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    reload_interval_s: float = 1.0
    hide_rule_details: bool = False
    preflight: str = "strict"  # "strict" (refuse to start) | "warn" (not ready) | "off"
    admin_token: str | None = None
    health_every: int = 256


class Service(Closing):
    """A ready-to-serve app around ``model`` + ``tokenizer`` guarded by the policy at ``policy``.

    Raises :class:`~monitor.policy.diagnostics.PolicyError` for an invalid policy and
    :class:`~sae.preflight.PreflightError` when the preflight fails in ``strict`` mode; nothing
    stays attached or running after a failed start.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        policy: str | Path,
        options: ServeOptions,
        *,
        registry: CollectorRegistry | None = None,
        policy_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.options = options
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.guarded: GuardedModel | None = None
        self.engine: Engine | None = None
        self.watcher = PolicyWatcher(
            policy,
            interval_s=options.reload_interval_s,
            on_reload=[self.metrics.on_reload, self._on_reload],
            **(policy_kwargs or {}),
        )
        active = self.watcher.policy
        audit = AuditLog(options.audit_log or active.audit.sink, metrics=self.metrics)
        self.dispatcher = MonitorDispatcher(
            self.metrics, audit, AlertDispatcher(active.channels, self.metrics)
        )
        try:
            self.guarded = attach(
                model,
                self.watcher,
                dispatcher=self.dispatcher,
                tokenizer=tokenizer,
                health_every=options.health_every,
            )
            self.preflight = self._preflight(tokenizer)
            self.engine = Engine(
                self.guarded,
                tokenizer,
                max_batch_rows=options.max_batch_rows,
                max_queue=options.max_queue,
                hold_back=options.hold_back,
                metrics=self.metrics,
            ).start()
        except BaseException:
            self.close()
            raise
        ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.settings = ServeSettings(
            model_name=options.model_name,
            context_length=int(ctx) if ctx else None,
            max_tokens_limit=options.max_tokens_limit,
            default_max_tokens=options.default_max_tokens,
            hide_rule_details=options.hide_rule_details,
            admin_token=options.admin_token or None,
        )
        self.state = ServeState(
            self.engine, self.metrics, self.settings, self.watcher, self.preflight
        )
        self.app = create_app(self.state)
        self.watcher.start()

    def _preflight(self, tokenizer: Any) -> str:
        if self.options.preflight == "off":
            return "skipped"
        from sae.preflight import PreflightError, check_attachment

        assert self.guarded is not None
        binding = self.guarded.binding()
        for group in binding.groups:
            for bound in group.saes:
                try:
                    check_attachment(
                        self.guarded.model,
                        tokenizer,
                        bound.sae,
                        PREFLIGHT_TEXTS,
                        hook_name=bound.spec.hook or None,
                    )
                except PreflightError as exc:
                    if self.options.preflight == "strict":
                        raise
                    log.warning("preflight failed for SAE %s: %s", bound.spec.name, exc)
                    return f"failed: SAE {bound.spec.name}: {str(exc).splitlines()[0]}"
        return "passed"

    def _on_reload(self, event: ReloadEvent) -> None:
        """Bind a new policy at once, so ``policy_info`` and its zeroed series change with the
        reload, not at the next request."""
        if event.ok and self.guarded is not None:
            self.guarded.binding()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (failing queued requests), the watcher, alerts and audit; detach."""
        if self.engine is not None:
            self.engine.close(timeout)
        self.watcher.stop()
        if self.guarded is not None:
            self.guarded.detach()
        self.dispatcher.close()
