"""Evaluate a compiled policy on per-token feature activations, vectorised over rows and rules.

``Evaluator(compiled).new_state(B, device, contexts)`` makes the per-row state (windows,
``for`` runs, cooldowns, holds, pooled probe scores); ``step(acts, valid, phase, state)``
consumes a chunk of tokens and returns a :class:`StepResult` of on-device tensors. Nothing here
reads a tensor back to the host, executes an action or logs: the runtime reads the masks and
acts.

Per rule, at each of its tokens (valid, and in the rule's scope; other tokens change nothing):

1. ``c``: the condition, on pre-intervention values.
2. window: ``w`` = c held on at least N of the rule's last M tokens (no window: ``w = c``).
3. ``for``: ``s`` = w has held for the last F tokens.
4. ``e = s and not exception`` (feature exceptions per token, context exceptions per row).
   An exception also ends an active rule at once, ``hold`` included.
5. **match** when ``e`` and the rule is not active and its cooldown has passed (more than
   ``cooldown`` tokens since its last match). A match starts the rule **active**; it stays
   active while ``e`` holds and for ``hold`` tokens after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch

from monitor.policy.circuit import Circuit
from monitor.policy.compiled import CompiledPolicy, PolicyTensors
from monitor.policy.enforcement import StepResult, enforcement
from monitor.policy.pooling import max_piece, pool_scan
from monitor.policy.temporal import BIG, WINDOW_BITS, EvalState, Temporal

Context = Mapping[str, Any]
__all__ = ["WINDOW_BITS", "Advanced", "EvalState", "Evaluator", "StepResult", "context_matches"]


@dataclass(frozen=True)
class Advanced:
    """A chunk's rule matches before precedence (:meth:`Evaluator.advance`); on the state's
    device. :meth:`Evaluator.enforce` turns it into the full :class:`StepResult`."""

    acts: torch.Tensor  # (B, T, K) the input, pre-intervention
    x: torch.Tensor  # (B, T, K) the same in float32 (acts itself when it is float32)
    valid: torch.Tensor  # (B, T) bool
    valid3: torch.Tensor  # (B, T, 1) the same
    count: torch.Tensor  # (B, 1) valid tokens of each row before this chunk
    match: torch.Tensor  # (B, T, R) bool
    active: torch.Tensor  # (B, T, R) bool
    scores: torch.Tensor | None  # (B, T, P); None when the policy has no probes

    @property
    def token_index(self) -> torch.Tensor:
        """(B, T) long: position in the row's unpadded sequence, -1 on invalid tokens."""
        tok = self.count + torch.cumsum(self.valid.long(), dim=1) - 1
        return torch.where(self.valid, tok, -1)

    @property
    def probe_scores(self) -> torch.Tensor:
        """(B, T, P) probe logits (or raw scores)."""
        return self.scores if self.scores is not None else self.x.new_zeros(*self.x.shape[:-1], 0)


def context_matches(patterns: Mapping[str, Sequence[str]], context: Context | None) -> bool:
    """All labels in ``patterns`` are in ``context`` with a value matching one of their globs."""
    if context is None:
        return False
    return all(
        key in context
        and context[key] is not None
        and any(fnmatchcase(str(context[key]), p) for p in pats)
        for key, pats in patterns.items()
    )


