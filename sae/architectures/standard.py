"""``standard``: the ReLU SAE. ``f = relu((x - b_dec) @ W_enc + b_enc)``."""

from __future__ import annotations

import torch

from sae.base import SAE


class StandardSAE(SAE):
    """ReLU SAE with parameters ``W_enc, b_enc, W_dec, b_dec`` (SAELens ``standard``)."""

    architecture = "standard"

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.hidden_pre(x_n))  # (..., d_sae)
