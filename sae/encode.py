"""Encoding for monitoring: dense, sparse top-k, and a compiled subset encoder.

The runtime watches K features out of tens of thousands. :class:`SubsetEncoder` is compiled
once from an SAE and the feature list: it slices ``W_enc`` columns, biases and thresholds into
contiguous tensors in the model's dtype and device, so a call costs a ``(B·T, d_in) × (d_in, K)``
product instead of ``× (d_in, d_sae)``.

Exactness. For ``standard``, ``jumprelu`` and ``gated`` a feature's value depends only on its own
column, so the subset values equal the dense encode's selected columns. The subset runs the same
ops in the same order as the dense path (normalise, subtract ``b_dec``, matmul, add bias,
activation). CPU GEMM kernels use a different reduction order for narrow outputs (fewer than 16
columns, or a width that is not a multiple of 4), so the compiled matrix is zero-padded to a
multiple of 16 columns. With that, fp32 values are bit-identical on CPU whenever ``d_sae`` is a
multiple of 16 (every published SAE), as the tests check. On CUDA the GEMM algorithm may differ
by shape and equality holds to rounding.

``topk`` is different: a feature's value depends on its rank among all ``d_sae`` pre-activations.
The subset encoder therefore computes the full pre-activations and the full top-k, then gathers
the K columns. This is exact, but costs as much as a dense encode (``bench sae`` shows it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch

from sae.architectures.gated import GatedSAE, gated
from sae.architectures.jumprelu import JumpReLUSAE
from sae.architectures.standard import StandardSAE
from sae.architectures.topk import TopKSAE
from sae.base import SAE, normalize_input

PAD_COLUMNS = 16


class TopKFeatures(NamedTuple):
    """The k largest feature activations per token: both ``(..., k)``, values descending."""

    values: torch.Tensor
    indices: torch.Tensor


def dense_encode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """All features: ``(..., d_in)`` → ``(..., d_sae)`` in the SAE's dtype."""
    with torch.no_grad():
        return sae.encode(x)


def topk_encode(sae: SAE, x: torch.Tensor, k: int) -> TopKFeatures:
    """The ``k`` most active features per token: ``(..., d_in)`` → values, indices ``(..., k)``.

    Computed from the dense encode (exact for every architecture); inactive slots hold 0.
    """
    with torch.no_grad():
        top = dense_encode(sae, x).topk(k, dim=-1)
    return TopKFeatures(top.values, top.indices)


def _padded(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last dim of ``t`` to ``width`` (a new contiguous tensor)."""
    out = t.new_zeros((*t.shape[:-1], width))
    out[..., : t.shape[-1]] = t
    return out


class SubsetEncoder:
    """Encode only ``features`` of ``sae``: ``(B, T, d_in)`` → ``(B, T, K)``, compiled once.

    ``dtype``/``device`` default to the SAE's; pass the model's so nothing is cast per call
    (inputs in another dtype are cast, which is a no-op when they match). Values equal the
    dense encode's ``[..., features]`` (see the module docstring for when this is bit-exact).
    """

    def __init__(
        self,
        sae: SAE,
        features: Sequence[int] | torch.Tensor,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        idx = torch.as_tensor(features, dtype=torch.long).flatten().cpu()
        if idx.numel() == 0:
            raise ValueError("SubsetEncoder needs at least one feature")
        if int(idx.min()) < 0 or int(idx.max()) >= sae.cfg.d_sae:
            raise IndexError(
                f"feature indices must be in [0, {sae.cfg.d_sae}), got "
                f"{int(idx.min())}..{int(idx.max())}"
            )
        self.cfg = sae.cfg
        self.dtype = dtype or sae.dtype
        self.device = torch.device(device) if device is not None else sae.device
        self.k = int(idx.numel())
        self.architecture = sae.architecture
        self.indices = idx.to(self.device)  # (K,)
        self._sae: SAE | None = None
        width = -(-self.k // PAD_COLUMNS) * PAD_COLUMNS
        with torch.no_grad():
            get = lambda t: t.detach()[..., idx].to(self.device, self.dtype)  # noqa: E731
            self.b_dec = sae.b_dec.detach().to(self.device, self.dtype)  # (d_in,)
            if isinstance(sae, TopKSAE):  # full top-k, then gather: keep a cast copy
                self._sae = (
                    sae
                    if (sae.dtype, sae.device) == (self.dtype, self.device)
                    else copy.deepcopy(sae).to(self.device, self.dtype)
                )
                return
            if isinstance(sae, GatedSAE):
                w_mag = sae.W_enc.detach() * sae.r_mag.detach().exp()  # (d_in, d_sae) as dense
                w = torch.cat([_padded(get(sae.W_enc), width), _padded(get(w_mag), width)], -1)
                b = torch.cat([_padded(get(sae.b_gate), width), _padded(get(sae.b_mag), width)])
            elif isinstance(sae, (StandardSAE, JumpReLUSAE)):
                w, b = _padded(get(sae.W_enc), width), _padded(get(sae.b_enc), width)
            else:
                raise TypeError(f"no subset encoder for architecture {sae.architecture!r}")
            self.W = w.contiguous()  # (d_in, P) or (d_in, 2P) for gated
            self.b = b.contiguous()  # (P,) or (2P,)
            self.width = width
            self.threshold = get(sae.threshold) if isinstance(sae, JumpReLUSAE) else None  # (K,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in)`` → ``(..., K)`` feature values in ``self.dtype``."""
        # Called on every monitored forward: each tensor op below is one eager dispatch, so
        # none is spent on a no-op (cast to the same dtype, slice of the whole width).
        with torch.no_grad():
            if x.dtype != self.dtype or x.device != self.device:
                x = x.to(self.device, self.dtype)
            if self._sae is not None:
                return self._sae.encode(x)[..., self.indices]  # (..., K) after full top-k
            x_n, _ = normalize_input(x, self.cfg)
            sae_in = x_n - self.b_dec if self.cfg.apply_b_dec_to_input else x_n
            pre = sae_in @ self.W + self.b  # (..., P) or (..., 2P)
            k, p = self.k, self.width
            if self.architecture == "gated":
                return gated(pre[..., :k], pre[..., p : p + k])
            if k < p:
                pre = pre[..., :k]  # (..., K)
            if self.threshold is not None:
                # jumprelu's relu(pre) * (pre > threshold), the bool mask multiplied directly
                # (same values as casting it first; NaN still propagates)
                return torch.relu(pre) * (pre > self.threshold)
            return torch.relu(pre)

    def __repr__(self) -> str:
        return (
            f"SubsetEncoder({self.architecture}, K={self.k}, dtype={self.dtype}, "
            f"device={self.device})"
        )


def outlier_cutoff(sae: SAE) -> float | None:
    """The input norm above which a token is a massive-activation outlier, if the SAE records one.

    Our trainer leaves such tokens (norm > ratio × median, e.g. the first tokens of some rows on
    SmolLM2) out of training and records the cutoff in ``metadata["input_norm_cutoff"]``; an
    SAE's features are meaningless there, so monitoring scores them as all-zero.
    """
    value = sae.cfg.metadata.get("input_norm_cutoff")
    return float(value) if isinstance(value, (int, float)) else None


def zero_outliers(x: torch.Tensor, f: torch.Tensor, cutoff: float | None) -> torch.Tensor:
    """``f (..., K)`` with every token whose input ``x (..., d)`` has norm > ``cutoff`` zeroed."""
    if cutoff is None:
        return f
    return f.masked_fill(x.norm(dim=-1, keepdim=True) > cutoff, 0)  # (..., K)
