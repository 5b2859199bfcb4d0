"""``topk``: keep the k largest pre-activations per token (ReLU'd), zero the rest.

With ``rescale_acts_by_decoder_norm`` (SAELens semantics) the pre-activations are multiplied by
the decoder row norms before ranking, and divided by them again before decoding, so a feature's
value is measured as if its decoder row had unit norm.

A feature's value depends on every other feature's pre-activation (its rank), so a subset of
features cannot be encoded on its own: :class:`sae.encode.SubsetEncoder` computes the full
top-k and gathers.
"""

from __future__ import annotations

import torch

from sae.base import SAE


class TopKSAE(SAE):
    """TopK SAE with ``W_enc, b_enc, W_dec, b_dec`` and ``cfg.k``."""

    architecture = "topk"

    def rank_pre(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., d_in)`` → the ``(..., d_sae)`` scores top-k ranks."""
        pre = self.hidden_pre(x_n)  # (..., d_sae)
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)  # (d_sae,) broadcast
        return pre

    def topk_normalized(self, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input → ``(values, indices)``, each ``(..., k)``; values are ReLU'd."""
        assert self.cfg.k is not None
        top = self.rank_pre(x_n).topk(self.cfg.k, dim=-1)
        return torch.relu(top.values), top.indices

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        values, indices = self.topk_normalized(x_n)  # (..., k) each
        shape = (*x_n.shape[:-1], self.cfg.d_sae)
        f = torch.zeros(shape, dtype=values.dtype, device=values.device)
        return f.scatter_(-1, indices, values)  # (..., d_sae)

    def decoder_directions(self) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)  # (d_sae, d_in)
        return self.W_dec

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)  # (..., d_sae)
        return f @ self.W_dec + self.b_dec
