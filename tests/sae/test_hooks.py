"""Hook names resolve on every tiny model family and read the tensor they name."""

from __future__ import annotations

import pytest
import torch

from sae.errors import HookError
from sae.hooks import (
    FAMILIES as HOOK_FAMILIES,
)
from sae.hooks import (
    capture,
    decoder_layers,
    get_tensor,
    replace_tensor,
    resolve_hook,
)
from tests.helpers.tiny_models import FAMILIES, _common, tiny_model, tiny_tokenizer


def _extra_family(name: str) -> torch.nn.Module:
    """Families the shared tiny-model helper lacks (Phi, Phi-3, Qwen3, Gemma 3), built here."""
    from transformers import (
        AutoModelForCausalLM,
        Gemma3TextConfig,
        Phi3Config,
        PhiConfig,
        Qwen3Config,
    )

    c = _common(tiny_tokenizer())
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    cfg = {
        "phi": lambda: PhiConfig(**small, num_attention_heads=4, **c),
        "phi3": lambda: Phi3Config(**small, num_attention_heads=4, num_key_value_heads=2, **c),
        "qwen3": lambda: Qwen3Config(
            **small, num_attention_heads=4, num_key_value_heads=2, head_dim=8, **c
        ),
        "gemma3_text": lambda: Gemma3TextConfig(
            **small, num_attention_heads=2, num_key_value_heads=1, head_dim=16, **c
        ),
    }[name]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


EXTRA = ("phi", "phi3", "qwen3", "gemma3_text")


@pytest.fixture(scope="module", params=sorted(FAMILIES) + list(EXTRA))
def family_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    name = request.param
    return name, _extra_family(name) if name in EXTRA else tiny_model(name)


def _ids() -> torch.Tensor:
    return torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(0))


def test_every_tiny_family_is_supported() -> None:
    assert set(FAMILIES) | set(EXTRA) <= set(HOOK_FAMILIES)


def test_resid_hooks_equal_output_hidden_states(family_model: tuple[str, torch.nn.Module]) -> None:
    _, model = family_model
    ids = _ids()
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states  # (n+1) × (B, T, d)
    n = len(decoder_layers(model)[1])
    for layer in range(n):
        assert torch.equal(capture(model, f"blocks.{layer}.hook_resid_pre", ids), hs[layer])
        if layer < n - 1:  # the last hidden state has the final norm applied
            post = capture(model, f"blocks.{layer}.hook_resid_post", ids)
            assert torch.equal(post, hs[layer + 1])
            assert torch.equal(capture(model, f"layers.{layer}", ids), post)  # sparsify name


def test_attn_and_mlp_out_add_up_to_the_residual(family_model: tuple[str, torch.nn.Module]) -> None:
    """resid_post = resid_pre + attn_out + mlp_out: the hooks read what is added to the stream."""
    _, model = family_model
    ids = _ids()
    for layer in range(len(decoder_layers(model)[1])):
        parts = [
            capture(model, f"blocks.{layer}.hook_{k}", ids)
            for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")
        ]
        torch.testing.assert_close(parts[0] + parts[1] + parts[2], parts[3], rtol=1e-4, atol=1e-5)


def test_out_of_range_layer_lists_the_valid_range(
    family_model: tuple[str, torch.nn.Module],
) -> None:
    _, model = family_model
    n = len(decoder_layers(model)[1])
    with pytest.raises(
        HookError, match=rf"layer {n} .*out of range.*{n} layers: valid N is 0\.\.{n - 1}"
    ):
        resolve_hook(model, f"blocks.{n}.hook_resid_post")


def test_bad_names_and_families() -> None:
    model = tiny_model("llama")
    with pytest.raises(HookError, match=r"unsupported hook name 'blocks\.1\.hook_z'.*resid_post"):
        resolve_hook(model, "blocks.1.hook_z")
    with pytest.raises(HookError, match=r"no module 'model\.layers\.1\.nope'"):
        resolve_hook(model, "module:model.layers.1.nope")
    model.config.model_type = "mamba"
    try:
        with pytest.raises(
            HookError, match=r"unknown model family 'mamba'.*supported: .*gpt2.*llama"
        ):
            resolve_hook(model, "blocks.1.hook_resid_post")
    finally:
        model.config.model_type = "llama"


def test_module_escape_hatch_reads_that_module() -> None:
    model = tiny_model("llama")
    ids = _ids()
    hp = resolve_hook(model, "module:model.layers.1.mlp")
    assert hp.module is model.model.layers[1].mlp and hp.kind == "output"
    torch.testing.assert_close(
        capture(model, hp, ids), capture(model, "blocks.1.hook_mlp_out", ids)
    )


def test_output_helpers_keep_the_container_type() -> None:
    t, new = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert get_tensor(t) is t and replace_tensor(t, new) is new
    tup = (t, "cache")
    assert get_tensor(tup) is t
    out = replace_tensor(tup, new)
    assert isinstance(out, tuple) and out[0] is new and out[1] == "cache"


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"])
def test_registered_replacement_changes_the_forward_and_is_removed(hook: str) -> None:
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        handle = resolve_hook(model, hook).register(lambda x: x * 0)
        try:
            edited = model(input_ids=ids).logits
        finally:
            handle.remove()
        after = model(input_ids=ids).logits
    assert not torch.allclose(clean, edited)
    assert torch.equal(clean, after)


def test_capture_stops_after_the_hooked_layer_and_cleans_up() -> None:
    model = tiny_model("llama")
    calls: list[int] = []
    handles = [
        layer.register_forward_hook(lambda *_a, i=i: calls.append(i))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        capture(model, "blocks.1.hook_resid_post", _ids())
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]  # layers 2 and 3 never ran
    assert all(not layer._forward_hooks for layer in model.model.layers)
