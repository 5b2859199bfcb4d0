"""Random SAEs of every registered architecture, for the sae tests."""

from __future__ import annotations

from typing import Any

import torch

from sae.base import SAE
from sae.registry import create_sae


def random_sae(
    architecture: str, d_in: int = 16, d_sae: int = 64, seed: int = 0, **cfg: Any
) -> SAE:
    """An SAE with random non-trivial parameters (biases, thresholds, gates all non-zero)."""
    if architecture == "topk":
        cfg.setdefault("k", 5)
    sae = create_sae(
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        hook_name=cfg.pop("hook_name", "blocks.1.hook_resid_post"),
        **cfg,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.startswith("W") else 0.1))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.3)
    return sae.eval()


def acts(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
