"""Contrastive ranking finds planted features first, on synthetic activations and through an
SAE encode."""

from __future__ import annotations

import torch

from sae.discovery.contrast import rank_features
from sae.registry import create_sae


def test_planted_features_rank_first_on_synthetic_pooled_values() -> None:
    g = torch.Generator().manual_seed(0)
    F, planted = 500, [17, 333, 404]
    pos = torch.relu(torch.randn(40, F, generator=g))  # (Np, F) pooled values, noise
    neg = torch.relu(torch.randn(60, F, generator=g))
    pos[:, planted] += torch.tensor([3.0, 2.0, 1.0])  # clearly separated, strength decreasing
    ranked = rank_features(pos, neg, top=5)
    assert [r.index for r in ranked[:3]] == planted  # AUC 1.0 ties broken by mean difference
    assert ranked[0].auc == 1.0 and ranked[0].mean_diff > ranked[1].mean_diff
    assert ranked[0].fire_pos == 1.0


def test_ranking_reports_firing_rates_and_orders_by_auc() -> None:
    pos = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
    neg = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ranked = rank_features(pos, neg, top=None)
    assert [r.index for r in ranked] == [0, 2, 1]
    assert ranked[1].auc == 0.75 and ranked[1].fire_pos == 0.5 and ranked[1].fire_neg == 0.0
    assert ranked[2].auc == 0.25


def test_planted_direction_in_a_synthetic_sae_is_found_first() -> None:
    """Hidden states carry direction u only in positive texts; feature 9's encoder reads u."""
    g = torch.Generator().manual_seed(1)
    d_in, d_sae = 32, 128
    sae = create_sae(d_in=d_in, d_sae=d_sae, architecture="standard")
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 0.05)
        sae.b_enc.fill_(-0.05)
        u = torch.randn(d_in, generator=g)
        u /= u.norm()
        sae.W_enc[:, 9] = u
    x_pos = torch.randn(30, 12, d_in, generator=g) * 0.3  # (N, T, d_in) texts × tokens
    x_pos[:, 5] += 4 * u  # one token per positive text carries the concept
    x_neg = torch.randn(30, 12, d_in, generator=g) * 0.3
    p, n = sae.encode(x_pos).amax(1), sae.encode(x_neg).amax(1)  # max-pooled (N, d_sae)
    assert rank_features(p, n, top=1)[0].index == 9
