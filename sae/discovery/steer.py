"""Steering: generate with one feature clamped at every token, beside the unsteered output.

The clamp is :class:`sae.intervene.FeatureEditor` in a forward hook on the SAE's hook point:
``x' = x + (value − f(x)) · W_dec[i]``, so the SAE's reconstruction error and every other
feature are kept. It applies to every token the model runs (the prompt at prefill, then each
new token). Decoding is greedy on both sides, so the only difference is the clamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sae.discovery.activations import Stack
from sae.encode import SubsetEncoder
from sae.errors import FeatureguardError
from sae.hooks import resolve_hook
from sae.intervene import FeatureEditor


@dataclass(frozen=True)
class SteerResult:
    prompt: str
    index: int
    value: float  # the absolute clamp value used
    baseline: str
    steered: str


def recorded_max(stack: Stack, index: int) -> float:
    """Feature ``index``'s max activation on held-out text (the SAE's feature_stats file)."""
    from sae.training.pipeline import load_feature_stats

    stats = load_feature_stats(stack.sae_path) if stack.sae_path is not None else None
    if stats is None:
        raise FeatureguardError(
            f"SAE {stack.name} has no recorded feature maxima (feature_stats.safetensors)",
            hint="give an absolute --value instead of --times-max",
        )
    return float(stats["max"][index])


def _encode_prompt(tokenizer: Any, prompt: str, raw: bool) -> dict[str, torch.Tensor]:
    if raw or tokenizer.chat_template is None:
        return dict(tokenizer(prompt, return_tensors="pt"))
    return dict(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
    )


def _greedy(model: Any, tokenizer: Any, enc: dict[str, torch.Tensor], n: int) -> str:
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def steer(
    stack: Stack,
    prompt: str,
    index: int,
    value: float,
    *,
    max_new_tokens: int = 40,
    raw: bool = False,
) -> SteerResult:
    """Greedy completions of ``prompt`` without and with feature ``index`` clamped to
    ``value`` (absolute units) at every token."""
    if not 0 <= index < stack.sae.cfg.d_sae:
        raise IndexError(f"feature {index} is outside 0..{stack.sae.cfg.d_sae - 1}")
    model, tok = stack.model, stack.tokenizer
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    enc = {k: v.to(device) for k, v in _encode_prompt(tok, prompt, raw).items()}
    baseline = _greedy(model, tok, enc, max_new_tokens)
    encoder = SubsetEncoder(stack.sae, [index], dtype=dtype, device=device)
    editor = FeatureEditor(stack.sae, [index], dtype=dtype, device=device)

    def clamp(x: torch.Tensor) -> torch.Tensor:  # x (B, T, d_in) at every forward step
        return editor.clamp(x, encoder(x), value)

    handle = resolve_hook(model, stack.sae.cfg.hook_name or "").register(clamp)
    try:
        steered = _greedy(model, tok, enc, max_new_tokens)
    finally:
        handle.remove()
    return SteerResult(prompt, index, float(value), baseline, steered)
