"""Load any supported SAE from disk, save ours in SAELens v6 format, and pin SAEs by sha256.

``load_sae(path)`` detects the format of a folder (or file):

========================  ==============================================================
format                    files
========================  ==============================================================
``saelens`` (v6, pre-6)   ``cfg.json`` + ``sae_weights.safetensors``
``sparsify``              ``cfg.json`` + ``sae.safetensors`` (one folder per hookpoint)
``dictionary_learning``   ``config.json`` + ``ae.pt``
``openai``                a ``.pt`` state dict with ``pre_bias`` (or a folder with one)
========================  ==============================================================

Bundled SAEs live in ``sae/bundled/<name>/`` (SAELens format); :func:`resolve_sae_path` turns
a bundled name or a path into a folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import torch

from sae.base import SAE, parse_dtype
from sae.errors import SAEFormatError
from sae.formats import dictionary_learning, openai, saelens, sparsify
from sae.formats.common import build_sae

FORMATS: dict[str, ModuleType] = {
    m.NAME: m for m in (saelens, sparsify, dictionary_learning, openai)
}
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


def bundled_names() -> list[str]:
    """Names of the SAEs shipped in ``sae/bundled/``."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_dir() and saelens.detect(p))


def resolve_sae_path(name_or_path: str | Path) -> Path:
    """A bundled SAE name (checked first) or an existing path → a path to load.

    Raises :class:`SAEFormatError` listing the bundled names when neither exists.
    """
    name = str(name_or_path)
    if "/" not in name and (BUNDLED_DIR / name).is_dir():
        return BUNDLED_DIR / name
    path = Path(name).expanduser()
    if path.exists():
        return path
    names = ", ".join(bundled_names()) or "(none installed)"
    raise SAEFormatError(f"no SAE named or at {name!r}", hint=f"bundled SAEs: {names}")


def detect_format(path: Path) -> str:
    """The format name of ``path``, or a clear error (with hookpoints for sparsify parents)."""
    if path.is_dir():
        for name in ("saelens", "sparsify", "dictionary_learning", "openai"):
            if FORMATS[name].detect(path):
                return name
        hooks = sparsify.hookpoints(path)
        if hooks:
            raise SAEFormatError(
                f"{path} holds SAEs for {len(hooks)} hookpoints; say which one",
                hint="load e.g. "
                + ", ".join(str(path / h) for h in hooks[:4])
                + (" ..." if len(hooks) > 4 else ""),
            )
    elif path.is_file() and openai.detect(path):
        return "openai"
    raise SAEFormatError(
        f"{path}: not a recognised SAE",
        hint="expected cfg.json + sae_weights.safetensors (SAELens), cfg.json + sae.safetensors "
        "(sparsify), config.json + ae.pt (dictionary_learning) or an openai .pt state dict",
    )


def load_sae(
    path_or_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    hook_name: str | None = None,
) -> SAE:
    """Load an SAE in any supported format; every tensor shape is checked against its config.

    ``path_or_dir`` may be a bundled SAE name. ``device`` defaults to CPU (not the device
    recorded in the config); ``dtype`` defaults to the stored one. ``hook_name`` overrides or
    supplies the hook (openai state dicts do not record it). The result is in eval mode with
    ``requires_grad`` off, and carries ``sae.source_path``, ``sae.source_format`` and
    ``sae.weights_file``.
    """
    path = resolve_sae_path(path_or_dir)
    hooks = (
        sparsify.hookpoints(path)
        if path.is_dir() and not any(FORMATS[f].detect(path) for f in FORMATS)
        else []
    )
    if len(hooks) == 1:  # a sparsify checkpoint with a single hookpoint: no need to ask
        path = path / hooks[0]
    fmt = detect_format(path)
    cfg, tensors, weights = FORMATS[fmt].read(path)
    if hook_name is not None:
        cfg.hook_name = hook_name
    sae = build_sae(cfg, tensors, weights)
    target_dtype = parse_dtype(dtype) if dtype is not None else sae.dtype
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    sae = sae.to(device=target_device, dtype=target_dtype)
    sae.cfg.dtype = str(target_dtype).removeprefix("torch.")
    sae.cfg.device = str(target_device)
    sae.requires_grad_(False).eval()
    sae.source_path, sae.source_format, sae.weights_file = path, fmt, weights
    return sae


def _folded(sae: SAE) -> SAE:
    """A copy of ``sae`` with an ``expected_average_only_in`` factor folded into the weights.

    ``W_enc * s``, ``W_dec / s``, ``b_dec / s``: pre-activations (and so thresholds and gates)
    are unchanged and the reconstruction is the same in the model's space. Not done for topk
    with ``rescale_acts_by_decoder_norm``, whose feature values would change by ``1/s``.
    """
    from sae.registry import get_sae_class

    c = sae.cfg
    if c.normalize_activations != "expected_average_only_in" or c.rescale_acts_by_decoder_norm:
        return sae
    s = float(c.norm_scaling_factor or 1.0)
    cfg = type(c).from_dict(
        {**c.to_dict(), "normalize_activations": "none", "norm_scaling_factor": None}
    )
    out = get_sae_class(cfg.architecture)(cfg).to(device=sae.device, dtype=sae.dtype)
    with torch.no_grad():
        out.load_state_dict(sae.state_dict())
        out.W_enc.mul_(s)
        out.W_dec.div_(s)
        out.b_dec.div_(s)
    return out


def save_sae(sae: SAE, directory: str | Path) -> Path:
    """Write ``sae`` as a SAELens v6 folder (``cfg.json`` + ``sae_weights.safetensors``).

    ``cfg.json``'s ``metadata`` holds ``hook_name``, ``model_name`` and everything in
    ``sae.cfg.metadata`` (e.g. training metrics under ``metadata["eval"]``, see
    :mod:`sae.preflight`). Returns the folder.
    """
    path = Path(directory)
    saelens.write(_folded(sae), path)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sae_sha256(sae_or_path: SAE | str | Path) -> str:
    """The sha256 of an SAE's weights file, which feature catalogs pin.

    For a path (or bundled name) it hashes the weights file on disk. For a loaded SAE it hashes
    the file it was loaded from; for an SAE built in memory, the bytes ``save_sae`` would write.
    """
    if isinstance(sae_or_path, SAE):
        file = getattr(sae_or_path, "weights_file", None)
        if file is not None and Path(file).is_file():
            return sha256_file(Path(file))
        from safetensors.torch import save

        params = _folded(sae_or_path).named_parameters()
        tensors = {n: p.detach().contiguous().cpu() for n, p in params}
        return hashlib.sha256(save(tensors)).hexdigest()
    path = resolve_sae_path(sae_or_path)
    fmt = detect_format(path)
    if fmt == "openai":
        file = openai.weights_file(path)
        assert file is not None
        return sha256_file(file)
    return sha256_file(path / FORMATS[fmt].WEIGHTS_FILE)


__all__ = [
    "FORMATS",
    "bundled_names",
    "detect_format",
    "load_sae",
    "resolve_sae_path",
    "sae_sha256",
    "save_sae",
]
