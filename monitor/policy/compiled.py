"""The compiled policy: what the runtime and the evaluator read. Immutable once built.

Shapes: ``K`` features the policy reads (columns of ``acts``), ``R`` enabled rules, ``P`` probes,
``L`` threshold literals, ``X`` rule exceptions. All tensors here live on the CPU; the evaluator
copies them to its device once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from monitor.policy import schema

ACTION_LEVEL: dict[str, int] = {
    "log": 1,
    "alert": 2,
    "ablate": 3,
    "clamp": 3,
    "replace": 4,
    "stop": 5,
}
"""Precedence of actions (CONTRACTS): stop > replace > ablate/clamp > alert > log."""
LEVEL_NAMES = ("none", "log", "alert", "intervene", "replace", "stop")


@dataclass(frozen=True)
class CompiledSAE:
    """One SAE the policy reads. The runtime subset-encodes ``indices`` (in this order) and puts
    them in ``acts[..., offset : offset + len(indices)]``."""

    name: str
    bundled: str | None
    path: str | None  # absolute path when the policy gave a path
    hook: str | None  # declared or read from the SAE's cfg.json
    d_sae: int | None
    sha256: str | None
    indices: tuple[int, ...]
    offset: int

    @property
    def columns(self) -> slice:
        return slice(self.offset, self.offset + len(self.indices))


@dataclass(frozen=True)
class CompiledRule:
    id: str
    index: int  # position in ``CompiledPolicy.rules`` and the R axis of every step tensor
    spec: schema.Rule
    severity_level: int  # 0 info … 4 critical
    features: tuple[str, ...]  # feature names its condition and exceptions read (not via probes)
    probes: tuple[str, ...] = ()  # probe names its condition and exceptions read

    @property
    def severity(self) -> str:
        return self.spec.severity

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def action_kinds(self) -> tuple[str, ...]:
        return tuple(a.type for a in self.spec.actions)

    @property
    def replace_message(self) -> str | None:
        msgs = [a.message for a in self.spec.actions if isinstance(a, schema.ReplaceAction)]
        return msgs[0] if msgs else None


@dataclass(frozen=True)
class CompiledProbe:
    name: str
    index: int  # column of the (K, P) probe matrix
    sae: str
    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    pooling: str
    link: str
    threshold: float
    description: str
    half_life: float | None = None  # tokens, for pooling 'ema'


@dataclass(frozen=True)
class ContextException:
    """Exception ``index`` (X axis) of rule ``rule``: label → allowed values (globs).
    ``None`` means it does not depend on the request context."""

    index: int
    rule: int
    context: Mapping[str, tuple[str, ...]] | None


@dataclass(frozen=True)
class PolicyTensors:
    """The condition circuit and the rule tables (CPU).

    Node values ``V`` (B, T, N) are 0/1: column 0 is constant false, 1 constant true, then the
    ``L`` literals ``vals[..., lit_src] > lit_thr`` where ``vals = cat(acts, probe_scores)``, then
    the gates of each level: ``Σ_c w[g, c] · V[..., idx[g, c]] ≥ theta[g]`` (any, all, count and
    not are all threshold gates).
    """

    lit_src: torch.Tensor  # (L,) long: column of cat(acts (K), probe scores (P))
    lit_thr: torch.Tensor  # (L,) float
    levels: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]  # (idx (G,C), w, theta)
    rule_cond: torch.Tensor  # (R,) long: node of each rule's condition
    exc_node: torch.Tensor  # (X,) long: node of each exception's `when` (1 = always)
    exc_rule: torch.Tensor  # (X,) long: the rule it belongs to
    at_least: torch.Tensor  # (R,) long window: at least N ...
    of_last: torch.Tensor  # (R,) long ... of the last M tokens (1, 1 = no window)
    for_: torch.Tensor  # (R,) long: sustained for N tokens (1 = immediately)
    cooldown: torch.Tensor  # (R,) long: tokens after a match before the next match
    hold: torch.Tensor  # (R,) long: tokens the rule stays active after its condition ends
    in_prompt: torch.Tensor  # (R,) bool: scope includes prompt tokens
    in_completion: torch.Tensor  # (R,) bool
    enforce: torch.Tensor  # (R,) bool: mode enforce (shadow rules never act)
    severity: torch.Tensor  # (R,) long 0..4
    has_action: torch.Tensor  # (R, 6) bool over ACTIONS_ORDER
    ablate_rule: torch.Tensor  # (Na,) long
    ablate_col: torch.Tensor  # (Na,) long
    clamp_rule: torch.Tensor  # (Nc,) long
    clamp_col: torch.Tensor  # (Nc,) long
    clamp_val: torch.Tensor  # (Nc,) float: cap in absolute units
    probe_w: torch.Tensor  # (K, P) float
    probe_b: torch.Tensor  # (P,) float
    probe_pooled: torch.Tensor  # (P,) bool: pooling 'mean' or 'ema' (over the row's tokens)
    probe_log_decay: torch.Tensor  # (P,) float64: ln α per valid token (0 unless 'ema')
    max_window: int  # longest `of_last` (1 when no rule uses a window)

    def to(self, device: torch.device | str) -> PolicyTensors:
        moved: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
            elif name == "levels":
                moved[name] = tuple(tuple(t.to(device) for t in lvl) for lvl in value)
            else:
                moved[name] = value
        return PolicyTensors(**moved)


ACTIONS_ORDER = ("log", "alert", "ablate", "clamp", "replace", "stop")


@dataclass(frozen=True)
class CompiledPolicy:
    name: str
    revision: str | None
    file: str
    sha256: str  # of the policy file and its imported catalogs
    on_error: str  # fail_open | fail_closed (resolved default)
    saes: tuple[CompiledSAE, ...]
    feature_names: tuple[str, ...]  # (K,) a name for each column of acts
    feature_columns: Mapping[str, int]  # every feature name the policy defines that it reads
    feature_scale: tuple[float | None, ...]  # (K,)
    export_columns: tuple[int, ...]  # columns with `export: true` (Prometheus histograms)
    rules: tuple[CompiledRule, ...]  # (R,) enabled rules only, in file order
    disabled_rules: tuple[str, ...]
    probes: tuple[CompiledProbe, ...]  # (P,)
    exceptions: tuple[ContextException, ...]  # (X,)
    tensors: PolicyTensors
    spec: schema.PolicySpec
    warnings: tuple[Any, ...] = field(default=())
    input_only: tuple[bool, ...] = field(default=())  # (K,) column read only by file probes
    data_files: tuple[str, ...] = field(default=())  # probe weights files (reload watches them)

    @functools.cached_property
    def probe_input_names(self) -> tuple[dict[int, str], ...]:
        """Per probe (P axis): column → the probe's own name for that input (computed once)."""
        return tuple({self.feature_columns[n]: n for n in p.features} for p in self.probes)

    @property
    def reported_features(self) -> tuple[str, ...]:
        """Column names worth listing to people (scan output, explain): every column but the
        unnamed inputs of weights-file probes (``probe[index]``)."""
        if not self.input_only:
            return self.feature_names
        return tuple(n for n, io in zip(self.feature_names, self.input_only, strict=True) if not io)

    @property
    def K(self) -> int:
        return len(self.feature_names)

    @property
    def R(self) -> int:
        return len(self.rules)

    @property
    def P(self) -> int:
        return len(self.probes)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    @property
    def audit(self) -> schema.AuditSpec:
        return self.spec.audit

    @property
    def channels(self) -> Mapping[str, schema.ChannelSpec]:
        return self.spec.channels

    def rule(self, rule_id: str) -> CompiledRule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def probe(self, name: str) -> CompiledProbe:
        for p in self.probes:
            if p.name == name:
                return p
        raise KeyError(name)
