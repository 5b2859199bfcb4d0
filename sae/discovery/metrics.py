"""Detection statistics: rank AUC (vectorised, ties counted half), Wilson intervals, recall at
a fixed false-positive rate, and thresholds for a target FPR."""

from __future__ import annotations

import math

import torch


def auc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Rank AUC per column: ``P(pos > neg) + ½ P(pos = neg)`` (Mann–Whitney U / (Np·Nn)).

    pos ``(Np, F)``, neg ``(Nn, F)`` (or 1-D for one column) → ``(F,)`` (or a scalar). Computed
    by binary search of every positive among the sorted negatives: O((Np + Nn)·F·log Nn).
    """
    one = pos.dim() == 1
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    p = pos.reshape(pos.shape[0], -1).double().T.contiguous()  # (F, Np)
    n = neg.reshape(neg.shape[0], -1).double().T.contiguous()  # (F, Nn)
    n_sorted = n.sort(dim=1).values
    below = torch.searchsorted(n_sorted, p, right=False)  # (F, Np) negatives < p
    at_most = torch.searchsorted(n_sorted, p, right=True)  # (F, Np) negatives <= p
    u = (below + at_most).double().sum(1) / 2.0  # (F,) ties count half
    out = u / (p.shape[1] * n.shape[1])
    return out[0] if one else out


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) for ``successes / n``; ``(0, 1)`` when n = 0."""
    if n == 0:
        return 0.0, 1.0
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def threshold_at_fpr(neg_scores: torch.Tensor, target: float) -> float:
    """A threshold ``t`` such that at most ``floor(target · Nn)`` negatives score ``> t``.

    Placed midway between neighbouring negative scores, so that ``score > t`` is not decided by
    rounding; above the highest negative (by a small margin) when the target allows none.
    """
    s = neg_scores.double().flatten().sort(descending=True).values
    if s.numel() == 0:
        raise ValueError("threshold_at_fpr needs negative scores")
    m = math.floor(target * s.numel() + 1e-9)  # negatives allowed above t
    if m == 0:
        top = float(s[0])
        return top + max(1e-4, 1e-3 * abs(top))
    if m >= s.numel():
        return float(s[-1]) - max(1e-4, 1e-3 * abs(float(s[-1])))
    hi, lo = float(s[m - 1]), float(s[m])
    return (hi + lo) / 2 if hi > lo else lo


def recall_at_fpr(pos_scores: torch.Tensor, neg_scores: torch.Tensor, target: float) -> float:
    """Recall of ``score > threshold_at_fpr(neg, target)`` on the positives."""
    t = threshold_at_fpr(neg_scores, target)
    return float((pos_scores.double() > t).double().mean())
