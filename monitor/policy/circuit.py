"""The condition circuit of a compiled policy, ready on one device (see :class:`PolicyTensors`).

:class:`Circuit` turns per-token values ``vals (B, T, K + P)`` (features, then probe scores)
into each rule's condition and whether an exception spares it. It runs once per generated
token, where each tensor op costs an eager dispatch of several microseconds, so its shape is
chosen once, here:

- a policy whose conditions are all single literals (no any/all/not/count, no exceptions) is
  one gather and one comparison;
- a gate level is one matrix product of the node values with a ``(nodes, gates)`` weight
  matrix when that matrix is small, else a gather of each gate's children. Node values are 0/1
  and weights ±1, so both sums are exact and give the same gates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.policy.compiled import PolicyTensors

DENSE_MAX = 1 << 16
"""Largest ``nodes × gates`` weight matrix a level uses instead of a gather."""


@dataclass(frozen=True)
class _Level:
    theta: torch.Tensor  # (G,) gate thresholds
    dense: torch.Tensor | None  # (N, G) weights over the N nodes before this level
    idx: torch.Tensor  # (G * C,) children, flattened (gather form)
    w: torch.Tensor  # (G, C) weights (gather form)
    width: int  # C


class Circuit:
    """Rule conditions and exceptions of ``t`` (already on its device; ``cpu`` is the same
    tensors on the CPU, read to decide the shape without a device sync)."""

    def __init__(self, cpu: PolicyTensors, t: PolicyTensors, n_exceptions: int) -> None:
        self.t = t
        self.has_exceptions = n_exceptions > 0
        dev = t.rule_cond.device
        literal = bool((cpu.rule_cond >= 2).all())  # every condition is a single literal
        self.direct = not t.levels and not self.has_exceptions and literal
        if self.direct:
            lit = t.rule_cond - 2  # (R,) literal of each rule's condition
            self.src, self.thr = t.lit_src[lit], t.lit_thr[lit]
        self.const = torch.tensor([0.0, 1.0], device=dev)  # nodes 0 (false), 1 (true)
        self.levels = []
        nodes = 2 + t.lit_src.numel()
        for idx, w, theta in t.levels:
            G, C = idx.shape
            dense = None
            if nodes * G <= DENSE_MAX:
                dense = torch.zeros(nodes, G, device=dev)
                gate = torch.arange(G, device=dev).unsqueeze(1).expand(G, C)
                dense.index_put_((idx.reshape(-1), gate.reshape(-1)), w.reshape(-1), True)
            self.levels.append(_Level(theta, dense, idx.reshape(-1), w, C))
            nodes += G

    def __call__(
        self, vals: torch.Tensor, exc_ctx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``vals (B, T, K + P)`` float32, ``exc_ctx (B, X)`` bool → ``cond (B, T, R)`` bool and
        ``ok (B, T, R)`` bool (no exception applies; ``None`` when the policy has none)."""
        t = self.t
        if self.direct:
            return vals.index_select(-1, self.src) > self.thr, None  # (B, T, R)
        B, T, _ = vals.shape
        lits = vals.index_select(-1, t.lit_src) > t.lit_thr  # (B, T, L)
        V = torch.cat([self.const.expand(B, T, 2), lits.to(vals.dtype)], dim=-1)  # (B, T, N)
        for lvl in self.levels:
            if lvl.dense is not None:
                sums = V @ lvl.dense  # (B, T, G)
            else:
                kids = V.index_select(-1, lvl.idx).view(B, T, -1, lvl.width)  # (B, T, G, C)
                sums = (kids * lvl.w).sum(-1)
            V = torch.cat([V, (sums >= lvl.theta).to(vals.dtype)], dim=-1)
        cond = V.index_select(-1, t.rule_cond) > 0.5  # (B, T, R)
        if not self.has_exceptions:
            return cond, None
        hit = V.index_select(-1, t.exc_node) * exc_ctx.unsqueeze(1)  # (B, T, X)
        per_rule = torch.zeros(B, T, t.rule_cond.numel(), device=vals.device, dtype=vals.dtype)
        return cond, per_rule.index_add_(-1, t.exc_rule, hit) == 0
