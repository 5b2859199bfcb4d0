"""Contrastive feature search: which SAE features separate a positive text set from a negative.

Each text is pooled over its scored tokens (``max`` or ``mean``, see
:mod:`sae.discovery.activations`); every feature is then scored at once over the whole
dictionary: rank AUC (ties count half), mean difference of the pooled values, and the firing
rate (pooled max > 0) in each set. Features are ranked by AUC, then by mean difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from sae.discovery.activations import Stack, encode_chunks, pool
from sae.discovery.data import Item
from sae.discovery.metrics import auc


@dataclass(frozen=True)
class FeatureScore:
    """One feature's separation of the two sets."""

    index: int
    auc: float
    mean_diff: float  # mean pooled value on positives minus negatives
    mean_pos: float
    mean_neg: float
    fire_pos: float  # fraction of positive texts where the feature fires (max > 0)
    fire_neg: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Pooled:
    """Pooled feature values of a text set: ``values (N, F)`` and ``fired (N, F)`` bool."""

    values: torch.Tensor
    fired: torch.Tensor


def pooled_features(
    stack: Stack,
    items: Sequence[Item],
    *,
    how: str = "max",
    span: str = "user",
    chunk: int = 64,
) -> Pooled:
    """Pool every feature of every item, ``chunk`` items at a time (memory stays bounded)."""
    values, fired = [], []
    for scored in encode_chunks(stack, items, chunk=chunk, span=span):
        mx = pool(scored, "max")  # (n, d_sae)
        values.append(mx if how == "max" else pool(scored, "mean"))
        fired.append(mx > 0)
    return Pooled(torch.cat(values), torch.cat(fired))


def rank_features(
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    pos_fired: torch.Tensor | None = None,
    neg_fired: torch.Tensor | None = None,
    top: int | None = 20,
) -> list[FeatureScore]:
    """Rank all features by how well their pooled values separate ``pos`` from ``neg``.

    pos ``(Np, F)``, neg ``(Nn, F)`` pooled values; ``*_fired`` ``(N, F)`` bool default to
    ``values > 0``. Returns the ``top`` best (all when None), AUC descending, ties broken by
    mean difference then by index.
    """
    if pos.shape[1] != neg.shape[1]:
        raise ValueError(f"feature counts differ: {pos.shape[1]} vs {neg.shape[1]}")
    pos, neg = pos.detach(), neg.detach()
    a = auc(pos, neg)  # (F,)
    mp, mn = pos.double().mean(0), neg.double().mean(0)  # (F,)
    fp = (pos > 0 if pos_fired is None else pos_fired).double().mean(0)
    fn = (neg > 0 if neg_fired is None else neg_fired).double().mean(0)
    diff = mp - mn
    # lexicographic: AUC desc, mean diff desc, index asc (stable sorts, last key first)
    order = torch.arange(a.numel())
    order = order[torch.sort(-diff[order], stable=True).indices]
    order = order[torch.sort(-a[order], stable=True).indices]
    if top is not None:
        order = order[:top]
    return [
        FeatureScore(
            int(i),
            float(a[i]),
            float(diff[i]),
            float(mp[i]),
            float(mn[i]),
            float(fp[i]),
            float(fn[i]),
        )
        for i in order.tolist()
    ]


def find_features(
    stack: Stack,
    positive: Sequence[Item],
    negative: Sequence[Item],
    *,
    how: str = "max",
    span: str = "user",
    top: int | None = 20,
) -> list[FeatureScore]:
    """Encode both sets through the shared path and :func:`rank_features` them."""
    p = pooled_features(stack, positive, how=how, span=span)
    n = pooled_features(stack, negative, how=how, span=span)
    return rank_features(p.values, n.values, pos_fired=p.fired, neg_fired=n.fired, top=top)
