"""Subset encode equals the dense encode's columns (bit-exact in fp32 on CPU); top-k encode."""

from __future__ import annotations

import pytest
import torch

from sae.encode import SubsetEncoder, TopKFeatures, dense_encode, topk_encode
from tests.sae.helpers import acts, random_sae

FEATURES = {
    1: [7],
    10: [3, 60, 0, 17, 17, 42, 9, 63, 31, 5],  # unsorted, with a repeat
    48: list(range(0, 96, 2)),
}


@pytest.mark.parametrize("k", sorted(FEATURES))
def test_subset_equals_dense_columns_exactly(arch: str, k: int) -> None:
    sae = random_sae(arch, d_in=32, d_sae=96)
    x = acts(3, 11, 32) * 2  # (B, T, d_in)
    idx = FEATURES[k]
    sub = SubsetEncoder(sae, idx)(x)  # (B, T, K)
    assert sub.shape == (3, 11, len(idx))
    dense = dense_encode(sae, x)[..., idx]
    assert (dense != 0).any()
    assert torch.equal(sub, dense), (sub - dense).abs().max()


@pytest.mark.parametrize(
    "mode", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"]
)
def test_subset_handles_input_normalisation(arch: str, mode: str) -> None:
    extra = {"norm_scaling_factor": 0.5} if mode == "expected_average_only_in" else {}
    sae = random_sae(arch, d_in=32, d_sae=96, normalize_activations=mode, **extra)
    x = acts(2, 9, 32) * 5 + 1
    idx = FEATURES[10]
    assert torch.equal(SubsetEncoder(sae, idx)(x), dense_encode(sae, x)[..., idx])


def test_subset_in_model_dtype_is_cast_once(arch: str) -> None:
    sae = random_sae(arch, d_in=32, d_sae=96)
    enc = SubsetEncoder(sae, FEATURES[10], dtype=torch.bfloat16)
    if arch != "topk":
        assert enc.W.dtype == torch.bfloat16 and enc.W.is_contiguous()
    x = acts(2, 5, 32).to(torch.bfloat16)
    out = enc(x)
    assert out.dtype == torch.bfloat16
    ref = dense_encode(sae, x.float())[..., FEATURES[10]]
    # bf16 can flip a feature that sits on its threshold/top-k boundary; most must agree closely
    close = torch.isclose(out.float(), ref, rtol=0.05, atol=0.05)
    assert close.float().mean() > 0.9


def test_topk_subset_is_full_topk_then_gather() -> None:
    sae = random_sae("topk", d_in=32, d_sae=96, k=4)
    x = acts(5, 32)
    dense = dense_encode(sae, x)
    sub = SubsetEncoder(sae, list(range(96)))(x)
    assert torch.equal(sub, dense)
    assert ((sub != 0).sum(-1) <= 4).all()


def test_topk_encode_returns_named_values_and_indices(arch: str) -> None:
    sae = random_sae(arch, d_in=32, d_sae=96)
    x = acts(2, 4, 32)
    top = topk_encode(sae, x, 6)
    assert isinstance(top, TopKFeatures)
    assert top.values.shape == top.indices.shape == (2, 4, 6)
    dense = dense_encode(sae, x)
    assert torch.equal(dense.gather(-1, top.indices), top.values)
    assert torch.equal(top.values, dense.topk(6, dim=-1).values)


def test_bad_feature_indices() -> None:
    sae = random_sae("standard")
    with pytest.raises(IndexError, match=r"\[0, 64\)"):
        SubsetEncoder(sae, [0, 64])
    with pytest.raises(ValueError, match="at least one"):
        SubsetEncoder(sae, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_subset_on_cuda(arch: str) -> None:
    sae = random_sae(arch, d_in=32, d_sae=96).cuda()
    x = acts(3, 11, 32).cuda()
    idx = FEATURES[10]
    torch.testing.assert_close(SubsetEncoder(sae, idx)(x), dense_encode(sae, x)[..., idx])
