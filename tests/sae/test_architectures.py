"""Every registered architecture encodes/decodes like a reference written here from the papers."""

from __future__ import annotations

import pytest
import torch

from sae.base import SAE
from sae.registry import architectures
from tests.sae.helpers import acts, random_sae


def reference_encode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """Plain re-implementation of each architecture (SAELens semantics), no shared code."""
    p = {n: t.detach() for n, t in sae.named_parameters()}
    c = sae.cfg
    xin = x - p["b_dec"] if c.apply_b_dec_to_input else x
    if c.architecture == "gated":
        gate = (xin @ p["W_enc"] + p["b_gate"]) > 0
        mag = torch.relu(xin @ (p["W_enc"] * torch.exp(p["r_mag"])) + p["b_mag"])
        return gate.float() * mag
    pre = xin @ p["W_enc"] + p["b_enc"]
    if c.architecture == "standard":
        return torch.relu(pre)
    if c.architecture == "jumprelu":
        return torch.where(pre > p["threshold"], torch.relu(pre), torch.zeros_like(pre))
    if c.architecture == "topk":
        score = pre * p["W_dec"].norm(dim=-1) if c.rescale_acts_by_decoder_norm else pre
        top = score.topk(c.k, dim=-1)
        out = torch.zeros_like(pre)
        return out.scatter(-1, top.indices, torch.relu(top.values))
    raise AssertionError(f"add a reference for {c.architecture}")


def reference_decode(sae: SAE, f: torch.Tensor) -> torch.Tensor:
    p = {n: t.detach() for n, t in sae.named_parameters()}
    if sae.cfg.rescale_acts_by_decoder_norm:
        f = f / p["W_dec"].norm(dim=-1)
    return f @ p["W_dec"] + p["b_dec"]


def test_every_architecture_has_a_reference() -> None:
    assert set(architectures()) >= {"standard", "jumprelu", "topk", "gated"}


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_decode_match_reference(arch: str, apply_b_dec: bool) -> None:
    sae = random_sae(arch, apply_b_dec_to_input=apply_b_dec)
    x = acts(3, 7, 16)
    f = sae.encode(x)
    assert f.shape == (3, 7, 64)
    torch.testing.assert_close(f, reference_encode(sae, x), rtol=1e-5, atol=1e-6)
    assert (f != 0).any() and (f == 0).any()  # the test exercises both branches
    torch.testing.assert_close(sae.decode(f), reference_decode(sae, f))
    torch.testing.assert_close(sae(x), reference_decode(sae, reference_encode(sae, x)))


def test_topk_rescale_by_decoder_norm() -> None:
    sae = random_sae("topk", rescale_acts_by_decoder_norm=True)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 3.0, 64)[:, None])  # uneven norms change the ranking
    x = acts(4, 16)
    f = sae.encode(x)
    torch.testing.assert_close(f, reference_encode(sae, x))
    assert ((f != 0).sum(-1) <= 5).all()
    torch.testing.assert_close(sae(x), reference_decode(sae, f))


@pytest.mark.parametrize(
    "mode", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"]
)
def test_input_normalisation_round_trips(arch: str, mode: str) -> None:
    extra = {"norm_scaling_factor": 2.5} if mode == "expected_average_only_in" else {}
    sae = random_sae(arch, normalize_activations=mode, **extra)
    x = acts(2, 5, 16) * 7 + 3
    x_n, norm = sae.normalize(x)
    if mode == "constant_norm_rescale":
        torch.testing.assert_close(x_n.norm(dim=-1), torch.full((2, 5), 4.0))
    elif mode == "layer_norm":
        torch.testing.assert_close(x_n.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(x_n, x * 2.5)
    torch.testing.assert_close(sae.encode(x), reference_encode(sae, x_n))
    y = sae(x)
    expected = sae.denormalize(reference_decode(sae, reference_encode(sae, x_n)), norm)
    torch.testing.assert_close(y, expected)
    if mode != "expected_average_only_in":
        with pytest.raises(ValueError, match="NormState"):
            sae.decode(sae.encode(x))


def test_encode_casts_input_to_sae_dtype(arch: str) -> None:
    sae = random_sae(arch)
    f = sae.encode(acts(2, 16).to(torch.float64))
    assert f.dtype == torch.float32
