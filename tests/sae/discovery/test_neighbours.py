"""Decoder-cosine neighbours: planted near-duplicates are nearest, labels come through."""

from __future__ import annotations

import pytest
import torch

from sae.discovery.neighbours import decoder_cosine, nearest
from sae.registry import create_sae


def test_planted_near_duplicates_are_nearest() -> None:
    g = torch.Generator().manual_seed(0)
    sae = create_sae(d_in=64, d_sae=200, architecture="jumprelu")
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(200, 64, generator=g))
        base = sae.W_dec[10].clone()
        sae.W_dec[150] = 3.0 * base + 0.05 * torch.randn(64, generator=g)  # scale-invariant
        sae.W_dec[42] = base + 0.5 * torch.randn(64, generator=g)
        sae.W_dec[7] = 0.0  # a dead row never shows up as a neighbour
    near = nearest(sae, 10, k=3, labels={150: "dup"})
    assert [n.index for n in near[:2]] == [150, 42]
    assert near[0].label == "dup" and near[0].cosine > 0.99 > near[1].cosine
    assert 10 not in [n.index for n in nearest(sae, 10, k=199)]
    assert decoder_cosine(sae.W_dec, 10)[7] == 0.0
    with pytest.raises(IndexError):
        nearest(sae, 200)
