"""Shared helpers for the format readers: safe file reading and shape-checked SAE building."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sae.base import SAE, SAEConfig
from sae.errors import SAEFormatError
from sae.registry import get_sae_class


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, or raise :class:`SAEFormatError` naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SAEFormatError(f"{path}: cannot read JSON config: {exc}") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on CPU."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise SAEFormatError(f"{path}: cannot read safetensors: {exc}") from None


def read_torch(path: Path) -> dict[str, Any]:
    """A ``torch.save``d state dict, loaded with ``weights_only=True`` (no arbitrary pickles)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SAEFormatError(
            f"{path}: cannot load with torch.load(weights_only=True): {exc}",
            hint="featureguard never unpickles arbitrary objects; re-save as a plain state dict",
        ) from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a state dict, got {type(data).__name__}")
    return data


def take(tensors: dict[str, Any], name: str, shape: tuple[int, ...], file: Path) -> torch.Tensor:
    """Pop tensor ``name`` and assert its shape, or raise an error naming file and tensor."""
    if name not in tensors:
        raise SAEFormatError(
            f"{file}: tensor {name!r} is missing", hint=f"found: {sorted(tensors)}"
        )
    t = tensors.pop(name)
    if not isinstance(t, torch.Tensor):
        raise SAEFormatError(f"{file}: {name!r} is a {type(t).__name__}, not a tensor")
    if tuple(t.shape) != tuple(shape):
        raise SAEFormatError(
            f"{file}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)} "
            "from the config",
            hint="a transposed matrix or a config for another SAE",
        )
    return t


def build_sae(cfg: SAEConfig, tensors: dict[str, torch.Tensor], file: Path) -> SAE:
    """Instantiate ``cfg.architecture`` and fill it from SAELens-named ``tensors``.

    Every parameter must be present with exactly its shape, and no tensor may be left over:
    a mismatch raises :class:`SAEFormatError` naming the file and the tensor.
    """
    cls = get_sae_class(cfg.architecture)
    rest = dict(tensors)
    values = {name: take(rest, name, shape, file) for name, shape in cls.param_shapes(cfg).items()}
    if rest:
        raise SAEFormatError(
            f"{file}: unexpected tensor(s) {sorted(rest)} for a {cfg.architecture} SAE"
        )
    sae = cls(cfg)
    with torch.no_grad():
        for name, value in values.items():
            getattr(sae, name).copy_(value)
    return sae
