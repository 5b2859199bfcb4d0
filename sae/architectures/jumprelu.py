"""``jumprelu``: ``f = relu(pre) * (pre > threshold)`` with a learned per-feature threshold.

BatchTopK SAEs are exported as jumprelu (a scalar threshold broadcast to every feature), as
SAELens does, so they load here and subset-encode exactly.
"""

from __future__ import annotations

import torch

from sae.base import SAE, SAEConfig


class JumpReLUSAE(SAE):
    """JumpReLU SAE: the standard parameters plus ``threshold (d_sae)``."""

    architecture = "jumprelu"
    threshold: torch.nn.Parameter

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "threshold": (cfg.d_sae,)}

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        pre = self.hidden_pre(x_n)  # (..., d_sae)
        return jumprelu(pre, self.threshold)


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``(..., n)`` pre-activations, ``(n,)`` thresholds → ``relu(pre) * (pre > threshold)``."""
    return torch.relu(pre) * (pre > threshold).to(pre.dtype)
