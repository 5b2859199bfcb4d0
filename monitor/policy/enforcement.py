"""From rule matches to what the runtime does: precedence and interventions (CONTRACTS).

Only **enforce** rules act. ``stop`` > ``replace`` > ``ablate``/``clamp`` > ``alert`` > ``log``
at a token; among rules with the same action the higher severity wins, then the earlier rule.
On one feature, ablate (→ 0) beats clamp (→ ``min(f, cap)``), and two clamps take the lower cap.
A cap may be negative ("clamping negatively": the feature is set to the cap, also where it is 0);
ablate still beats it, as the contract fixes precedence by action, not by the value reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.policy.compiled import ACTIONS_ORDER, PolicyTensors

_LOG, _ALERT, _ABLATE, _CLAMP, _REPLACE, _STOP = range(len(ACTIONS_ORDER))  # has_action columns


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`Evaluator.step` found. Every tensor is on the state's device.

    ``match``/``active`` cover all rules (shadow too: audit them with their mode); every other
    field counts **enforce** rules only. Winners among rules: higher severity, then file order.
    """

    acts: torch.Tensor  # (B, T, K) the input, pre-intervention
    token_index: torch.Tensor  # (B, T) long: position in the row's unpadded sequence, -1 if invalid
    match: torch.Tensor  # (B, T, R) bool: rule matched here (one event each)
    active: torch.Tensor  # (B, T, R) bool: rule active here (from its match, plus hold)
    alert: torch.Tensor  # (B, T, R) bool: send this rule's alerts (match & enforce & alert)
    log: torch.Tensor  # (B, T, R) bool: log action (match & enforce & log)
    stop: torch.Tensor  # (B, T) bool: an active enforce rule stops the row
    stop_rule: torch.Tensor  # (B, T) long: the winning stop rule, -1 if none
    replace: torch.Tensor  # (B, T) bool: replace (and no stop) at this token
    replace_rule: torch.Tensor  # (B, T) long: whose message to substitute, -1 if none
    decision: torch.Tensor  # (B, T) long: strongest action 0 none 1 log 2 alert 3 intervene
    #                          4 replace 5 stop (compiled.LEVEL_NAMES)
    decision_rule: torch.Tensor  # (B, T) long: the rule that decided it, -1 if none
    intervene: torch.Tensor  # (B, T, K) bool: an active ablate/clamp covers this feature
    new_acts: torch.Tensor  # (B, T, K): acts with ablate (→0) beating clamp (→min(f, cap))
    probe_scores: torch.Tensor  # (B, T, P) probe logits (link logistic) or raw scores
    degraded: torch.Tensor  # (B, T) bool: a valid token with a NaN/inf feature value

    @property
    def delta(self) -> torch.Tensor:
        """(B, T, K) ``new_acts - acts``: the runtime adds ``delta[..., cols] @ W_dec[idx]``."""
        return self.new_acts - self.acts


def enforcement(
    t: PolicyTensors,
    key: torch.Tensor,
    acts: torch.Tensor,
    x: torch.Tensor,
    valid: torch.Tensor,
    tok: torch.Tensor,
    match: torch.Tensor,
    active: torch.Tensor,
    scores: torch.Tensor,
) -> StepResult:
    """The :class:`StepResult` of a step from its rule matches (CONTRACTS precedence).

    ``key`` (R,) orders rules for ties: ``severity * R + (R - 1 - index)`` (higher wins);
    acts (B, T, K) as given, x the same in float32; valid/tok (B, T); match/active (B, T, R).
    """
    B, T, K = x.shape
    R = match.shape[-1]
    ha = t.has_action
    act_e, m_e = active & t.enforce, match & t.enforce  # (B, T, R)

    def best_of(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, R) scores, -1 = not a candidate → best score and its rule (-1: none)."""
        if R == 0:
            none = torch.full((B, T), -1, dtype=torch.long, device=x.device)
            return none, none
        best = score.amax(-1)  # amax + argmax: Tensor.max(dim) is far slower on CPU
        return best, torch.where(best >= 0, score.argmax(-1), -1)

    def pick(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best, rule = best_of(torch.where(mask, key, -1))
        return best >= 0, rule

    stop, stop_rule = pick(act_e & ha[:, _STOP])
    replace, replace_rule = pick(act_e & ha[:, _REPLACE])
    lvl_active = torch.where(
        ha[:, _STOP],
        5,
        torch.where(ha[:, _REPLACE], 4, torch.where(ha[:, _ABLATE] | ha[:, _CLAMP], 3, 0)),
    )  # (R,)
    lvl_match = torch.where(ha[:, _ALERT], 2, torch.where(ha[:, _LOG], 1, 0))
    lvl = torch.maximum(torch.where(act_e, lvl_active, 0), torch.where(m_e, lvl_match, 0))
    span = 5 * max(R, 1)
    best, decision_rule = best_of(torch.where(lvl > 0, lvl * span + key, -1))
    ab = torch.zeros(B, T, K, dtype=torch.bool, device=x.device)
    if t.ablate_rule.numel():
        hits = act_e.index_select(-1, t.ablate_rule).to(x.dtype)  # (B, T, Na)
        ab = torch.zeros(B, T, K, device=x.device).index_add_(-1, t.ablate_col, hits) > 0
    new = torch.where(ab, torch.zeros_like(x), x)
    clamped = torch.zeros_like(ab)
    if t.clamp_rule.numel():
        caps = torch.where(act_e.index_select(-1, t.clamp_rule), t.clamp_val, torch.inf)
        cap = torch.full_like(x, torch.inf).scatter_reduce_(
            -1, t.clamp_col.expand(B, T, -1), caps, "amin"
        )  # (B, T, K)
        clamped = cap < torch.inf
        new = torch.where(ab, new, torch.minimum(new, cap))
    return StepResult(
        acts=acts,
        token_index=tok,
        match=match,
        active=active,
        alert=m_e & ha[:, _ALERT],
        log=m_e & ha[:, _LOG],
        stop=stop,
        stop_rule=stop_rule,
        replace=replace & ~stop,
        replace_rule=replace_rule,
        decision=torch.where(best >= 0, best // span, 0),
        decision_rule=decision_rule,
        intervene=ab | clamped,
        new_acts=new.to(acts.dtype),
        probe_scores=scores,
        degraded=valid & ~torch.isfinite(x).all(-1),
    )
