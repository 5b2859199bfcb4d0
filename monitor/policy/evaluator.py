"""Evaluate a compiled policy on per-token feature activations, vectorised over rows and rules.

``Evaluator(compiled).new_state(B, device, contexts)`` makes the per-row state (windows, ``for``
runs, cooldowns, holds, probe means); ``step(acts, valid, phase, state)`` consumes a chunk of
tokens and returns a :class:`StepResult` of on-device tensors. Nothing here reads a tensor back to
the host, executes an action or logs: the runtime reads the masks and acts.

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

from monitor.policy.compiled import CompiledPolicy, PolicyTensors
from monitor.policy.enforcement import StepResult, enforcement

_BIG = 1 << 30
Context = Mapping[str, Any]
__all__ = ["EvalState", "Evaluator", "StepResult", "context_matches"]


@dataclass
class EvalState:
    """Per-row evaluation state of one policy; made by :meth:`Evaluator.new_state`."""

    compiled: CompiledPolicy
    device: torch.device
    pos: torch.Tensor  # (B,) valid tokens seen per row
    rpos: torch.Tensor  # (B, R) tokens each rule has seen (valid and in scope)
    hist: torch.Tensor  # (B, R, M) ring buffer of the condition, M = longest window
    wcount: torch.Tensor  # (B, R) condition count inside each rule's window
    run: torch.Tensor  # (B, R) consecutive tokens the windowed condition has held
    active: torch.Tensor  # (B, R) bool
    hold_left: torch.Tensor  # (B, R) hold tokens left
    since: torch.Tensor  # (B, R) tokens since the last match
    probe_sum: torch.Tensor  # (B, P) running sum of probe logits (for mean pooling)
    probe_cnt: torch.Tensor  # (B, 1) valid tokens in that sum
    exc_ctx: torch.Tensor  # (B, X) bool: exception x applies to row b's request context


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
    (all per-row mutable data lives in :class:`EvalState`)."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        self._on: dict[torch.device, PolicyTensors] = {}
        self._keys: dict[torch.device, torch.Tensor] = {}
        self._const: dict[torch.device, torch.Tensor] = {}
        self._mean_pooling = any(p.pooling == "mean" for p in compiled.probes)
        specs = [r.spec for r in compiled.rules]
        self._use = (
            any(r.for_ > 1 for r in specs),
            any(r.cooldown > 0 for r in specs),
            any(r.hold > 0 for r in specs),
        )  # temporal features in use at all

    def tensors(self, device: torch.device) -> PolicyTensors:
        if device not in self._on:
            t = self.compiled.tensors.to(device)
            R = self.compiled.R
            # Tie-break key per rule: severity first, then earlier rules win.
            self._keys[device] = t.severity * R + (R - 1 - torch.arange(R, device=device))
            self._const[device] = torch.tensor([0.0, 1.0], device=device)  # false, true nodes
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

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=dev)

        return EvalState(
            compiled=self.compiled,
            device=dev,
            pos=zeros(B),
            rpos=zeros(B, R),
            hist=zeros(B, R, t.max_window, dtype=torch.bool),
            wcount=zeros(B, R),
            run=zeros(B, R),
            active=zeros(B, R, dtype=torch.bool),
            hold_left=zeros(B, R),
            since=torch.full((B, R), _BIG, dtype=torch.long, device=dev),
            probe_sum=zeros(B, P, dtype=torch.float32),
            probe_cnt=zeros(B, 1, dtype=torch.float32),
            exc_ctx=self.context_mask(contexts, B).to(dev),
        )

    def conditions(
        self, x: torch.Tensor, valid: torch.Tensor, state: EvalState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token condition and exception values, before any temporal logic.

        x (B, T, K) float32, valid (B, T) bool → cond (B, T, R) bool, exc (B, T, R) bool,
        probe scores (B, T, P) float32. Updates the probe-mean state.
        """
        t = self.tensors(state.device)
        B, T, _ = x.shape
        scores = x @ t.probe_w + t.probe_b  # (B, T, P)
        if self._mean_pooling:
            vf = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
            csum = state.probe_sum.unsqueeze(1) + torch.cumsum(scores * vf, dim=1)
            ccnt = state.probe_cnt.unsqueeze(1) + torch.cumsum(vf, dim=1)
            scores = torch.where(t.probe_mean, csum / ccnt.clamp_min(1.0), scores)
            state.probe_sum, state.probe_cnt = csum[:, -1], ccnt[:, -1]
        vals = torch.cat([x, scores], dim=-1)  # (B, T, K + P)
        lits = vals.index_select(-1, t.lit_src) > t.lit_thr  # (B, T, L)
        const = self._const[state.device].expand(B, T, 2)  # cached: no host copy per step
        V = torch.cat([const, lits.to(x.dtype)], dim=-1)  # (B, T, 2 + L) node values
        for idx, w, theta in t.levels:
            G, C = idx.shape
            kids = V.index_select(-1, idx.reshape(-1)).view(B, T, G, C)
            V = torch.cat([V, ((kids * w).sum(-1) >= theta).to(x.dtype)], dim=-1)
        cond = V.index_select(-1, t.rule_cond) > 0.5  # (B, T, R)
        exc = torch.zeros_like(cond)
        if len(self.compiled.exceptions):
            hit = V.index_select(-1, t.exc_node) * state.exc_ctx.unsqueeze(1)  # (B, T, X)
            per_rule = torch.zeros(B, T, self.compiled.R, device=x.device, dtype=x.dtype)
            exc = per_rule.index_add_(-1, t.exc_rule, hit) > 0
        return cond, exc, scores

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
        if state.compiled is not self.compiled:
            raise ValueError(
                "this state belongs to another policy; make a new state after a reload"
            )
        if phase not in ("prompt", "completion"):
            raise ValueError(f"phase must be 'prompt' or 'completion', not {phase!r}")
        B, T, K = acts.shape
        if K != self.compiled.K or tuple(valid.shape) != (B, T) or state.pos.shape[0] != B:
            raise ValueError(
                f"expected acts (B={state.pos.shape[0]}, T, K={self.compiled.K}) "
                f"and valid (B, T); got {tuple(acts.shape)}, {tuple(valid.shape)}"
            )
        if context is not None:
            state.exc_ctx = self.context_mask(context, B).to(state.device)
        t = self.tensors(state.device)
        valid = valid.to(device=state.device, dtype=torch.bool)
        x = acts.to(torch.float32)
        cond, exc, scores = self.conditions(x, valid, state)
        scope = t.in_prompt if phase == "prompt" else t.in_completion  # (R,)
        upd = valid.unsqueeze(-1) & scope  # (B, T, R): tokens each rule looks at
        match, active = self._temporal(cond, exc, upd, state, t)
        tok = state.pos.unsqueeze(1) + torch.cumsum(valid.long(), dim=1) - 1
        state.pos = state.pos + valid.long().sum(1)
        tok = torch.where(valid, tok, -1)
        return enforcement(t, self._keys[x.device], acts, x, valid, tok, match, active, scores)

    def _temporal(
        self,
        cond: torch.Tensor,
        exc: torch.Tensor,
        upd: torch.Tensor,
        st: EvalState,
        t: PolicyTensors,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows, ``for``, exceptions, cooldown and hold, token by token over (B, R).

        Features no rule uses are skipped (decided at construction, not per step): with
        cooldown 0 the "since last match" test is always true for an inactive rule, etc.
        """
        M, T = t.max_window, cond.shape[1]
        if T == 0:
            return cond.clone(), cond.clone()
        use_for, use_cool, use_hold = self._use
        ok = ~exc if self.compiled.exceptions else None  # (B, T, R)
        matches, actives = [], []
        for i in range(T):
            u, c = upd[:, i], cond[:, i]  # (B, R)
            if M > 1:
                new_slot = (st.rpos % M).unsqueeze(-1)
                old_slot = ((st.rpos - t.of_last) % M).unsqueeze(-1)
                leaving = st.hist.gather(-1, old_slot).squeeze(-1) & (st.rpos >= t.of_last)
                count = st.wcount + c.long() - leaving.long()
                kept = st.hist.gather(-1, new_slot).squeeze(-1)
                st.hist.scatter_(-1, new_slot, torch.where(u, c, kept).unsqueeze(-1))
                st.wcount = torch.where(u, count, st.wcount)
                st.rpos = st.rpos + u.long()
                c = count >= t.at_least
            if use_for:
                st.run = torch.where(u, torch.where(c, st.run + 1, 0), st.run)
                c = st.run >= t.for_
            e = c if ok is None else c & ok[:, i]
            m = u & e & ~st.active
            if use_cool:
                since = torch.where(u, (st.since + 1).clamp_max(_BIG), st.since)
                m = m & (since > t.cooldown)
                st.since = torch.where(m, 0, since)
            if use_hold:  # an exception ends the hold too: the rule is suppressed at once
                held = st.hold_left > 0 if ok is None else (st.hold_left > 0) & ok[:, i]
                now = torch.where(u, m | (st.active & (e | held)), st.active)
                left = torch.where(e & now, t.hold, torch.where(now, st.hold_left - 1, 0))
                st.hold_left = torch.where(u, left, st.hold_left)
            else:
                now = torch.where(u, m | (st.active & e), st.active)
            st.active = now
            matches.append(m)
            actives.append(now & u)
        return torch.stack(matches, dim=1), torch.stack(actives, dim=1)
