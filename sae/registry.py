"""The explicit architecture registry: ``architecture`` string → SAE class, duplicates refused.

Adding an architecture is one module in ``sae/architectures/`` and one ``register`` line below;
tests parametrize over :func:`architectures`, so it is tested by the same line.
"""

from __future__ import annotations

from typing import Any

import torch

from sae.architectures.gated import GatedSAE
from sae.architectures.jumprelu import JumpReLUSAE
from sae.architectures.standard import StandardSAE
from sae.architectures.topk import TopKSAE
from sae.base import SAE, SAEConfig
from sae.errors import SAEFormatError

_REGISTRY: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Register ``cls`` under ``cls.architecture``; a second class for one name is an error."""
    name = cls.architecture
    if not name:
        raise ValueError(f"{cls.__name__} has no architecture name")
    if name in _REGISTRY:
        raise ValueError(
            f"architecture {name!r} is already registered to {_REGISTRY[name].__name__}"
        )
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a registration (for tests that register a throwaway architecture)."""
    _REGISTRY.pop(name, None)


for _cls in (StandardSAE, JumpReLUSAE, TopKSAE, GatedSAE):
    register(_cls)


def architectures() -> list[str]:
    """Every registered architecture name, sorted."""
    return sorted(_REGISTRY)


def get_sae_class(architecture: str) -> type[SAE]:
    """The class for ``architecture``, or :class:`SAEFormatError` listing the known names."""
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise SAEFormatError(
            f"unknown SAE architecture {architecture!r}",
            hint=f"known architectures: {', '.join(architectures())}",
        ) from None


def create_sae(
    cfg: SAEConfig | dict[str, Any] | None = None,
    *,
    init: str = "zeros",
    seed: int | None = None,
    **fields: Any,
) -> SAE:
    """A fresh SAE from a config (or a dict, or keyword fields such as ``d_in=576``).

    ``init="zeros"`` leaves every parameter at 0 for the caller to fill (a trainer);
    ``init="random"`` gives unit-norm random decoder rows, ``W_enc = W_dec.T`` and zero biases
    (thresholds 0, ``r_mag`` 0), seeded by ``seed`` if given.

    Example: ``create_sae(d_in=576, d_sae=9216, architecture="jumprelu", hook_name=...)``.
    """
    if cfg is None:
        cfg = SAEConfig.from_dict(fields)
    elif isinstance(cfg, dict):
        cfg = SAEConfig.from_dict({**cfg, **fields})
    elif fields:
        raise TypeError("pass either a config or keyword fields, not both")
    sae = get_sae_class(cfg.architecture)(cfg)
    if init == "random":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)  # (d_sae, d_in)
        w = w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
    elif init != "zeros":
        raise ValueError(f"init must be 'zeros' or 'random', not {init!r}")
    return sae
