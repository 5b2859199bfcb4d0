"""The bundled SAE: loads by name, meets its targets, passes preflight on its real layer only."""

from __future__ import annotations

import pytest

from sae.errors import PreflightError
from sae.loading import bundled_names, load_sae
from sae.preflight import check_attachment

NAME = "smollm2-135m-res-l15"
TEXTS = [
    "The committee met on Tuesday to discuss the budget for the new library.",
    "Dear customer, your account has been suspended. Verify your PIN at our secure page now.",
    "She walked along the river, thinking about the letter her sister had sent from London.",
    "To bake bread you need flour, water, salt and yeast, and a little patience.",
    "The general ordered his troops to hold the bridge until reinforcements arrived.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "I never told him the truth about the money, and he never asked me again.",
    "Python lists are mutable sequences; tuples are their immutable counterpart.",
]


def test_bundled_sae_is_registered_and_declares_its_metrics() -> None:
    assert NAME in bundled_names()
    sae = load_sae(NAME)
    cfg = sae.cfg
    assert (cfg.architecture, cfg.d_in, cfg.hook_name) == (
        "jumprelu",
        576,
        "blocks.15.hook_resid_post",
    )
    assert cfg.d_sae % 16 == 0 and cfg.d_sae >= 8 * 576
    ev = cfg.metadata["eval"]
    # the targets, as measured on held-out text when the SAE was trained
    assert ev["explained_variance"] >= 0.80
    assert ev["ce_loss_recovered"] >= 0.85
    assert ev["dead_fraction"] <= 0.10
    assert 16 <= ev["l0"] <= 64
    assert "command" in cfg.metadata["provenance"]


@pytest.mark.integration
def test_preflight_passes_on_layer_15_and_fails_on_another_layer() -> None:
    from sae.lm import load_model

    lm = load_model("smollm2-135m")
    sae = load_sae(NAME)
    report = check_attachment(lm.model, lm.tokenizer, sae, TEXTS)
    assert report.ok, report.summary()
    assert report.explained_variance > 0.6
    with pytest.raises(PreflightError, match="wrong layer or hook"):
        check_attachment(lm.model, lm.tokenizer, sae, TEXTS, hook_name="blocks.5.hook_resid_post")
