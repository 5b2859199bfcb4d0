"""Where an SAE reads: hook names → a HF module and which of its tensors.

Hook names (TransformerLens spelling, as SAELens records them):

- ``blocks.N.hook_resid_post``: output of decoder layer N (the residual stream after it);
  sparsify's ``layers.N`` means the same.
- ``blocks.N.hook_resid_pre``: input of decoder layer N (a forward *pre*-hook).
- ``blocks.N.hook_mlp_out`` / ``blocks.N.hook_attn_out``: what the MLP / attention block adds
  to the residual stream (for Gemma 2/3: after their post-norms, as TransformerLens defines it).
- ``module:<dotted.path>``: the output of any module, e.g. ``module:model.layers.3.mlp``.

Use: ``hp = resolve_hook(model, name)`` once, then ``handle = hp.register(fn)`` where
``fn(tensor) -> tensor | None`` sees the ``(B, T, d)`` hidden state and may return a
replacement (same shape and dtype); output types (tensor in transformers 5.x, tuple in 4.x)
are preserved. The runtime installs once and gates inside ``fn``; ``handle.remove()`` detaches.
:func:`capture` runs a forward pass that stops right after the hooked module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sae.errors import HookError

# model_type → (path to the decoder-layer list, attn submodule, mlp submodule) inside the model.
_LLAMA_LIKE = ("model.layers", "self_attn", "mlp")
_GEMMA_POST = ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm")
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_POST,
    "gemma3": _GEMMA_POST,
    "gemma3_text": _GEMMA_POST,
    "phi": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
}
# Where the layer list may live when the causal LM is wrapped (multimodal Gemma 3, base models).
_LAYER_PREFIXES = ("", "model.language_model.", "language_model.model.", "model.")
_HOOK_RE = re.compile(r"blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)")
_SPARSIFY_RE = re.compile(r"layers[._](\d+)")
HOOK_KINDS = ("resid_post", "resid_pre", "mlp_out", "attn_out")

Kind = Literal["output", "input"]


# ---- reading and replacing the hidden state in a module's output or input ------------------
def get_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output: the tensor itself, or element 0 of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):  # ModelOutput-like
        return output.last_hidden_state
    raise HookError(f"cannot find a hidden-state tensor in a {type(output).__name__} output")


def replace_tensor(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``new``, same container type."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise HookError(f"cannot replace the hidden state in a {type(output).__name__} output")


def get_input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden state passed to a layer: first positional arg or ``hidden_states=``."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    raise HookError("cannot find the hidden_states input of the hooked layer")


def replace_input_tensor(
    args: tuple[Any, ...], kwargs: dict[str, Any], new: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` with the hidden-state input replaced by ``new``."""
    if args and isinstance(args[0], torch.Tensor):
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


