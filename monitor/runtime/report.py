"""Per-call results of monitored generation: which rules fired where, and what was done.

``GuardedModel.generate`` fills a :class:`MonitorReport` while it runs (readable from another
thread while streaming, via ``guarded.last_report``) and finishes it when ``generate`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Firing:
    """One match of one rule in one row (the report's side of a :class:`MatchEvent`)."""

    rule: str
    severity: str
    mode: str
    token_index: int
    phase: str
    actions: tuple[str, ...]
    features: Mapping[str, float]
    probes: Mapping[str, float] = field(default_factory=dict)  # score of each probe it reads

    def as_dict(self) -> dict[str, Any]:
        out = {
            "rule": self.rule,
            "severity": self.severity,
            "mode": self.mode,
            "first_token": self.token_index,
            "phase": self.phase,
            "actions": list(self.actions),
            "features": dict(self.features),
        }
        if self.probes:
            out["probes"] = dict(self.probes)
        return out


@dataclass
class RowReport:
    """What happened to one row (after ``num_return_sequences`` expansion).

    ``stopped``: a stop rule (or ``on_error: fail_closed``) ended the row after ``halt_token``;
    tokens after it are padding in the returned ids. ``replaced``: a replace rule ended it and
    ``replacement`` is the message substituted for the completion. ``degraded_tokens`` counts
    tokens that were NOT checked; a row with any is never ``clean``.
    """

    row: int
    context: Mapping[str, Any] = field(default_factory=dict)
    fired: list[Firing] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # completion tokens seen (generated and monitored)
    degraded_tokens: int = 0
    stopped: bool = False
    replaced: bool = False
    halt_rule: str | None = None  # the rule that stopped/replaced the row ("on_error" for errors)
    halt_token: int | None = None  # token index where the row ended
    halt_reason: str | None = None  # "stop" | "replace" | "error"
    replacement: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing fired and every token was checked."""
        return not self.fired and self.degraded_tokens == 0 and not self.stopped

    @property
    def tokens_seen(self) -> int:
        """Valid tokens the monitor saw (degraded ones included: see ``degraded_tokens``)."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "fired": [f.as_dict() for f in self.fired],
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "degraded_tokens": self.degraded_tokens,
            "stopped": self.stopped,
            "replaced": self.replaced,
            "halt_rule": self.halt_rule,
            "halt_token": self.halt_token,
            "halt_reason": self.halt_reason,
            "replacement": self.replacement,
            "errors": list(self.errors),
            "clean": self.clean,
        }


@dataclass
class MonitorReport:
    """All rows of one ``generate`` (or one scan batch), with the policy that judged them."""

    policy: str
    revision: str | None
    sha256: str
    rows: list[RowReport]
    steps: int = 0  # monitored forwards (prefill chunks + decode steps + the final step)
    overhead_s: float = 0.0  # host time in the monitor's hooks
    finished: bool = False  # set when generate returned

    @property
    def fired(self) -> list[tuple[int, Firing]]:
        """Every firing as ``(row, firing)``, in row then token order."""
        return [(r.row, f) for r in self.rows for f in r.fired]

    @property
    def degraded_tokens(self) -> int:
        return sum(r.degraded_tokens for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "revision": self.revision,
            "sha256": self.sha256,
            "steps": self.steps,
            "overhead_s": self.overhead_s,
            "rows": [r.as_dict() for r in self.rows],
        }
