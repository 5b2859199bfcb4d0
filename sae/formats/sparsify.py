"""EleutherAI sparsify: one folder per hookpoint (``layers.N``): ``cfg.json`` + ``sae.safetensors``.

Tensors: ``encoder.weight (num_latents, d_in)``, ``encoder.bias (num_latents)``,
``W_dec (num_latents, d_in)`` (the SAELens orientation already: one public converter transposes it
wrongly, so its shape is asserted), ``b_dec (d_in)``. Encoding is ReLU then top-k of
``(x - b_dec) @ encoder.weight.T + encoder.bias``: a ``topk`` SAE. ``layers.N`` is the output of
decoder layer N, i.e. ``blocks.N.hook_resid_post``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sae.base import SAEConfig
from sae.errors import SAEFormatError
from sae.formats.common import read_json, read_safetensors, take

NAME = "sparsify"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def detect(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def hookpoints(parent: Path) -> list[str]:
    """The hookpoint sub-folders of a multi-hookpoint sparsify checkpoint, naturally sorted."""
    names = (
        [p.name for p in parent.iterdir() if p.is_dir() and detect(p)] if parent.is_dir() else []
    )
    return sorted(
        names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    )


def hook_name_for(hookpoint: str) -> str:
    """``layers.N`` → ``blocks.N.hook_resid_post``; other hookpoints stay sparsify names."""
    m = re.fullmatch(r"layers[._](\d+)", hookpoint)
    return f"blocks.{m.group(1)}.hook_resid_post" if m else hookpoint


def read(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    """Read one sparsify hookpoint folder into a ``topk`` config and SAELens-named tensors."""
    cfg_file, weights = path / CFG_FILE, path / WEIGHTS_FILE
    raw = read_json(cfg_file)
    if raw.get("activation", "topk") != "topk":
        raise SAEFormatError(
            f"{cfg_file}: activation {raw['activation']!r} is not supported (only topk)"
        )
    if raw.get("transcode"):
        raise SAEFormatError(f"{cfg_file}: transcoders are not supported (transcode=true)")
    if raw.get("skip_connection"):
        raise SAEFormatError(f"{cfg_file}: skip_connection SAEs are not supported")
    if raw.get("signed"):
        raise SAEFormatError(f"{cfg_file}: signed top-k SAEs are not supported")
    tensors = read_safetensors(weights)
    d_in = raw.get("d_in")
    if d_in is None:  # very old checkpoints: trust the encoder's shape
        d_in = int(tensors["encoder.weight"].shape[1]) if "encoder.weight" in tensors else 0
    num_latents = int(raw.get("num_latents") or 0) or int(d_in) * int(raw["expansion_factor"])
    cfg = SAEConfig(
        d_in=int(d_in),
        d_sae=num_latents,
        architecture="topk",
        k=int(raw["k"]),
        dtype=str(tensors["b_dec"].dtype) if "b_dec" in tensors else "float32",
        apply_b_dec_to_input=True,
        hook_name=hook_name_for(path.name),
        metadata={"source_format": NAME, "hookpoint": path.name, "source_cfg": raw},
    )
    if "W_skip" in tensors:
        raise SAEFormatError(f"{weights}: W_skip (skip connection) is not supported")
    out = {
        "W_enc": take(tensors, "encoder.weight", (num_latents, d_in), weights).T,  # (d_in, n)
        "b_enc": take(tensors, "encoder.bias", (num_latents,), weights),
        "W_dec": take(tensors, "W_dec", (num_latents, d_in), weights),  # (n, d_in)
        "b_dec": take(tensors, "b_dec", (d_in,), weights),
    }
    if tensors:
        raise SAEFormatError(f"{weights}: unexpected tensor(s) {sorted(tensors)}")
    return cfg, out, weights
