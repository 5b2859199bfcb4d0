"""saprmarks/dictionary_learning: ``ae.pt`` (state dict) + ``config.json`` (``trainer`` section).

Supported ``trainer.dict_class`` values and their state-dict keys:
- ``AutoEncoder`` (ReLU): ``encoder.weight (n, d)``, ``encoder.bias (n)``,
  ``decoder.weight (d, n)``, ``bias (d)`` (subtracted before encoding, added after decoding)
  → ``standard``.
- ``AutoEncoderTopK``: ``encoder.*``, ``decoder.weight (d, n)``, ``b_dec (d)``, buffers ``k`` and
  ``threshold`` (a training statistic; top-k is used at inference) → ``topk``.
- ``BatchTopKSAE``: same keys; inference thresholds ReLU'd activations with the scalar
  ``threshold`` → ``jumprelu`` with that threshold on every feature (exact for threshold >= 0,
  and a negative threshold is plain ReLU, i.e. threshold 0).
- ``JumpReluAutoEncoder``: ``W_enc, b_enc, W_dec, b_dec, threshold`` with activations scaled by the
  decoder row norms; the norms are folded into the weights → ``jumprelu``, b_dec not subtracted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.base import SAEConfig
from sae.errors import SAEFormatError
from sae.formats.common import read_json, read_torch, take

NAME = "dictionary_learning"
CFG_FILE = "config.json"
WEIGHTS_FILE = "ae.pt"
DICT_CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder")


def detect(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def hook_name_for(layer: int | None, submodule: str | None) -> str | None:
    """dictionary_learning names → featureguard hook names (resid_post unless said otherwise)."""
    sub = (submodule or "").lower()
    for kind in ("mlp_out", "attn_out", "resid_pre", "resid_post"):
        if kind in sub and layer is not None:
            return f"blocks.{layer}.hook_{kind}"
    if submodule and "." in submodule:
        return f"module:{submodule}"
    return None if layer is None else f"blocks.{layer}.hook_resid_post"


def read(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    cfg_file, weights = path / CFG_FILE, path / WEIGHTS_FILE
    raw = read_json(cfg_file)
    trainer: dict[str, Any] = dict(raw.get("trainer") or {})
    missing = [k for k in ("dict_class", "activation_dim", "dict_size") if k not in trainer]
    if missing:
        raise SAEFormatError(f"{cfg_file}: trainer section lacks {missing}")
    cls = trainer["dict_class"]
    if cls not in DICT_CLASSES:
        raise SAEFormatError(
            f"{cfg_file}: dict_class {cls!r} is not supported",
            hint=f"supported: {', '.join(DICT_CLASSES)}",
        )
    d, n = int(trainer["activation_dim"]), int(trainer["dict_size"])
    sd = read_torch(weights)
    meta = {"source_format": NAME, "dict_class": cls, "source_cfg": raw}
    common: dict[str, Any] = {
        "d_in": d,
        "d_sae": n,
        "model_name": trainer.get("lm_name"),
        "hook_name": hook_name_for(trainer.get("layer"), trainer.get("submodule_name")),
    }
    if cls == "JumpReluAutoEncoder":
        return _jumprelu_ae(sd, common, meta, weights)
    out = {
        "W_enc": take(sd, "encoder.weight", (n, d), weights).T,  # (d, n)
        "b_enc": take(sd, "encoder.bias", (n,), weights),
        "W_dec": take(sd, "decoder.weight", (d, n), weights).T,  # (n, d)
        "b_dec": take(sd, "bias" if cls == "AutoEncoder" else "b_dec", (d,), weights),
    }
    arch, extra = "standard", dict[str, Any]()
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        k_file = int(take(sd, "k", (), weights).item())
        k_cfg = trainer.get("k")
        if k_cfg is not None and int(k_cfg) != k_file:
            raise SAEFormatError(f"{weights}: k={k_file} but {cfg_file} says k={k_cfg}")
        threshold = float(take(sd, "threshold", (), weights).item())
        meta.update(k=k_file, threshold=threshold)
        if cls == "AutoEncoderTopK":
            arch, extra = "topk", {"k": k_file}
        else:
            arch = "jumprelu"
            out["threshold"] = torch.full((n,), max(threshold, 0.0), dtype=out["b_enc"].dtype)
    if sd:
        raise SAEFormatError(f"{weights}: unexpected tensor(s) {sorted(sd)} for {cls}")
    cfg = SAEConfig(
        **common, architecture=arch, **extra, dtype=str(out["W_enc"].dtype), metadata=meta
    )
    return cfg, out, weights


def _jumprelu_ae(
    sd: dict[str, Any], common: dict[str, Any], meta: dict[str, Any], weights: Path
) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    d, n = common["d_in"], common["d_sae"]
    w_enc = take(sd, "W_enc", (d, n), weights)
    b_enc = take(sd, "b_enc", (n,), weights)
    w_dec = take(sd, "W_dec", (n, d), weights)
    b_dec = take(sd, "b_dec", (d,), weights)
    thr = take(sd, "threshold", (n,), weights)
    if sd:
        raise SAEFormatError(f"{weights}: unexpected tensor(s) {sorted(sd)}")
    norms = w_dec.norm(dim=1)  # (n,)  fold f * |W_dec| into the weights
    out = {
        "W_enc": w_enc * norms,
        "b_enc": b_enc * norms,
        "W_dec": w_dec / norms[:, None],
        "b_dec": b_dec,
        "threshold": thr * norms,
    }
    cfg = SAEConfig(
        **common,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        dtype=str(w_enc.dtype),
        metadata=meta,
    )
    return cfg, out, weights
