"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (v6 and pre-6.0 configs); the
format featureguard saves.

v6 configs keep ``d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations,
reshape_activations, architecture`` (+ ``k, rescale_acts_by_decoder_norm`` for topk) at the top and
``hook_name, model_name, ...`` in ``metadata``; any other top-level key is an error. Pre-6.0
configs are flat (``hook_point``, ``activation_fn_str``, boolean ``normalize_activations``); their
keys that featureguard does not use are kept in ``metadata`` rather than dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from sae.base import SAE, SAEConfig, dtype_name
from sae.errors import SAEFormatError
from sae.formats.common import read_json, read_safetensors

NAME = "saelens"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# The format version SAELens keys its loader on: >= 6.0 means "metadata holds hook_name".
FORMAT_VERSION = "6.0.0"

_V6_KEYS = {
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
    "architecture",
    "k",
    "rescale_acts_by_decoder_norm",
    "norm_scaling_factor",  # featureguard extension, only written when it cannot be folded
    "use_sparse_activations",  # SAELens topk compute detail; does not change values
}
_PRE6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}


def detect(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _version(cfg: dict[str, Any]) -> tuple[int, ...] | None:
    raw = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not raw:
        return None
    return tuple(int(p) for p in re.findall(r"\d+", str(raw))[:3])


def is_v6(cfg: dict[str, Any]) -> bool:
    """v6 when the declared version is >= 6, or, undeclared, when ``metadata`` holds the hook."""
    version = _version(cfg)
    if version is not None:
        return version >= (6,)
    return isinstance(cfg.get("metadata"), dict) and "hook_point" not in cfg


def parse_v6(raw: dict[str, Any], file: Path) -> SAEConfig:
    unknown = sorted(set(raw) - _V6_KEYS)
    if unknown:
        raise SAEFormatError(
            f"{file}: unknown SAELens v6 config key(s) {unknown}",
            hint=f"known keys: {', '.join(sorted(_V6_KEYS))}",
        )
    if raw.get("reshape_activations", "none") != "none":
        raise SAEFormatError(
            f"{file}: reshape_activations={raw['reshape_activations']!r} "
            "(hook_z SAEs) is not supported"
        )
    meta = dict(raw.get("metadata") or {})
    fields = {
        k: v
        for k, v in raw.items()
        if k not in ("metadata", "reshape_activations", "use_sparse_activations")
    }
    fields["hook_name"] = meta.pop("hook_name", None)
    fields["model_name"] = meta.pop("model_name", None)
    if fields.get("normalize_activations") is None:
        fields["normalize_activations"] = "none"
    if fields.get("architecture") != "topk":
        if "k" in fields:  # e.g. a BatchTopK exported as jumprelu: informational only
            meta["k"] = fields.pop("k")
        if not fields.get("rescale_acts_by_decoder_norm"):
            fields.pop("rescale_acts_by_decoder_norm", None)
    if "norm_scaling_factor" not in fields and "norm_scaling_factor" in meta:
        fields["norm_scaling_factor"] = meta.pop("norm_scaling_factor")
    fields["metadata"] = meta
    return SAEConfig.from_dict(fields, source=str(file))


def parse_pre6(raw: dict[str, Any], file: Path) -> SAEConfig:
    cfg = {_PRE6_RENAMES.get(k, k): v for k, v in raw.items()}
    act = cfg.pop("activation_fn_str", None) or cfg.pop("activation_fn", None) or "relu"
    kwargs = cfg.pop("activation_fn_kwargs", None) or {}
    arch = cfg.pop("architecture", None) or ("topk" if act == "topk" else "standard")
    if act not in ("relu", "topk"):
        raise SAEFormatError(f"{file}: activation_fn {act!r} is not supported (relu, topk)")
    norm = cfg.pop("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:
        norm = "expected_average_only_in" if norm else "none"
    if cfg.pop("finetuning_scaling_factor", False):
        raise SAEFormatError(f"{file}: finetuning_scaling_factor SAEs are not supported")
    fields: dict[str, Any] = {
        "d_in": cfg.pop("d_in", None),
        "d_sae": cfg.pop("d_sae", None),
        "architecture": arch,
        "dtype": cfg.pop("dtype", "float32"),
        "device": cfg.pop("device", "cpu"),
        "apply_b_dec_to_input": cfg.pop("apply_b_dec_to_input", True),
        "normalize_activations": norm,
        "hook_name": cfg.pop("hook_name", None),
        "model_name": cfg.pop("model_name", None),
    }
    if "norm_scaling_factor" in cfg:
        fields["norm_scaling_factor"] = cfg.pop("norm_scaling_factor")
    if arch == "topk":
        fields["k"] = kwargs.get("k", cfg.pop("k", None))
        fields["rescale_acts_by_decoder_norm"] = cfg.pop("rescale_acts_by_decoder_norm", False)
    # Keep everything else (hook_layer, context_size, training hyperparameters) as metadata.
    fields["metadata"] = {k: v for k, v in cfg.items() if k not in ("k",)}
    if fields["d_in"] is None or fields["d_sae"] is None:
        raise SAEFormatError(f"{file}: config lacks d_in / d_sae")
    return SAEConfig.from_dict(fields, source=str(file))


def read(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    """Read a SAELens folder into a config and SAELens-named tensors."""
    raw = read_json(path / CFG_FILE)
    cfg = parse_v6(raw, path / CFG_FILE) if is_v6(raw) else parse_pre6(raw, path / CFG_FILE)
    weights = path / WEIGHTS_FILE
    tensors = read_safetensors(weights)
    if "scaling_factor" in tensors:  # pre-6 files carried an all-ones placeholder
        sf = tensors.pop("scaling_factor")
        if not torch.all(sf == 1):
            raise SAEFormatError(f"{weights}: a non-trivial 'scaling_factor' is not supported")
    return cfg, tensors, weights


def config_dict(sae: SAE) -> dict[str, Any]:
    """The SAELens v6 ``cfg.json`` for ``sae`` (hook_name/model_name inside ``metadata``)."""
    c = sae.cfg
    out: dict[str, Any] = {
        "architecture": c.architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": dtype_name(sae.dtype),
        "device": str(sae.device),
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": c.normalize_activations,
        "reshape_activations": "none",
    }
    if c.architecture == "topk":
        out["k"] = c.k
        out["rescale_acts_by_decoder_norm"] = c.rescale_acts_by_decoder_norm
    if c.norm_scaling_factor is not None:
        out["norm_scaling_factor"] = c.norm_scaling_factor
    out["metadata"] = {
        **c.metadata,
        "hook_name": c.hook_name,
        "model_name": c.model_name,
        "sae_lens_version": c.metadata.get("sae_lens_version", FORMAT_VERSION),
    }
    return out


def write(sae: SAE, path: Path) -> Path:
    """Write ``sae`` as a SAELens v6 folder; returns the weights file."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = config_dict(sae)
    try:
        text = json.dumps(cfg, indent=2, sort_keys=False)
    except TypeError as exc:
        raise SAEFormatError(f"SAE metadata is not JSON-serialisable: {exc}") from None
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.named_parameters()}
    weights = path / WEIGHTS_FILE
    save_file(tensors, str(weights))
    (path / CFG_FILE).write_text(text + "\n")
    return weights
