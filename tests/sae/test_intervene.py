"""Interventions keep the SAE error term, remove exactly one feature's contribution, and leave
untouched tokens bit-identical."""

from __future__ import annotations

import pytest
import torch

from sae.encode import SubsetEncoder
from sae.intervene import FeatureEditor
from tests.sae.helpers import acts, random_sae


def _setup(arch: str, feats: list[int], **cfg: object):
    sae = random_sae(arch, d_in=32, d_sae=96, **cfg)
    x = acts(2, 7, 32) * 2
    f = SubsetEncoder(sae, feats)(x)
    return sae, x, f, FeatureEditor(sae, feats)


def _active_and_inactive(sae, x) -> tuple[int, int]:
    """The most active feature, and one made dead by a very negative bias."""
    dense = sae.encode(x)
    active = int((dense != 0).sum(dim=(0, 1)).argmax())
    dead = (active + 1) % sae.cfg.d_sae
    with torch.no_grad():
        (sae.b_gate if sae.cfg.architecture == "gated" else sae.b_enc)[dead] = -1e3
    assert (sae.encode(x)[..., dead] == 0).all()
    return active, dead


def test_ablating_an_inactive_feature_or_clamping_to_the_current_value_is_bit_identical(
    arch: str,
) -> None:
    sae = random_sae(arch, d_in=32, d_sae=96)
    x = acts(2, 7, 32) * 2
    x[0, 0, 0] = -0.0  # a negative zero must survive too
    active, inactive = _active_and_inactive(sae, x)
    feats = [inactive, active]
    f = SubsetEncoder(sae, feats)(x)
    ed = FeatureEditor(sae, feats)
    out = ed.ablate(x, f, mask=torch.tensor([True, False]).expand(2, 7, 2))  # only the dead one
    assert torch.equal(out, x)
    assert torch.equal(torch.signbit(out), torch.signbit(x))
    assert torch.equal(ed.clamp(x, f, f), x)  # clamp to the current values
    assert torch.equal(ed.scale(x, f, 1.0), x)


def test_ablation_removes_exactly_that_features_decoder_contribution(arch: str) -> None:
    sae = random_sae(arch, d_in=32, d_sae=96)
    x = acts(2, 7, 32) * 2
    active, _ = _active_and_inactive(sae, x)
    f_all = sae.encode(x)  # (B, T, d_sae)
    ed = FeatureEditor(sae, [active])
    out = ed.ablate(x, f_all[..., [active]])
    direction = sae.decoder_directions()[active].detach()  # (d_in,)
    expected = x - f_all[..., active, None] * direction
    torch.testing.assert_close(out, expected)
    # the SAE error term is kept: x - recon(x) == out - recon(f with the feature zeroed)
    f_edit = f_all.clone()
    f_edit[..., active] = 0
    torch.testing.assert_close(
        out - sae.decode(f_edit), x - sae.decode(f_all), rtol=1e-5, atol=1e-5
    )
    untouched = f_all[..., active] == 0
    assert torch.equal(out[untouched], x[untouched])


def test_clamp_and_scale_set_the_feature_value() -> None:
    _, x, f, ed = _setup("standard", [5, 9])
    out = ed.clamp(x, f, torch.tensor([3.0, 0.5]))
    torch.testing.assert_close(out, x + ((torch.tensor([3.0, 0.5]) - f) @ ed.directions))
    out2 = ed.scale(x, f, 2.0)  # new - f = f: adds each feature's contribution once more
    torch.testing.assert_close(out2, x + f @ ed.directions)


def test_clamp_to_recorded_max_and_per_token_mask() -> None:
    sae, x, f, _ = _setup("jumprelu", [1, 2])
    ed = FeatureEditor(sae, [1, 2], max_acts=[2.0, 4.0])
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 3:] = True  # the rule is active from token 3 of row 1
    out = ed.clamp_to_max(x, f, 1.5, mask=mask)
    assert torch.equal(out[~mask], x[~mask])
    expected = x[mask] + (torch.tensor([3.0, 6.0]) - f[mask]) @ ed.directions
    torch.testing.assert_close(out[mask], expected)
    with pytest.raises(ValueError, match="max_acts"):
        FeatureEditor(sae, [1]).clamp_to_max(x, f[..., :1], 2.0)


@pytest.mark.parametrize("mode", ["layer_norm", "expected_average_only_in"])
def test_normalised_saes_edit_in_model_space(mode: str) -> None:
    extra = {"norm_scaling_factor": 3.0} if mode == "expected_average_only_in" else {}
    sae = random_sae("standard", d_in=32, d_sae=96, normalize_activations=mode, **extra)
    x = acts(2, 7, 32) * 4 + 1
    active, _ = _active_and_inactive(sae, x)
    f_all = sae.encode(x)
    out = FeatureEditor(sae, [active]).ablate(x, f_all[..., [active]])
    f_edit = f_all.clone()
    f_edit[..., active] = 0
    norm = sae.normalize(x)[1]
    torch.testing.assert_close(
        out - sae.decode(f_edit, norm), x - sae.decode(f_all, norm), rtol=1e-4, atol=1e-4
    )


def test_edits_run_in_the_model_dtype() -> None:
    sae = random_sae("standard", d_in=32, d_sae=96)
    x = acts(2, 3, 32).to(torch.bfloat16)
    f = SubsetEncoder(sae, [1, 2], dtype=torch.bfloat16)(x)
    out = FeatureEditor(sae, [1, 2], dtype=torch.bfloat16).ablate(x, f)
    assert out.dtype == torch.bfloat16


def test_duplicate_features_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate features"):
        FeatureEditor(random_sae("standard"), [3, 3])
