"""Probe pooling: the scan equals the weighted mean it defines, in one chunk or token by token,
with holes (pads, finished rows) and in pieces for steep decays."""

from __future__ import annotations

import math

import pytest
import torch

from monitor.policy.pooling import log_decay, max_piece, pool_scan


def brute(z: torch.Tensor, valid: torch.Tensor, half_life: float | None) -> torch.Tensor:
    """(B, T) pooled scores from the definition: weights α^(valid tokens since), normalised."""
    a = 1.0 if half_life is None else 0.5 ** (1 / half_life)
    B, T = z.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            ws = []
            for s in range(t + 1):
                if valid[b, s]:
                    since = int(valid[b, s + 1 : t + 1].sum())
                    ws.append((a**since, float(z[b, s])))
            if ws:
                out[b, t] = sum(w * v for w, v in ws) / sum(w for w, _ in ws)
    return out


@pytest.mark.parametrize("half_life", [None, 1.0, 4.0, 50.0])
def test_scan_equals_the_weighted_mean_with_holes(half_life: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 12, generator=g, dtype=torch.float64)
    valid = torch.rand(3, 12, generator=g) > 0.3
    valid[2, :4] = False  # left padding
    la = torch.tensor([log_decay("ema" if half_life else "mean", half_life)], dtype=torch.float64)
    zero = torch.zeros(3, 1, dtype=torch.float64)
    pooled, _, _ = pool_scan(z.unsqueeze(-1), valid, la, zero, zero)
    expect = brute(z, valid, half_life)
    assert torch.allclose(pooled[..., 0], expect, atol=1e-10)


def test_token_by_token_equals_one_chunk_for_several_probes() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)  # (B, T, P)
    valid = torch.rand(2, 30, generator=g) > 0.2
    la = torch.tensor([0.0, log_decay("ema", 3.0), log_decay("ema", 16.0)], dtype=torch.float64)
    zero = torch.zeros(2, 3, dtype=torch.float64)
    whole, s_end, n_end = pool_scan(z, valid, la, zero, zero)
    s, n, steps = zero, zero, []
    for t in range(30):
        out, s, n = pool_scan(z[:, t : t + 1], valid[:, t : t + 1], la, s, n)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-10)
    assert torch.allclose(s, s_end) and torch.allclose(n, n_end)


def test_a_steep_decay_over_a_long_chunk_stays_finite_and_exact() -> None:
    # half-life 0.5 tokens over 3000 tokens: α^-c would overflow float64 without the pieces
    T = 3000
    z = torch.linspace(-1, 1, T, dtype=torch.float64).reshape(1, T, 1)
    valid = torch.ones(1, T, dtype=torch.bool)
    la = torch.tensor([log_decay("ema", 0.5)], dtype=torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    pooled, s, _ = pool_scan(z, valid, la, zero, zero, max_piece([log_decay("ema", 0.5)]))
    assert torch.isfinite(pooled).all() and torch.isfinite(s).all()
    a = 0.25  # α = 0.5 ** 2: the mean of the last few tokens, the newest weighing 3/4
    t = T - 1
    expect = sum(a**k * float(z[0, t - k, 0]) for k in range(40)) / sum(a**k for k in range(40))
    assert math.isclose(float(pooled[0, -1, 0]), expect, rel_tol=1e-9)


def test_ema_needs_a_half_life_that_cannot_underflow() -> None:
    with pytest.raises(ValueError, match="half_life"):
        log_decay("ema", None)
    with pytest.raises(ValueError, match="half_life"):
        log_decay("ema", 1e-4)  # α^-1 alone would overflow float64: every score NaN
    assert max_piece([0.0]) is None and max_piece([log_decay("ema", 0.01)]) == 8
    assert log_decay("mean", None) == 0.0 == log_decay("token", None)
