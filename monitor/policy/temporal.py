"""Rule state over tokens: windows, ``for``, exceptions, cooldown and hold.

:class:`Temporal` advances an :class:`EvalState` one token at a time over every row and rule at
once (the semantics are listed in :mod:`monitor.policy.evaluator`). It runs once per generated
token, where each tensor op is an eager dispatch of several microseconds, so what no rule uses
is skipped (decided once, not per step) and the state is laid out ``(B, 1, R)``: a one-token
step's ``(B, 1, R)`` conditions update it and become its results without a reshape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.policy.compiled import CompiledPolicy, PolicyTensors

BIG = 1 << 30
"""Tokens since the last match of a rule that never matched (more than any cooldown)."""
WINDOW_BITS = 62
"""Longest window kept as the bits of an int64 (longer ones use a ring buffer)."""


@dataclass
class EvalState:
    """Per-row evaluation state of one policy; made by :meth:`Evaluator.new_state`."""

    compiled: CompiledPolicy
    device: torch.device
    count: torch.Tensor  # (B, 1) valid tokens seen per row
    rpos: torch.Tensor  # (B, 1, R) tokens each rule has seen (valid, in scope; ring only)
    hist: torch.Tensor  # (B, 1, R, M) ring buffer of the condition, M = longest window > 62
    bits: torch.Tensor  # (B, 1, R) long: the condition as bits (bit k: k + 1 tokens ago)
    wcount: torch.Tensor  # (B, 1, R) condition count inside each rule's window
    run: torch.Tensor  # (B, 1, R) consecutive tokens the windowed condition has held
    active: torch.Tensor  # (B, 1, R) bool
    hold_left: torch.Tensor  # (B, 1, R) hold tokens left
    since: torch.Tensor  # (B, 1, R) tokens since the last match
    probe_sum: torch.Tensor  # (B, P) (decayed) sum of probe logits, mean/ema pooling
    probe_cnt: torch.Tensor  # (B, P) (decayed) count of valid tokens in that sum
    exc_ctx: torch.Tensor  # (B, X) bool: exception x applies to row b's request context

    @property
    def pos(self) -> torch.Tensor:
        """(B,) valid tokens seen per row."""
        return self.count[:, 0]


class Temporal:
    """The temporal logic of one policy, with its tensors ``t`` on one device."""

    def __init__(self, compiled: CompiledPolicy, t: PolicyTensors) -> None:
        specs = [r.spec for r in compiled.rules]
        self.t = t
        self.use_for = any(r.for_ > 1 for r in specs)
        self.use_cool = any(r.cooldown > 0 for r in specs)
        self.use_hold = any(r.hold > 0 for r in specs)
        self.window_bits: tuple[torch.Tensor, torch.Tensor] | None = None
        if t.max_window <= WINDOW_BITS:  # (R,) each: the bit leaving a window, its mask
            self.window_bits = (t.of_last - 1, (1 << t.of_last) - 1)

    def __call__(
        self, cond: torch.Tensor, ok: torch.Tensor | None, upd: torch.Tensor, st: EvalState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows, ``for``, exceptions, cooldown and hold, token by token over (B, 1, R).

        ``upd`` is (B, T, R), or (B, T, 1) when every rule looks at every valid token. Features
        no rule uses are skipped (decided at construction, not per step): with cooldown 0 the
        "since last match" test is always true for an inactive rule, etc.
        """
        T = cond.shape[1]
        if T == 0:
            return cond.clone(), cond.clone()
        t, use_for, use_cool, use_hold = self.t, self.use_for, self.use_cool, self.use_hold
        matches, actives = [], []
        for i in range(T):
            # (B, 1, R) condition, (B, 1, R) or (B, 1, 1) looked at, (B, 1, R) not excepted
            c, u, ok_i = cond, upd, ok
            if T > 1:
                c, u = cond[:, i : i + 1], upd[:, i : i + 1]
                ok_i = None if ok is None else ok[:, i : i + 1]
            if t.max_window > 1:
                c = self._window(c, u, st)
            if use_for:
                st.run = torch.where(u, torch.where(c, st.run + 1, 0), st.run)
                c = st.run >= t.for_
            e = c if ok_i is None else c & ok_i
            m = u & (e > st.active)  # u & e & ~active, in one op (bools: e > active)
            if use_cool:
                # tokens since the last match; starts at 2**30 (> any cooldown, <= 1e6) and
                # int64 cannot overflow by counting tokens, so it needs no clamp
                since = st.since + u
                m = m & (since > t.cooldown)
                st.since = torch.where(m, 0, since)
            if use_hold:  # an exception ends the hold too: the rule is suppressed at once
                held = st.hold_left > 0 if ok_i is None else (st.hold_left > 0) & ok_i
                now = torch.where(u, m | (st.active & (e | held)), st.active)
                left = torch.where(now, torch.where(e, t.hold, st.hold_left - 1), 0)
                st.hold_left = torch.where(u, left, st.hold_left)
            else:
                now = torch.where(u, m | (st.active & e), st.active)
            st.active = now
            matches.append(m)
            actives.append(now & u)
        if T == 1:
            return matches[0], actives[0]  # (B, 1, R)
        return torch.cat(matches, dim=1), torch.cat(actives, dim=1)  # (B, T, R)

    def _window(self, c: torch.Tensor, u: torch.Tensor, st: EvalState) -> torch.Tensor:
        """One token of the windows: c (B, 1, R) condition, u (B, 1, R) or (B, 1, 1) looked
        at → (B, 1, R) "at least N of the last M"."""
        t, M = self.t, self.t.max_window
        if self.window_bits is not None:  # the last M conditions as bits: shifts, no gathers
            shift, mask = self.window_bits
            c_l = c.long()
            leaving = (st.bits >> shift) & 1  # the token leaving the rule's window
            count = st.wcount + c_l - leaving
            st.bits = torch.where(u, ((st.bits << 1) | c_l) & mask, st.bits)
        else:
            new_slot = (st.rpos % M).unsqueeze(-1)  # (B, 1, R, 1)
            old_slot = ((st.rpos - t.of_last) % M).unsqueeze(-1)
            out = st.hist.gather(-1, old_slot).squeeze(-1) & (st.rpos >= t.of_last)
            count = st.wcount + c.long() - out.long()
            kept = st.hist.gather(-1, new_slot).squeeze(-1)
            st.hist.scatter_(-1, new_slot, torch.where(u, c, kept).unsqueeze(-1))
            st.rpos = st.rpos + u
        st.wcount = torch.where(u, count, st.wcount)
        return count >= t.at_least
