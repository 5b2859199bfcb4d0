"""AUC, Wilson intervals and FPR thresholds against brute force and known numbers."""

from __future__ import annotations

import pytest
import torch

from sae.discovery.metrics import auc, recall_at_fpr, threshold_at_fpr, wilson


def brute_auc(p: list[float], n: list[float]) -> float:
    wins = sum((a > b) + 0.5 * (a == b) for a in p for b in n)
    return wins / (len(p) * len(n))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 4, (13, 7), generator=g).float()  # few values: many ties
    neg = torch.randint(0, 3, (9, 7), generator=g).float()
    got = auc(pos, neg)
    for f in range(7):
        assert got[f].item() == pytest.approx(brute_auc(pos[:, f].tolist(), neg[:, f].tolist()))


def test_auc_edge_cases() -> None:
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([0.0])).item() == 1.0
    assert auc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])).item() == 0.0
    assert auc(torch.zeros(5), torch.zeros(3)).item() == 0.5  # all tied
    with pytest.raises(ValueError):
        auc(torch.zeros(0), torch.zeros(3))


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [  # reference values (statsmodels proportion_confint(method="wilson"))
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 100, 0.0018, 0.0545),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_empty_is_uninformative() -> None:
    assert wilson(0, 0) == (0.0, 1.0)


def test_threshold_at_fpr_allows_at_most_the_target() -> None:
    neg = torch.arange(100).float()  # 0..99
    t = threshold_at_fpr(neg, 0.05)
    assert int((neg > t).sum()) == 5 and 94 < t < 95
    t0 = threshold_at_fpr(neg, 0.0)
    assert int((neg > t0).sum()) == 0
    tied = torch.tensor([1.0] * 10 + [0.0] * 90)
    assert int((tied > threshold_at_fpr(tied, 0.05)).sum()) <= 5
    pos = torch.tensor([96.0, 97.0, 10.0, 200.0])
    assert recall_at_fpr(pos, neg, 0.05) == 0.75