class Evaluator:
    """Evaluates one :class:`CompiledPolicy`; cheap to make, safe to share between threads
    (all per-row mutable data lives in :class:`EvalState`).

    ``step`` runs once per generated token, and on a CPU each tensor op is an eager dispatch of
    several microseconds, so everything that does not depend on the activations is decided here
    once: temporal features no rule uses are skipped, a phase every rule watches needs no
    scope mask, and a policy whose conditions are all plain literals (no any/all/not/count, no
    exceptions) is evaluated with one gather and one comparison.
    """

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        self._on: dict[torch.device, PolicyTensors] = {}
        self._keys: dict[torch.device, torch.Tensor] = {}
        self._circuit: dict[torch.device, Circuit] = {}
        self._temporal: dict[torch.device, Temporal] = {}
        self._mean_pooling = any(p.pooling == "mean" for p in compiled.probes)
        self._ema_pooling = any(p.pooling == "ema" for p in compiled.probes)
        t = compiled.tensors
        self._ema_piece = max_piece(t.probe_log_decay.tolist())  # once, on the host
        # every rule looks at every valid token of the phase: no (B, T, R) scope mask
        self._all_scope = {
            "prompt": bool(t.in_prompt.all()),
            "completion": bool(t.in_completion.all()),
        }

    def tensors(self, device: torch.device) -> PolicyTensors:
        if device not in self._on:
            t = self.compiled.tensors.to(device)
            R = self.compiled.R
            # Tie-break key per rule: severity first, then earlier rules win.
            self._keys[device] = t.severity * R + (R - 1 - torch.arange(R, device=device))
            self._circuit[device] = Circuit(self.compiled.tensors, t, len(self.compiled.exceptions))
            self._temporal[device] = Temporal(self.compiled, t)
            self._on[device] = t
        return self._on[device]

    def context_mask(
        self, contexts: Context | Sequence[Context | None] | None, batch_size: int
    ) -> torch.Tensor:
        """(B, X) bool on the CPU: which exceptions apply to each row's request context."""
        rows: Sequence[Context | None]
        if contexts is None or isinstance(contexts, Mapping):
            rows = [contexts] * batch_size
        else:
            rows = list(contexts)
            if len(rows) != batch_size:
                raise ValueError(f"{len(rows)} contexts for a batch of {batch_size} rows")
        ex = self.compiled.exceptions
        return torch.tensor(
            [[x.context is None or context_matches(x.context, ctx) for x in ex] for ctx in rows],
            dtype=torch.bool,
        ).reshape(batch_size, len(ex))

    def new_state(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        contexts: Context | Sequence[Context | None] | None = None,
    ) -> EvalState:
        """Fresh state for ``batch_size`` rows; ``contexts`` is one request context for all rows
        or one per row (labels such as ``tenant``, ``user``, ``route``)."""
        dev = torch.device(device)
        t = self.tensors(dev)
        B, R, P = batch_size, self.compiled.R, self.compiled.P
        M = t.max_window if t.max_window > WINDOW_BITS else 0

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=dev)

        return EvalState(
            compiled=self.compiled,
            device=dev,
            count=zeros(B, 1),
            rpos=zeros(B, 1, R),
            hist=zeros(B, 1, R, M, dtype=torch.bool),
            bits=zeros(B, 1, R),
            wcount=zeros(B, 1, R),
            run=zeros(B, 1, R),
            active=zeros(B, 1, R, dtype=torch.bool),
            hold_left=zeros(B, 1, R),
            since=torch.full((B, 1, R), BIG, dtype=torch.long, device=dev),
            probe_sum=zeros(B, P, dtype=torch.float64 if self._ema_pooling else torch.float32),
            probe_cnt=zeros(B, P, dtype=torch.float64 if self._ema_pooling else torch.float32),
            exc_ctx=self.context_mask(contexts, B).to(dev),
        )

    def conditions(
        self, x: torch.Tensor, valid: torch.Tensor, state: EvalState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token condition and exception values, before any temporal logic.

        x (B, T, K) float32, valid (B, T) bool → cond (B, T, R) bool, exc (B, T, R) bool,
        probe scores (B, T, P) float32. Updates the probe-mean state.
        """
        cond, ok, scores = self._conditions(x, valid, state)
        B, T, _ = x.shape
        return (
            cond,
            torch.zeros_like(cond) if ok is None else ~ok,
            x.new_zeros(B, T, 0) if scores is None else scores,
        )

    def _conditions(
        self, x: torch.Tensor, valid: torch.Tensor, state: EvalState
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`conditions` with ``ok`` (no exception applies, ``None`` when the policy has no
        exceptions) instead of ``exc``, and ``None`` scores for no probes."""
        t = self.tensors(state.device)
        scores = None
        vals = x  # (B, T, K + P) once probe scores are appended
        if self.compiled.P:
            scores = x @ t.probe_w + t.probe_b  # (B, T, P)
            if self._ema_pooling:  # one float64 scan for every pooled probe (pooling module)
                pooled, state.probe_sum, state.probe_cnt = pool_scan(
                    scores,
                    valid,
                    t.probe_log_decay,
                    state.probe_sum,
                    state.probe_cnt,
                    self._ema_piece,
                )
                scores = torch.where(t.probe_pooled, pooled, scores)  # (B, T, P)
            elif self._mean_pooling:
                vf = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
                csum = state.probe_sum.unsqueeze(1) + torch.cumsum(scores * vf, dim=1)
                ccnt = state.probe_cnt.unsqueeze(1) + torch.cumsum(vf, dim=1)
                scores = torch.where(t.probe_pooled, csum / ccnt.clamp_min(1.0), scores)
                state.probe_sum, state.probe_cnt = csum[:, -1], ccnt[:, -1]
            vals = torch.cat([x, scores], dim=-1)  # (B, T, K + P)
        cond, ok = self._circuit[state.device](vals, state.exc_ctx)
        return cond, ok, scores

    def step(
        self,
        acts: torch.Tensor,
        valid: torch.Tensor,
        phase: str,
        state: EvalState,
        context: Context | Sequence[Context | None] | None = None,
    ) -> StepResult:
        """Evaluate a chunk of tokens.

        acts (B, T, K) pre-intervention feature values in ``compiled.feature_names`` order;
        valid (B, T) bool, false on pads and finished rows; phase ``prompt`` or ``completion``.
        ``context`` (optional) replaces the request contexts given to :meth:`new_state`.
        """
        return self.enforce(self.advance(acts, valid, phase, state, context))

    def advance(
        self,
        acts: torch.Tensor,
        valid: torch.Tensor,
        phase: str,
        state: EvalState,
        context: Context | Sequence[Context | None] | None = None,
    ) -> Advanced:
        """:meth:`step` up to the rule matches: advances ``state`` exactly as ``step`` does, but
        leaves precedence and interventions to :meth:`enforce` (the runtime asks for them only
        when a rule that acts is active)."""
        if state.compiled is not self.compiled:
            raise ValueError(
                "this state belongs to another policy; make a new state after a reload"
            )
        if phase not in ("prompt", "completion"):
            raise ValueError(f"phase must be 'prompt' or 'completion', not {phase!r}")
        B, T, K = acts.shape
        if K != self.compiled.K or tuple(valid.shape) != (B, T) or state.count.shape[0] != B:
            raise ValueError(
                f"expected acts (B={state.count.shape[0]}, T, K={self.compiled.K}) "
                f"and valid (B, T); got {tuple(acts.shape)}, {tuple(valid.shape)}"
            )
        if context is not None:
            state.exc_ctx = self.context_mask(context, B).to(state.device)
        t = self.tensors(state.device)
        if valid.dtype != torch.bool or valid.device != state.device:
            valid = valid.to(device=state.device, dtype=torch.bool)
        x = acts if acts.dtype == torch.float32 else acts.to(torch.float32)
        cond, ok, scores = self._conditions(x, valid, state)
        valid3 = valid.unsqueeze(-1)  # (B, T, 1)
        upd = valid3  # every rule looks at every valid token of the phase
        if not self._all_scope[phase]:
            scope = t.in_prompt if phase == "prompt" else t.in_completion  # (R,)
            upd = valid3 & scope  # (B, T, R): tokens each rule looks at
        match, active = self._temporal[state.device](cond, ok, upd, state)
        count = state.count
        state.count = count + (valid if T == 1 else valid.sum(1, keepdim=True))  # (B, 1)
        return Advanced(acts, x, valid, valid3, count, match, active, scores)

    def enforce(self, adv: Advanced) -> StepResult:
        """The full :class:`StepResult` (precedence, interventions) of an :meth:`advance`."""
        dev = adv.x.device
        t = self.tensors(dev)
        return enforcement(
            t,
            self._keys[dev],
            adv.acts,
            adv.x,
            adv.valid,
            adv.token_index,
            adv.match,
            adv.active,
            adv.probe_scores,
        )