# ---- resolving names -----------------------------------------------------------------------
@dataclass(frozen=True)
class HookPoint:
    """A resolved hook: the module, whether its ``output`` or ``input`` is read, and the layer."""

    name: str
    module: nn.Module
    kind: Kind
    layer_index: int | None

    def register(self, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Any:
        """Install ``fn`` on the hidden state (``(B, T, d)``); returns a removable handle.

        ``fn`` returns ``None`` to leave the tensor as is, or a replacement tensor.
        """
        if self.kind == "output":

            def out_hook(_m: nn.Module, _args: Any, output: Any) -> Any:
                new = fn(get_tensor(output))
                return None if new is None else replace_tensor(output, new)

            return self.module.register_forward_hook(out_hook)

        def in_hook(_m: nn.Module, args: Any, kwargs: Any) -> Any:
            new = fn(get_input_tensor(args, kwargs))
            return None if new is None else replace_input_tensor(args, kwargs, new)

        return self.module.register_forward_pre_hook(in_hook, with_kwargs=True)


def model_family(model: nn.Module) -> str:
    """The ``config.model_type`` of a HF model (``llama``, ``gpt2``...); text config if wrapped."""
    config = getattr(model, "config", None)
    family = str(getattr(config, "model_type", "") or "")
    if family not in FAMILIES and config is not None and hasattr(config, "get_text_config"):
        family = str(getattr(config.get_text_config(), "model_type", family) or family)
    return family


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and the ``ModuleList`` of decoder layers, or :class:`HookError`."""
    family = model_family(model)
    if family not in FAMILIES:
        raise HookError(
            f"unknown model family {family!r} ({type(model).__name__})",
            hint=f"supported: {', '.join(sorted(FAMILIES))}; or use 'module:<dotted.path>'",
        )
    base = FAMILIES[family][0]
    candidates = [prefix + base for prefix in _LAYER_PREFIXES] + [base.split(".", 1)[-1]]
    for path in candidates:
        mod = _get_submodule(model, path)
        if isinstance(mod, nn.ModuleList):
            return path, mod
    raise HookError(f"{family} model {type(model).__name__} has no decoder layers at {base!r}")


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def resolve_hook(model: nn.Module, hook_name: str) -> HookPoint:
    """Map ``hook_name`` onto ``model``: ``HookPoint(module, kind, layer_index)``.

    Raises :class:`HookError` naming the valid choices for an unknown family, an unknown hook
    kind, a missing module path, or a layer out of range.
    """
    if hook_name.startswith("module:"):
        path = hook_name.removeprefix("module:")
        mod = _get_submodule(model, path)
        if mod is None:
            raise HookError(
                f"model has no module {path!r}", hint="see model.named_modules() for valid paths"
            )
        return HookPoint(hook_name, mod, "output", None)
    m = _SPARSIFY_RE.fullmatch(hook_name)
    if m:
        hook_name, sparsify_name = f"blocks.{m.group(1)}.hook_resid_post", hook_name
    else:
        sparsify_name = None
    m = _HOOK_RE.fullmatch(hook_name)
    if m is None:
        raise HookError(
            f"unsupported hook name {hook_name!r}",
            hint="use blocks.N.hook_{" + ",".join(HOOK_KINDS) + "}, layers.N, or module:<path>",
        )
    layer, kind = int(m.group(1)), m.group(2)
    path, layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise HookError(
            f"layer {layer} of {hook_name!r} is out of range",
            hint=f"this model has {len(layers)} layers: valid N is 0..{len(layers) - 1}",
        )
    block = layers[layer]
    name = sparsify_name or hook_name
    if kind == "resid_post":
        return HookPoint(name, block, "output", layer)
    if kind == "resid_pre":
        return HookPoint(name, block, "input", layer)
    _, attn, mlp = FAMILIES[model_family(model)]
    sub = _get_submodule(block, attn if kind == "attn_out" else mlp)
    if sub is None:
        raise HookError(f"{path}.{layer} has no {attn if kind == 'attn_out' else mlp!r} module")
    return HookPoint(name, sub, "output", layer)


# ---- capture: a forward pass that stops after the hooked module ----------------------------
class _StopForward(Exception):
    """Raised from a capture hook to end the forward pass early (never escapes capture)."""


@torch.no_grad()
def capture(
    model: nn.Module,
    hook: str | HookPoint,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Run ``model`` on ``input_ids (B, T)`` only up to the hooked module; return its ``(B, T, d)``.

    The hook raises a private exception right after the module runs (or before, for
    ``resid_pre``), so the remaining layers and the LM head are skipped. The hook is removed in
    ``finally``, leaving the model as found even if the forward raises.
    """
    hp = resolve_hook(model, hook) if isinstance(hook, str) else hook
    captured: list[torch.Tensor] = []

    def grab(t: torch.Tensor) -> None:
        captured.append(t.detach().clone())
        raise _StopForward

    handle = hp.register(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise HookError(f"the forward pass never reached hook {hp.name!r}")
    return captured[0]
