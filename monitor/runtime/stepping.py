"""One evaluation of the policy over a forward's new columns, split by phase.

A forward's new columns are prompt columns, completion columns, or (in ``scan``) both: the
evaluator is called once per phase (``prompt`` first), and the results are joined back along
T. An exception in the evaluator, or one already raised by an SAE encode, gives a *degraded*
step: nothing matched, every valid token counted as not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.policy.evaluator import EvalState, StepResult
from monitor.runtime.binding import PolicyBinding


@dataclass(frozen=True)
class Step:
    """The joined :class:`StepResult` fields the runtime uses; all ``(B, n, ...)`` on device."""

    acts: torch.Tensor | None  # (B, n, K) pre-intervention, model dtype (None: not encoded)
    acts_f32: torch.Tensor | None  # (B, n, K) float32 copy for events/exports
    match: torch.Tensor  # (B, n, R) bool
    stop: torch.Tensor  # (B, n) bool
    stop_rule: torch.Tensor  # (B, n) long
    replace_rule: torch.Tensor  # (B, n) long
    halt: torch.Tensor  # (B, n) bool: stop or replace
    token_index: torch.Tensor  # (B, n) long, -1 on invalid tokens
    probe_scores: torch.Tensor  # (B, n, P)
    degraded: torch.Tensor  # (B, n) bool: valid tokens that were not checked
    new_acts: torch.Tensor | None  # (B, n, K) targets (None when the policy never edits)
    intervene: torch.Tensor  # (B, n, K) bool
    error: str | None = None
    kind: str = "nonfinite"  # degraded reason word: sae_error | policy_error | nonfinite


def _failed(binding: PolicyBinding, valid: torch.Tensor, error: str, kind: str) -> Step:
    B, n = valid.shape
    pol, dev = binding.policy, valid.device
    none = torch.full((B, n), -1, dtype=torch.long, device=dev)
    false = torch.zeros(B, n, dtype=torch.bool, device=dev)
    return Step(
        acts=None,
        acts_f32=None,
        match=torch.zeros(B, n, pol.R, dtype=torch.bool, device=dev),
        stop=false,
        stop_rule=none,
        replace_rule=none,
        halt=false,
        token_index=none,
        probe_scores=torch.zeros(B, n, pol.P, device=dev),
        degraded=valid.clone(),
        new_acts=None,
        intervene=torch.zeros(B, n, pol.K, dtype=torch.bool, device=dev),
        error=error,
        kind=kind,
    )


def evaluate_phases(
    binding: PolicyBinding,
    state: EvalState,
    acts: torch.Tensor | None,
    valid: torch.Tensor,
    prompt_cols: int,
    error: str | None,
) -> Step:
    """Evaluate ``acts (B, n, K)`` with ``valid (B, n)``: columns ``[0, prompt_cols)`` as the
    prompt phase, the rest as completion. ``acts=None``/``error`` gives a degraded step."""
    if acts is None or error is not None:
        return _failed(binding, valid, error or "features were not encoded", "sae_error")
    n = valid.shape[1]
    spans = [(0, prompt_cols, "prompt"), (prompt_cols, n, "completion")]
    try:
        parts: list[StepResult] = [
            binding.evaluator.step(acts[:, a:b], valid[:, a:b], phase, state)
            for a, b, phase in spans
            if b > a
        ]
    except Exception as exc:  # evaluator failure: fail mode decides
        return _failed(binding, valid, f"{type(exc).__name__}: {exc}", "policy_error")

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(r, name) for r in parts], dim=1)

    stop, replace = cat("stop"), cat("replace")
    return Step(
        acts=acts,
        acts_f32=acts.float(),
        match=cat("match"),
        stop=stop,
        stop_rule=cat("stop_rule"),
        replace_rule=cat("replace_rule"),
        halt=stop | replace,
        token_index=cat("token_index"),
        probe_scores=cat("probe_scores"),
        degraded=cat("degraded"),
        new_acts=cat("new_acts") if binding.intervenes else None,
        intervene=cat("intervene"),
    )
