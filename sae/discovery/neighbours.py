"""Nearest features by decoder cosine similarity (Neuronpedia-style neighbours)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from sae.base import SAE


@dataclass(frozen=True)
class Neighbour:
    index: int
    cosine: float
    label: str | None = None  # catalog name, when a catalog names this index
    promoted: tuple[str, ...] = ()  # top logit-lens tokens, when a model is given


def decoder_cosine(W_dec: torch.Tensor, index: int) -> torch.Tensor:
    """Cosine of row ``index`` of ``W_dec (d_sae, d_in)`` with every row → ``(d_sae,)``.

    Zero rows (dead, pruned features) get cosine 0.
    """
    W = W_dec.detach().float()  # (d_sae, d_in)
    norms = W.norm(dim=1)  # (d_sae,)
    cos = (W @ W[index]) / (norms * norms[index]).clamp_min(1e-12)  # (d_sae,)
    return torch.where(norms > 0, cos, torch.zeros_like(cos))


def nearest(
    sae: SAE,
    index: int,
    k: int = 10,
    *,
    labels: Mapping[int, str] | None = None,
) -> list[Neighbour]:
    """The ``k`` features whose decoder directions are closest to ``index``'s (itself
    excluded), cosine descending; ``labels`` maps index → catalog name."""
    if not 0 <= index < sae.cfg.d_sae:
        raise IndexError(f"feature {index} is outside 0..{sae.cfg.d_sae - 1}")
    cos = decoder_cosine(sae.decoder_directions(), index)
    cos[index] = -float("inf")
    top = cos.topk(min(k, cos.numel() - 1))
    return [
        Neighbour(int(i), float(c), (labels or {}).get(int(i)))
        for i, c in zip(top.indices, top.values, strict=True)
    ]
