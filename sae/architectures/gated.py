"""``gated``: a gate decides which features fire, a rescaled magnitude path decides how much.

``gate = (x' @ W_enc + b_gate) > 0``; ``mag = relu(x' @ (W_enc * exp(r_mag)) + b_mag)``;
``f = gate * mag`` with ``x' = x - b_dec`` (SAELens ``gated``; no ``b_enc``).
"""

from __future__ import annotations

import torch

from sae.base import SAE, SAEConfig


class GatedSAE(SAE):
    """Gated SAE with ``W_enc, b_gate, b_mag, r_mag, W_dec, b_dec``."""

    architecture = "gated"
    b_gate: torch.nn.Parameter
    b_mag: torch.nn.Parameter
    r_mag: torch.nn.Parameter

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        shapes = super().param_shapes(cfg)
        del shapes["b_enc"]
        return {**shapes, "b_gate": (cfg.d_sae,), "b_mag": (cfg.d_sae,), "r_mag": (cfg.d_sae,)}

    def hidden_pre(self, x_n: torch.Tensor) -> torch.Tensor:
        """The gate pre-activation ``(..., d_sae)`` (what decides whether a feature fires)."""
        return self.sae_input(x_n) @ self.W_enc + self.b_gate

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        sae_in = self.sae_input(x_n)  # (..., d_in)
        w_mag = self.W_enc * self.r_mag.exp()  # (d_in, d_sae)
        return gated(sae_in @ self.W_enc + self.b_gate, sae_in @ w_mag + self.b_mag)


def gated(gate_pre: torch.Tensor, mag_pre: torch.Tensor) -> torch.Tensor:
    """Gate and magnitude pre-activations ``(..., n)`` → ``(gate_pre > 0) * relu(mag_pre)``."""
    return (gate_pre > 0).to(mag_pre.dtype) * torch.relu(mag_pre)
