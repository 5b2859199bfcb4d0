"""Bind a compiled policy to a model: load its SAEs, group them by hook point, compile encoders.

A :class:`PolicyBinding` is built once per policy snapshot (cached by the guarded model) and
holds, per hook point, the SAEs read there with a :class:`~sae.encode.SubsetEncoder` for exactly
the policy's features (``CompiledSAE.indices``, in the model's dtype and on the hook module's
device) and, when the policy can ablate or clamp one of them, a
:class:`~sae.intervene.FeatureEditor` for the same features.

Several SAEs on several layers are allowed. The evaluator needs every SAE's values for a token,
so a step is evaluated at the last hook point of the forward; interventions are therefore only
possible on features of SAEs at that last hook point (an earlier layer has already run). A
policy that ablates/clamps a feature of an earlier hook point is refused at attach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from monitor.policy.compiled import ACTIONS_ORDER, CompiledPolicy, CompiledSAE
from monitor.policy.evaluator import Evaluator
from monitor.runtime.edits import EditTables
from sae.base import SAE
from sae.encode import SubsetEncoder, outlier_cutoff, zero_outliers
from sae.errors import HookError
from sae.hooks import HookPoint, resolve_hook
from sae.intervene import FeatureEditor

_KIND_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}


@dataclass
class BoundSAE:
    """One SAE of the policy, ready for the per-token path."""

    spec: CompiledSAE
    sae: SAE
    encoder: SubsetEncoder  # (B, T, d_in) -> (B, T, K_sae)
    editor: FeatureEditor | None  # same features; None when the policy never edits them
    cols: slice  # where its values go in acts (B, T, K)
    norm_cutoff: float | None = None  # inputs above this norm are outliers: features 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d_in) -> (B, T, K_sae)``: the subset encode, outlier tokens zeroed."""
        return zero_outliers(x, self.encoder(x), self.norm_cutoff)

    def read(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(B, T, d_in) -> (B, T, 1)`` bool: tokens whose features are read (not outliers);
        None when the SAE records no outlier cutoff (every token is read)."""
        if self.norm_cutoff is None:
            return None
        return x.norm(dim=-1, keepdim=True) <= self.norm_cutoff  # (B, T, 1)


@dataclass
class HookGroup:
    """The SAEs read at one hook point (evaluated together in one hook call)."""

    index: int
    point: HookPoint
    saes: list[BoundSAE]

    @property
    def edits(self) -> bool:
        return any(b.editor is not None for b in self.saes)


def _order_key(point: HookPoint) -> tuple[float, int]:
    kind = point.name.rsplit("hook_", 1)[-1] if "hook_" in point.name else "resid_post"
    layer = float("inf") if point.layer_index is None else float(point.layer_index)
    return layer, _KIND_ORDER.get(kind, 3)


def _module_device(module: nn.Module, model: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return next(model.parameters()).device


def edited_columns(policy: CompiledPolicy) -> set[int]:
    """Columns of acts that some ablate/clamp action of the policy may change."""
    t = policy.tensors
    return {int(c) for c in torch.cat([t.ablate_col, t.clamp_col]).tolist()}


def has_negative_clamp(policy: CompiledPolicy) -> bool:
    """Whether an enforce rule clamps below 0 (a negative cap): such an edit changes a feature
    that reads 0, so it must skip the tokens whose features are not read at all (a row's
    ignored first token, massive-activation outliers), which ablate and a cap ≥ 0 leave alone
    by themselves (their value reads 0 and stays 0)."""
    t = policy.tensors
    return bool((t.clamp_val[t.enforce[t.clamp_rule]] < 0).any())


class PolicyBinding:
    """A compiled policy bound to a model and its SAEs; immutable after construction."""

    def __init__(
        self,
        model: nn.Module,
        policy: CompiledPolicy,
        sae_loader: Any,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.policy = policy
        self.evaluator = evaluator or Evaluator(policy)
        self.edited = edited_columns(policy)
        self.negative_clamp = has_negative_clamp(policy)  # edits then skip tokens not read
        dtype = next(model.parameters()).dtype
        groups: dict[str, list[BoundSAE]] = {}
        points: dict[str, HookPoint] = {}
        for spec in policy.saes:
            if not spec.indices:
                continue
            sae: SAE = sae_loader(spec)
            hook = spec.hook or sae.cfg.hook_name
            if not hook:
                raise HookError(
                    f"SAE {spec.name!r} names no hook point",
                    hint="set `hook:` for it in the policy's `saes:` section",
                )
            point = points.get(hook) or resolve_hook(model, hook)
            points[hook] = point
            device = _module_device(point.module, model)
            cols = spec.columns
            edits = any(c in self.edited for c in range(cols.start, cols.stop))
            bound = BoundSAE(
                spec=spec,
                sae=sae,
                encoder=SubsetEncoder(sae, list(spec.indices), dtype=dtype, device=device),
                editor=(
                    FeatureEditor(sae, list(spec.indices), dtype=dtype, device=device)
                    if edits
                    else None
                ),
                cols=cols,
                norm_cutoff=outlier_cutoff(sae),
            )
            groups.setdefault(hook, []).append(bound)
        ordered = sorted(groups, key=lambda h: _order_key(points[h]))
        self.groups = [HookGroup(i, points[h], groups[h]) for i, h in enumerate(ordered)]
        self._check_edits()
        self.dtype = dtype
        every = [b for g in self.groups for b in g.saes]
        # one SAE whose values are all of acts: its encode output is acts, no gather
        self.single = len(every) == 1 and every[0].cols == slice(0, policy.K)
        self._roles = _rule_roles(policy)
        self._on: dict[tuple[str, torch.device], Any] = {}

    def _check_edits(self) -> None:
        if len(self.groups) < 2:
            return
        unordered = any(g.point.layer_index is None for g in self.groups)
        for g in self.groups[:-1] if not unordered else self.groups:
            if g.edits:
                raise HookError(
                    f"the policy ablates/clamps features of SAE(s) at {g.point.name!r}, but "
                    "other SAEs are read later in the forward pass",
                    hint="a step is evaluated at the last hook point; put interventions on the "
                    "SAE read last (or use one hook point)",
                )

    def _cached(self, name: str, device: torch.device, make: Any) -> Any:
        key = (name, device)
        if key not in self._on:
            self._on[key] = make()
        return self._on[key]

    def rule_roles(self, device: torch.device) -> torch.Tensor | None:
        """(R, 2) float on ``device``: column 0 is 1 for enforce rules that stop or replace,
        column 1 for enforce rules that ablate or clamp; None when no rule does either."""
        roles = self._roles
        return self._cached("roles", device, lambda: None if roles is None else roles.to(device))

    def edit_tables(self, device: torch.device) -> EditTables:
        """The enforce rules' ablate/clamp entries on ``device`` (:mod:`.edits`)."""
        return self._cached("edits", device, lambda: EditTables.of(self.policy, device))

    def export_index(self, device: torch.device) -> torch.Tensor:
        """(E,) long on ``device``: the columns of acts with ``export: true``."""
        cols = list(self.policy.export_columns)
        return self._cached("export", device, lambda: torch.tensor(cols, device=device))

    @property
    def hook_names(self) -> list[str]:
        return [g.point.name for g in self.groups]

    @property
    def intervenes(self) -> bool:
        return any(g.edits for g in self.groups)


def _rule_roles(policy: CompiledPolicy) -> torch.Tensor | None:
    t = policy.tensors
    col = {k: i for i, k in enumerate(ACTIONS_ORDER)}
    ha = t.has_action  # (R, 6)
    halts = t.enforce & (ha[:, col["stop"]] | ha[:, col["replace"]])  # (R,)
    edits = t.enforce & (ha[:, col["ablate"]] | ha[:, col["clamp"]])  # (R,)
    if not bool(halts.any() | edits.any()):
        return None
    return torch.stack([halts, edits], dim=1).float()  # (R, 2)


def sae_loader(overrides: Mapping[str, SAE] | None, cache: dict[str, SAE]) -> Any:
    """``CompiledSAE -> SAE``: an override by policy SAE name, else load once from disk."""
    from sae.loading import load_sae

    def load(spec: CompiledSAE) -> SAE:
        if overrides and spec.name in overrides:
            return overrides[spec.name]
        where = spec.path or spec.bundled
        if where is None:
            raise HookError(f"SAE {spec.name!r} has neither a path nor a bundled name")
        if where not in cache:
            cache[where] = load_sae(where)
        return cache[where]

    return load
