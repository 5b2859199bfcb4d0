"""Ablate/clamp targets of a step, computed on their own (without the rest of precedence).

:func:`edit_targets` gives the same ``new_acts`` and ``intervene`` as
:func:`monitor.policy.enforcement.enforcement` (tests/monitor/runtime/test_edits.py compares
them), from tables built once per binding and device that leave shadow rules out, so a token
where an intervention is active costs a handful of tensor ops instead of the whole precedence
computation (winners, decisions, alerts) that the runtime does not need to edit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.policy.compiled import CompiledPolicy

DENSE_MAX = 1 << 16
"""Largest ``rules × features`` ablation matrix used instead of a scatter."""


@dataclass(frozen=True)
class EditTables:
    """The enforce rules' ablate and clamp entries of a policy, on one device."""

    ablate_rule: torch.Tensor  # (Na,) long: rule of each ablation
    ablate_col: torch.Tensor  # (Na,) long: its column of acts
    clamp_rule: torch.Tensor  # (Nc,) long
    clamp_col: torch.Tensor  # (Nc,) long
    clamp_val: torch.Tensor  # (Nc,) float32: cap in absolute units
    ablate_dense: torch.Tensor | None  # (R, K) float32: 1 where rule r ablates column k

    @classmethod
    def of(cls, policy: CompiledPolicy, device: torch.device) -> EditTables:
        t = policy.tensors
        ab = t.enforce[t.ablate_rule]  # (Na,) shadow rules never act
        cl = t.enforce[t.clamp_rule]  # (Nc,)
        dense = None
        if ab.any() and policy.R * policy.K <= DENSE_MAX:
            dense = torch.zeros(policy.R, policy.K)
            dense[t.ablate_rule[ab], t.ablate_col[ab]] = 1.0
        return cls(
            t.ablate_rule[ab].to(device),
            t.ablate_col[ab].to(device),
            t.clamp_rule[cl].to(device),
            t.clamp_col[cl].to(device),
            t.clamp_val[cl].to(device),
            None if dense is None else dense.to(device),
        )


def edit_targets(
    t: EditTables,
    active: torch.Tensor,
    x: torch.Tensor,
    dtype: torch.dtype,
    active_f: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``active (B, T, R)`` bool rules, ``x (B, T, K)`` float32 pre-intervention values →
    ``(new (B, T, K) in dtype, intervene (B, T, K) bool)``: ablate (→ 0) beats clamp
    (→ ``min(f, cap)``), two clamps take the lower cap (CONTRACTS). A negative cap gives the
    cap itself (activations are ≥ 0), also where ``f`` is 0: ``intervene`` marks every feature
    an active rule covers, whether or not its value changes. ``active_f`` is ``active`` as
    float32 when the caller has it already."""
    B, T, K = x.shape
    ab = None
    if t.ablate_dense is not None:  # counts of 0/1 are exact: the same columns as below
        act = active.to(torch.float32) if active_f is None else active_f
        ab = (act @ t.ablate_dense) > 0  # (B, T, K)
    elif t.ablate_rule.numel():
        hits = active.index_select(-1, t.ablate_rule).to(x.dtype)  # (B, T, Na)
        zeros = torch.zeros(B, T, K, device=x.device, dtype=x.dtype)
        ab = zeros.index_add_(-1, t.ablate_col, hits) > 0  # (B, T, K)
    new = x if ab is None else x.masked_fill(ab, 0)
    intervene = ab
    if t.clamp_rule.numel():
        caps = torch.where(active.index_select(-1, t.clamp_rule), t.clamp_val, torch.inf)
        cap = torch.full_like(x, torch.inf).scatter_reduce_(
            -1, t.clamp_col.expand(B, T, -1), caps, "amin"
        )  # (B, T, K)
        clamped = cap < torch.inf
        low = torch.minimum(new, cap)
        new = low if ab is None else torch.where(ab, new, low)
        intervene = clamped if ab is None else ab | clamped
    if intervene is None:
        intervene = torch.zeros(B, T, K, dtype=torch.bool, device=x.device)
    return (new if new.dtype == dtype else new.to(dtype)), intervene
