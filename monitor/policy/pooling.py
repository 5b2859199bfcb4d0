"""Probe pooling over a row's tokens: one implementation for the evaluator and for training.

A probe's per-token logit ``z_t = w · f_t + b`` is pooled per row before its threshold:

- ``token``: ``z_t`` itself;
- ``mean``: the mean of ``z`` over the row's valid tokens so far;
- ``ema``: the exponentially weighted mean over them: each earlier valid token's weight halves
  every ``half_life`` valid tokens, weights normalised to sum to 1, so the score follows the
  recent tokens whatever came before (a long system prompt or conversation does not dilute
  it, as it dilutes ``mean``). ``mean`` is the ``half_life → ∞`` limit.

Both pooled kinds are one scan with a per-probe decay ``α = 0.5 ** (1 / half_life)`` (``α = 1``
for ``mean``): over a chunk with ``c_t`` valid tokens up to ``t``,

    S_t = α^{c_t} (S_0 + Σ_{s ≤ t} v_s z_s α^{-c_s}),   N_t = α^{c_t} (N_0 + Σ_{s ≤ t} v_s α^{-c_s})

and the pooled score is ``S_t / N_t``; ``(S, N)`` at the chunk's end carry to the next chunk, so
a prompt scored at once equals the same tokens scored one by one. The scan runs in float64 and
in pieces short enough that ``α^{-c}`` stays finite.
"""

from __future__ import annotations

import math

import torch

MIN_HALF_LIFE = 0.01  # tokens; shorter decays underflow float64 within one token
# largest exponent |c · ln α| of one piece (float64 overflows past ~709)
_MAX_EXPONENT = 600.0


def log_decay(pooling: str, half_life: float | None) -> float:
    """``ln α`` per valid token: 0 for ``mean`` (and ``token``, which does not pool)."""
    if pooling == "ema":
        if half_life is None or not half_life >= MIN_HALF_LIFE:
            raise ValueError(f"ema pooling needs a half_life >= {MIN_HALF_LIFE} tokens")
        return math.log(0.5) / half_life
    return 0.0


def max_piece(log_decays: list[float]) -> int | None:
    """Longest chunk one scan step may cover so that ``α^{-c}`` stays finite (``None``: any)."""
    steepest = max((abs(v) for v in log_decays), default=0.0)
    return None if steepest == 0.0 else max(1, int(_MAX_EXPONENT / steepest))


def pool_scan(
    z: torch.Tensor,
    valid: torch.Tensor,
    log_alpha: torch.Tensor,
    total: torch.Tensor,
    weight: torch.Tensor,
    piece: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled scores over a chunk (module doc).

    z (B, T, P) per-token logits; valid (B, T) bool; log_alpha (P,) ``ln α`` per probe (0 for a
    plain mean); total, weight (B, P) the carried ``S`` and ``N`` (zeros at a row's start);
    ``piece``: :func:`max_piece` of the same decays, computed once on the host by the caller
    (reading ``log_alpha`` back from a GPU here would sync every step). Returns ``(pooled
    (B, T, P) in z's dtype, S (B, P), N (B, P))``; ``S, N`` in float64. A token before the
    row's first valid token pools to 0.
    """
    T = z.shape[1]
    la = log_alpha.to(device=z.device, dtype=torch.float64)  # (P,)
    piece = T if piece is None else piece
    s0, n0 = total.to(torch.float64), weight.to(torch.float64)  # (B, P)
    outs = []
    for lo in range(0, T, piece):
        zp = z[:, lo : lo + piece].to(torch.float64)  # (B, t, P)
        vf = valid[:, lo : lo + piece].to(torch.float64).unsqueeze(-1)  # (B, t, 1)
        c = torch.cumsum(vf, dim=1)  # (B, t, 1) valid tokens so far in this piece
        g = torch.exp(c * la)  # (B, t, P): α^c ≤ 1
        s = g * (s0.unsqueeze(1) + torch.cumsum(vf * zp / g, dim=1))  # (B, t, P)
        n = g * (n0.unsqueeze(1) + torch.cumsum(vf / g, dim=1))  # (B, t, P)
        outs.append(s / n.clamp_min(1e-300))
        s0, n0 = s[:, -1], n[:, -1]
    return torch.cat(outs, dim=1).to(z.dtype), s0, n0
