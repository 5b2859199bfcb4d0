"""What the runtime tells the outside world: match events, step statistics, degraded tokens.

The runtime never imports Prometheus, the audit log or the alert channels. It hands everything
to ONE injected :class:`Dispatcher` (see :mod:`monitor.runtime.dispatch` for the one that feeds
Metrics + AuditLog + AlertDispatcher). Every call happens on the generating thread, once per
model forward at most (``on_health``: once per SAE of a sampled forward), after the single host
read of that step; a dispatcher must return fast (queue slow work, as
``AlertDispatcher.submit`` does).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog


def log_safely(level: str, event: str, **fields: Any) -> None:
    """Log through structlog, never raising into generation (a closed or full log stream
    must not stop the model: the dispatcher, not the log, is the record that counts)."""
    with contextlib.suppress(Exception):  # depends on the application's logging setup
        getattr(structlog.get_logger("featureguard.runtime"), level)(event, **fields)


@dataclass(frozen=True)
class MatchEvent:
    """One rule match (CONTRACTS: one audit event, one counter increment, one ``fired`` entry).

    ``features`` are the pre-intervention values, at this token, of the features the rule
    reads; ``actions`` are the rule's configured action kinds and ``enforced`` says whether they
    were carried out (``mode: enforce``) or only recorded (``mode: shadow``).
    """

    context: Mapping[str, Any]
    row: int
    token_index: int  # 0-based in the row's unpadded sequence, prompt first
    phase: str  # "prompt" | "completion"
    rule: str
    severity: str
    mode: str  # "enforce" | "shadow"
    actions: tuple[str, ...]
    features: Mapping[str, float]
    probes: Mapping[str, float]  # score (logit for logistic probes) of each probe the rule reads
    policy: str
    revision: str | None
    sha256: str
    text: str | None = None  # an excerpt ending at the token, only when audit.include_text
    time: float = field(default_factory=time.time)
    # probe → its inputs with the largest contributions w_i · f_i at this token (top 5)
    probe_features: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"


@dataclass(frozen=True)
class DegradedEvent:
    """Tokens that could not be checked (SAE/evaluator exception or a NaN/inf feature value)."""

    context: Mapping[str, Any]
    row: int
    tokens: int  # degraded tokens of this row in this step
    phase: str
    reason: str  # exception text or "non-finite feature value"
    kind: str  # fixed word for metrics: "sae_error" | "policy_error" | "nonfinite" | "audit_error"
    on_error: str  # "fail_open" (row continues) | "fail_closed" (row stopped)
    policy: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class StepStats:
    """One monitored model forward (a prefill chunk, a decode step or the final extra step)."""

    policy: str
    phase: str  # phase of the last token in the step
    tokens: int  # valid tokens checked (pads and finished rows excluded)
    degraded: int  # valid tokens that could not be checked
    overhead_s: float  # host time spent in the monitor's hooks for this forward
    exported: Mapping[str, Sequence[float]] = field(default_factory=dict)  # export: true values
    degraded_kind: str = "nonfinite"  # DegradedEvent.kind of this step's degraded tokens
    halts: Sequence[tuple[int | None, str]] = ()  # rows ended now: (rule index | None, kind)
    #   kind "stop" | "replace" | "error" (rule index None: on_error fail_closed)
    sha256: str = ""  # of the policy that judged the step


@runtime_checkable
class Dispatcher(Protocol):
    """Receives what the runtime observes; implementations must not block the generating thread."""

    def on_policy(self, policy: Any) -> None:
        """A compiled policy is used for the first time (create metric label sets at 0)."""

    def on_step(self, stats: StepStats) -> None:
        """Per-forward counters and timings."""

    def on_events(self, events: Sequence[MatchEvent]) -> None:
        """Rule matches of one step, in (row, token, rule) order."""

    def on_degraded(self, events: Sequence[DegradedEvent]) -> None:
        """Unchecked tokens of one step (also logged by the runtime)."""

    def on_finish(self, report: Any) -> None:
        """A monitored call ended (its :class:`~monitor.runtime.report.MonitorReport`)."""

    def on_health(self, sae: str, l0: float, explained_variance: float, n_tokens: int) -> None:
        """A sampled dense encode of the policy's SAE ``sae`` (its name in the policy) on
        ``n_tokens`` hooked activations: mean active features and explained variance (NaN when
        undefined); see :mod:`monitor.runtime.health`. Optional: the runtime skips a
        dispatcher without this method."""


class NullDispatcher:
    """Drops everything (the default when ``attach`` gets no dispatcher)."""

    def on_policy(self, policy: Any) -> None:
        pass

    def on_step(self, stats: StepStats) -> None:
        pass

    def on_events(self, events: Sequence[MatchEvent]) -> None:
        pass

    def on_degraded(self, events: Sequence[DegradedEvent]) -> None:
        pass

    def on_finish(self, report: Any) -> None:
        pass

    def on_health(self, sae: str, l0: float, explained_variance: float, n_tokens: int) -> None:
        pass


class CollectingDispatcher(NullDispatcher):
    """Keeps everything in lists (tests, ``featureguard generate --policy``)."""

    def __init__(self) -> None:
        self.policies: list[Any] = []
        self.steps: list[StepStats] = []
        self.events: list[MatchEvent] = []
        self.degraded: list[DegradedEvent] = []
        self.reports: list[Any] = []
        self.health: list[tuple[str, float, float, int]] = []  # (sae, l0, ev, n_tokens)

    def on_policy(self, policy: Any) -> None:
        self.policies.append(policy)

    def on_step(self, stats: StepStats) -> None:
        self.steps.append(stats)

    def on_events(self, events: Sequence[MatchEvent]) -> None:
        self.events.extend(events)

    def on_degraded(self, events: Sequence[DegradedEvent]) -> None:
        self.degraded.extend(events)

    def on_finish(self, report: Any) -> None:
        self.reports.append(report)

    def on_health(self, sae: str, l0: float, explained_variance: float, n_tokens: int) -> None:
        self.health.append((sae, l0, explained_variance, n_tokens))
