"""SAEConfig validation and the registry."""

from __future__ import annotations

import pytest
import torch

from sae.architectures.standard import StandardSAE
from sae.base import SAEConfig
from sae.errors import SAEFormatError
from sae.registry import architectures, create_sae, get_sae_class, register, unregister


def test_unknown_config_keys_are_rejected_by_name() -> None:
    with pytest.raises(SAEFormatError, match=r"unknown SAE config key\(s\) \['colour'\]"):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "colour": "red"})


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"normalize_activations": "batch_norm"}, "unknown normalize_activations"),
        ({"normalize_activations": "expected_average_only_in"}, "needs norm_scaling_factor"),
        ({"architecture": "topk"}, "needs 0 < k"),
        ({"architecture": "jumprelu", "k": 3}, "only meaningful for architecture 'topk'"),
        ({"dtype": "float8"}, "unknown dtype"),
        ({"d_in": 0}, "must be positive"),
    ],
)
def test_invalid_configs_raise_clear_errors(fields: dict, match: str) -> None:
    with pytest.raises(SAEFormatError, match=match):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, **fields})


def test_config_round_trips_through_dict() -> None:
    cfg = SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, metadata={"eval": {"l0": 2.0}})
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg


def test_registry_refuses_duplicates_and_names_known_architectures() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(StandardSAE)

    class Extra(StandardSAE):
        architecture = "extra_for_test"

    register(Extra)
    try:
        assert "extra_for_test" in architectures()
        with pytest.raises(ValueError, match="already registered"):
            register(Extra)
    finally:
        unregister("extra_for_test")
    with pytest.raises(SAEFormatError, match=r"unknown SAE architecture 'matryoshka'.*jumprelu"):
        get_sae_class("matryoshka")


def test_create_sae_for_the_trainer() -> None:
    sae = create_sae(
        d_in=576,
        d_sae=9216,
        architecture="jumprelu",
        hook_name="blocks.15.hook_resid_post",
        metadata={"eval": {"l0": 40.0}},
    )
    shapes = {n: tuple(p.shape) for n, p in sae.named_parameters()}
    assert shapes == {
        "W_enc": (576, 9216),
        "b_enc": (9216,),
        "W_dec": (9216, 576),
        "b_dec": (576,),
        "threshold": (9216,),
    }
    assert all((p == 0).all() for p in sae.parameters())
    rnd = create_sae(d_in=8, d_sae=16, init="random", seed=3)
    torch.testing.assert_close(rnd.W_dec.norm(dim=-1), torch.ones(16))
    assert torch.equal(rnd.W_enc, rnd.W_dec.T)


def test_create_sae_rejects_unknown_fields() -> None:
    with pytest.raises(SAEFormatError, match="unknown SAE config key"):
        create_sae(d_in=8, d_sae=16, l1_coefficient=3.0)
