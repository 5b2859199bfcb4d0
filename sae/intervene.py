"""Interventions on SAE features that keep the SAE's error term: ablate, clamp, scale.

A feature edit changes the activation by ``x' = x + Σ_i (new_i − f_i) · d_i`` where ``d_i`` is
feature i's decoder direction (``W_dec[i]``, mapped back through the input normalisation). The
part of ``x`` the SAE does not explain (its reconstruction error) is untouched, and so is every
feature not edited. :class:`FeatureEditor` compiles the K selected decoder rows once.

Bit-exactness: a token whose edits are all no-ops (the feature is already 0 when ablated, or
already at the clamp value, or masked out) is returned *bit-identical*: the result is chosen with
``torch.where`` on "some delta is non-zero" instead of adding a zero vector (which could still
turn ``-0.0`` into ``+0.0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sae.base import SAE, normalize_input


class FeatureEditor:
    """Edits of ``features`` of ``sae`` applied to hidden states ``x (B, T, d_in)``.

    ``f`` arguments are the current values of those features ``(B, T, K)``, as a
    :class:`sae.encode.SubsetEncoder` for the same features returns them (pre-intervention).
    ``mask`` is ``(B, T)`` or ``(B, T, K)`` bool: edit only where true (rows/tokens where a rule
    is active). ``max_acts`` ``(K,)`` are recorded maxima for :meth:`clamp_to_max`.
    """

    def __init__(
        self,
        sae: SAE,
        features: Sequence[int] | torch.Tensor,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_acts: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        idx = torch.as_tensor(features, dtype=torch.long).flatten().cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= sae.cfg.d_sae):
            raise IndexError(f"feature indices must be in [0, {sae.cfg.d_sae})")
        if idx.unique().numel() != idx.numel():
            raise ValueError("duplicate features: each would be edited twice; merge the edits")
        self.cfg = sae.cfg
        self.dtype = dtype or sae.dtype
        self.device = torch.device(device) if device is not None else sae.device
        self.indices = idx.to(self.device)  # (K,)
        with torch.no_grad():
            dirs = sae.decoder_directions().detach()[idx]  # (K, d_in)
            self.directions = dirs.to(self.device, self.dtype).contiguous()
        self.max_acts = (
            None
            if max_acts is None
            else torch.as_tensor(max_acts, dtype=self.dtype, device=self.device).flatten()
        )
        if self.max_acts is not None and self.max_acts.numel() != idx.numel():
            raise ValueError(
                f"max_acts has {self.max_acts.numel()} values for {idx.numel()} features"
            )

    def _out_scale(self, x: torch.Tensor) -> torch.Tensor | float:
        """Normalised-space change → model-space change: ``mul_out`` of the input's NormState."""
        if self.cfg.normalize_activations == "none":
            return 1.0
        return normalize_input(x, self.cfg)[1].mul_out

    def delta(self, x: torch.Tensor, f: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``(B, T, d_in)`` change moving the features from ``f`` to ``new`` (``(B, T, K)``)."""
        diff = (new - f).to(self.dtype)  # (B, T, K)
        return (diff @ self.directions) * self._out_scale(x)  # (B, T, d_in)

    def apply(
        self,
        x: torch.Tensor,
        f: torch.Tensor,
        new: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` with features moved from ``f`` to ``new`` where ``mask``.

        Tokens where nothing changes are returned bit-identical.
        """
        # The monitor calls this on every token where an intervention is active: no op is spent
        # on a no-op cast or on scaling by 1.
        if mask is not None:
            m = mask if mask.dim() == f.dim() else mask.unsqueeze(-1)  # (B, T, K) or (B, T, 1)
            new = torch.where(m, new, f)
        return self.apply_delta(x, _cast(new, self.dtype) - _cast(f, self.dtype))

    def apply_delta(self, x: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        """``x`` with the features moved by ``diff (B, T, K)`` (``new - f``, 0 where nothing
        changes). Tokens whose ``diff`` is all zero are returned bit-identical."""
        diff = _cast(diff, self.dtype)
        changed = (diff != 0).any(dim=-1, keepdim=True)  # (B, T, 1)
        step = diff @ self.directions  # (B, T, d_in)
        if self.cfg.normalize_activations != "none":
            step = step * self._out_scale(x)
        return torch.where(changed, x + _cast(step, x.dtype), x)

    def ablate(
        self, x: torch.Tensor, f: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Set the features to 0."""
        return self.apply(x, f, torch.zeros_like(f), mask)

    def clamp(
        self,
        x: torch.Tensor,
        f: torch.Tensor,
        value: float | torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Set the features to ``value`` (a float or a ``(K,)`` tensor)."""
        target = torch.as_tensor(value, dtype=f.dtype, device=f.device).expand_as(f)
        return self.apply(x, f, target, mask)

    def clamp_to_max(
        self, x: torch.Tensor, f: torch.Tensor, multiple: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Set the features to ``multiple ×`` their recorded maximum activation."""
        if self.max_acts is None:
            raise ValueError("clamp_to_max needs max_acts (recorded maxima) at construction")
        return self.clamp(x, f, self.max_acts.to(f.dtype) * multiple, mask)

    def scale(
        self,
        x: torch.Tensor,
        f: torch.Tensor,
        factor: float | torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Multiply the features by ``factor`` (a float or ``(K,)``)."""
        return self.apply(x, f, f * torch.as_tensor(factor, dtype=f.dtype, device=f.device), mask)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, without dispatching a cast when it already is."""
    return t if t.dtype == dtype else t.to(dtype)
