"""openai/sparse_autoencoder state dicts (a ``.pt`` file, loaded with ``weights_only=True``).

Keys: ``pre_bias (d)`` (subtracted before encoding, added after decoding), ``latent_bias (n)``,
``encoder.weight (n, d)``, ``decoder.weight (d, n)``, ``activation`` (``"TopK"`` or ``"ReLU"``),
``activation_state_dict`` (``{"k": k}`` for TopK) and the training statistic
``stats_last_nonzero``. As in the reference code, TopK autoencoders layer-normalise their input
(mean 0, std 1, eps 1e-5) and un-normalise the reconstruction: ``layer_norm``.
The state dict does not say where it reads: pass ``hook_name`` to :func:`sae.loading.load_sae`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.base import SAEConfig
from sae.errors import SAEFormatError
from sae.formats.common import read_torch, take

NAME = "openai"
_KEYS = ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight")


def weights_file(path: Path) -> Path | None:
    """The state-dict file: ``path`` itself, or the only ``*.pt`` file in the folder."""
    if path.is_file():
        return path if path.suffix in (".pt", ".pth") else None
    pts = sorted(p for p in path.glob("*.pt*") if p.suffix in (".pt", ".pth"))
    return pts[0] if len(pts) == 1 and not (path / "config.json").exists() else None


def detect(path: Path) -> bool:
    return weights_file(path) is not None


def read(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    file = weights_file(path)
    assert file is not None
    sd: dict[str, Any] = read_torch(file)
    if "pre_bias" not in sd:
        raise SAEFormatError(
            f"{file}: not an openai/sparse_autoencoder state dict "
            f"(no 'pre_bias'; keys: {sorted(sd)[:8]})"
        )
    activation = sd.pop("activation", "ReLU")
    act_state = sd.pop("activation_state_dict", {}) or {}
    sd.pop("stats_last_nonzero", None)  # training statistic, not a parameter
    if activation not in ("TopK", "ReLU"):
        raise SAEFormatError(f"{file}: activation {activation!r} is not supported (TopK, ReLU)")
    enc = sd.get("encoder.weight")
    if not isinstance(enc, torch.Tensor) or enc.dim() != 2:
        raise SAEFormatError(f"{file}: 'encoder.weight' must be a (n_latents, d) matrix")
    n, d = enc.shape
    out = {
        "W_enc": take(sd, "encoder.weight", (n, d), file).T,  # (d, n)
        "b_enc": take(sd, "latent_bias", (n,), file),
        "W_dec": take(sd, "decoder.weight", (d, n), file).T,  # (n, d)
        "b_dec": take(sd, "pre_bias", (d,), file),
    }
    if sd:
        raise SAEFormatError(f"{file}: unexpected tensor(s) {sorted(sd)}")
    topk = activation == "TopK"
    if topk and "k" not in act_state:
        raise SAEFormatError(f"{file}: TopK activation without activation_state_dict['k']")
    cfg = SAEConfig(
        d_in=int(d),
        d_sae=int(n),
        architecture="topk" if topk else "standard",
        k=int(act_state["k"]) if topk else None,
        dtype=str(out["W_enc"].dtype),
        normalize_activations="layer_norm" if topk else "none",
        metadata={"source_format": NAME, "activation": activation},
    )
    return cfg, out, file
