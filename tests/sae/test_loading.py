"""Every on-disk format loads (fixtures in ``format_fixtures``) and encodes like a reference
computed in that format's own convention; saving round-trips; bad files fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae.errors import SAEFormatError
from sae.loading import detect_format, load_sae, resolve_sae_path, sae_sha256, save_sae
from tests.sae.format_fixtures import (
    WRITERS,
    D,
    N,
    _dl_config,
    write_dl_relu,
    write_saelens_v6,
    write_sparsify,
)
from tests.sae.helpers import acts, random_sae


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_loads_and_encodes_like_its_reference(fmt: str, tmp_path: Path) -> None:
    path, ref, arch = WRITERS[fmt](tmp_path)
    sae = load_sae(path)
    assert sae.cfg.architecture == arch
    x = acts(3, 6, D) * 2
    torch.testing.assert_close(sae.encode(x), ref(x), rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in sae.parameters())
    assert len(sae_sha256(path)) == 64


def test_hook_names_are_translated(tmp_path: Path) -> None:
    names = {}
    for fmt in ("saelens_v6", "saelens_pre6", "sparsify", "dictionary_learning_relu"):
        d = tmp_path / fmt
        d.mkdir()
        names[fmt] = load_sae(WRITERS[fmt](d)[0]).cfg.hook_name
    assert names == {
        "saelens_v6": "blocks.2.hook_resid_post",
        "saelens_pre6": "blocks.1.hook_resid_pre",
        "sparsify": "blocks.3.hook_resid_post",
        "dictionary_learning_relu": "blocks.4.hook_resid_post",
    }
    assert (
        load_sae(
            WRITERS["openai_relu"](tmp_path)[0], hook_name="blocks.6.hook_resid_post"
        ).cfg.hook_name
        == "blocks.6.hook_resid_post"
    )


def test_round_trip_save_load(arch: str, tmp_path: Path) -> None:
    sae = random_sae(
        arch, metadata={"eval": {"l0": 12.5, "explained_variance": 0.8}, "context_size": 128}
    )
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["eval"]["l0"] == 12.5
    assert float(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    back = load_sae(tmp_path / "s")
    assert back.cfg.to_dict() | {"metadata": {}} == sae.cfg.to_dict() | {"metadata": {}}
    assert back.cfg.metadata["eval"] == {"l0": 12.5, "explained_variance": 0.8}
    for (n1, p1), (n2, p2) in zip(sae.named_parameters(), back.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    x = acts(4, D)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert sae_sha256(back) == sae_sha256(tmp_path / "s") == sae_sha256(sae)


def test_expected_average_scaling_is_folded_on_save(tmp_path: Path) -> None:
    sae = random_sae(
        "jumprelu", normalize_activations="expected_average_only_in", norm_scaling_factor=4.0
    )
    save_sae(sae, tmp_path)
    back = load_sae(tmp_path)
    assert back.cfg.normalize_activations == "none"
    x = acts(5, D) * 3
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    torch.testing.assert_close(back(x), sae(x))


def test_load_dtype_and_bundled_names(tmp_path: Path) -> None:
    save_sae(random_sae("standard"), tmp_path / "s")
    assert load_sae(tmp_path / "s", dtype="bfloat16").W_enc.dtype == torch.bfloat16
    with pytest.raises(SAEFormatError, match=r"no SAE named or at 'no-such-sae'.*bundled SAEs"):
        resolve_sae_path("no-such-sae")


# ---- errors ---------------------------------------------------------------------------------
def test_shape_mismatch_names_file_and_tensor(tmp_path: Path) -> None:
    write_saelens_v6(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] = 128
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        SAEFormatError,
        match=r"sae_weights.safetensors: tensor 'W_enc' has shape "
        r"\(16, 64\), expected \(16, 128\)",
    ):
        load_sae(tmp_path)


def test_sparsify_transposed_decoder_is_caught(tmp_path: Path) -> None:
    path, _, _ = write_sparsify(tmp_path)
    t = load_file(str(path / "sae.safetensors"))
    t["W_dec"] = t["W_dec"].T.contiguous()
    save_file(t, str(path / "sae.safetensors"))
    with pytest.raises(SAEFormatError, match=r"'W_dec' has shape \(16, 64\), expected \(64, 16\)"):
        load_sae(path)


def test_sparsify_parent_folder_asks_which_hookpoint(tmp_path: Path) -> None:
    write_sparsify(tmp_path)
    assert load_sae(tmp_path).cfg.hook_name == "blocks.3.hook_resid_post"  # only one: taken
    (tmp_path / "layers.10").mkdir()
    for f in ("cfg.json", "sae.safetensors"):
        (tmp_path / "layers.10" / f).write_bytes((tmp_path / "layers.3" / f).read_bytes())
    with pytest.raises(SAEFormatError, match=r"2 hookpoints; say which one.*layers\.3.*layers\.10"):
        load_sae(tmp_path)
    assert load_sae(tmp_path / "layers.10").cfg.hook_name == "blocks.10.hook_resid_post"


def test_sparsify_num_latents_zero_uses_expansion_factor(tmp_path: Path) -> None:
    path, _, _ = write_sparsify(tmp_path)
    assert load_sae(path).cfg.d_sae == D * 4


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"architecture": "matryoshka"}, "unknown SAE architecture 'matryoshka'"),
        ({"l1_coefficient": 5}, r"unknown SAELens v6 config key\(s\) \['l1_coefficient'\]"),
        ({"reshape_activations": "hook_z"}, "hook_z"),
        (
            {
                "metadata": {"hook_name": "x", "sae_lens_version": "6.1.0"},
                "normalize_activations": "expected_average_only_in",
            },
            "needs norm_scaling_factor",
        ),
    ],
)
def test_bad_saelens_configs(tmp_path: Path, edit: dict, match: str) -> None:
    write_saelens_v6(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(SAEFormatError, match=match):
        load_sae(tmp_path)


def test_extra_tensor_is_an_error(tmp_path: Path) -> None:
    write_saelens_v6(tmp_path, "standard")
    t = load_file(str(tmp_path / "sae_weights.safetensors"))
    t["threshold"] = torch.zeros(N)
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError, match=r"unexpected tensor\(s\) \['threshold'\]"):
        load_sae(tmp_path)


def test_unsupported_dictionary_class(tmp_path: Path) -> None:
    write_dl_relu(tmp_path)
    _dl_config(tmp_path, "CrossCoder")
    with pytest.raises(SAEFormatError, match="dict_class 'CrossCoder' is not supported"):
        load_sae(tmp_path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"pre_bias": torch.zeros(2), "obj": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(SAEFormatError, match="weights_only=True"):
        load_sae(tmp_path / "evil.pt")


def test_unrecognised_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SAEFormatError, match="not a recognised SAE"):
        detect_format(tmp_path)


def test_k_on_a_non_topk_v6_config_is_kept_as_metadata(tmp_path: Path) -> None:
    write_saelens_v6(tmp_path)  # a BatchTopK exported as jumprelu may still say k
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "k": 32}))
    sae = load_sae(tmp_path)
    assert sae.cfg.k is None and sae.cfg.metadata["k"] == 32
