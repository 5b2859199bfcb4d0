"""The mechanics of ``eval intervention``: which features a rule edits, the edit itself (as
the runtime does it), and teacher-forced / generated passes with the edit on.

:class:`Editing` encodes the target features exactly as the monitor does (subset encode,
massive-activation outlier tokens zeroed) and applies :class:`sae.intervene.FeatureEditor`'s
ablate or clamp, which keeps the SAE's error term. :func:`forced_policy` builds the one-rule
policy through which ``ablate`` runs in the real runtime; :func:`residue_sources` explains what
an edit leaves behind when the edited activation is encoded again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from monitor.policy.compiled import CompiledPolicy, CompiledSAE
from sae.base import SAE
from sae.encode import SubsetEncoder, outlier_cutoff, zero_outliers
from sae.errors import FeatureguardError
from sae.hooks import HookPoint
from sae.intervene import FeatureEditor

MODES = ("ablate", "clamp")


@dataclass(frozen=True)
class Target:
    """The features a rule ablates or clamps (all on one SAE and hook)."""

    rule: str
    sae: CompiledSAE
    hook: str | None  # as the policy declares it (else the SAE's own hook_name)
    names: tuple[str, ...]
    indices: tuple[int, ...]


def rule_target(cp: CompiledPolicy, rule_id: str) -> Target:
    """The features ``rule_id``'s ablate/clamp actions name; error if it has none."""
    try:
        rule = cp.rule(rule_id)
    except KeyError:
        raise FeatureguardError(
            f"policy {cp.name!r} has no enabled rule {rule_id!r}",
            hint=f"rules: {', '.join(cp.rule_ids)}",
        ) from None
    t = cp.tensors
    owner = torch.cat([t.ablate_rule, t.clamp_rule])  # (Na + Nc,) rule of each edited column
    edited = torch.cat([t.ablate_col, t.clamp_col])  # (Na + Nc,)
    cols = sorted({int(c) for c in edited[owner == rule.index].tolist()})
    if not cols:
        raise FeatureguardError(f"rule {rule_id!r} neither ablates nor clamps any feature")
    specs = {s.name: s for s in cp.saes for c in cols if c in range(s.offset, s.columns.stop)}
    if len(specs) != 1:
        raise FeatureguardError(f"rule {rule_id!r} edits features of {len(specs)} SAEs; need 1")
    spec = next(iter(specs.values()))
    return Target(
        rule=rule_id,
        sae=spec,
        hook=spec.hook,
        names=tuple(cp.feature_names[c] for c in cols),
        indices=tuple(spec.indices[c - spec.offset] for c in cols),
    )


class Editing:
    """Encode the target features as the monitor does and apply the edit where ``mask``."""

    def __init__(self, sae: SAE, target: Target, mode: str, value: float | None, model: Any):
        if mode not in MODES or (mode == "clamp") != (value is not None):
            raise FeatureguardError("use --mode ablate, or --mode clamp with --value V")
        p = next(model.parameters())
        idx = list(target.indices)
        self.mode, self.value, self.indices = mode, value, idx
        self.encoder = SubsetEncoder(sae, idx, dtype=p.dtype, device=p.device)
        self.editor = FeatureEditor(sae, idx, dtype=p.dtype, device=p.device)
        self.cutoff = outlier_cutoff(sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d) -> (B, T, K)``: the runtime's encode (outlier tokens all zero)."""
        return zero_outliers(x, self.encoder(x), self.cutoff)

    def edit(self, x: torch.Tensor, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, T, d)`` edited where ``mask (B, T)``, never on outlier tokens."""
        if self.cutoff is not None:
            mask = mask & (x.norm(dim=-1) <= self.cutoff)  # (B, T)
        if self.mode == "ablate":
            return self.editor.ablate(x, f, mask)
        return self.editor.clamp(x, f, float(self.value or 0.0), mask)


class Pass(NamedTuple):
    """One teacher-forced forward: the target features before and after the edit, the logits,
    and the hooked activation before and after the edit."""

    pre: torch.Tensor  # (B, T, K) as the monitor reads them (before the edit)
    post: torch.Tensor  # (B, T, K) the edited activation encoded again (= pre without edit)
    logits: torch.Tensor  # (B, T, V)
    x: torch.Tensor  # (B, T, d)
    x_edited: torch.Tensor  # (B, T, d)


@torch.no_grad()
def forward_edited(
    model: Any,
    hp: HookPoint,
    editing: Editing,
    ids: torch.Tensor,
    mask: torch.Tensor,
    edit: torch.Tensor | None,
) -> Pass:
    """One teacher-forced forward of ``ids, mask (B, T)``, editing where ``edit (B, T)``."""
    seen: dict[str, torch.Tensor] = {}

    def hook(x: torch.Tensor) -> torch.Tensor | None:
        seen["pre"] = seen["post"] = f = editing.encode(x)  # (B, T, K)
        seen["x"] = seen["x2"] = x
        if edit is None:
            return None
        seen["x2"] = x2 = editing.edit(x, f, edit.to(x.device))
        seen["post"] = editing.encode(x2)
        return x2

    handle = hp.register(hook)
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        handle.remove()
    cpu = {k: v.float().cpu() for k, v in seen.items()}
    return Pass(cpu["pre"], cpu["post"], logits.float().cpu(), cpu["x"], cpu["x2"])


@torch.no_grad()
def residue_sources(
    sae: SAE, indices: Sequence[int], x: torch.Tensor, x_edited: torch.Tensor, post: torch.Tensor
) -> torch.Tensor | None:
    """Where what is left after the edit comes from: ``(K, 4)`` sums over the tokens where each
    target feature is still active of its re-encoded pre-activation split into the target
    features' own directions after the edit, every other feature, the SAE's error term and the
    encoder bias (they add up to Σ ``post``). ``x, x_edited (N, d)``, ``post (N, K)``.

    With ``x − b_dec = Σ_j f_j d_j + e``: ``pre_i = Σ_{j∈K} f_j d_j·w_i + Σ_{j∉K} f_j d_j·w_i +
    e·w_i + b_i``, and the edit adds ``Δ·w_i`` (for ablate it cancels the first sum exactly).
    Only for linear encoders (standard, jumprelu) without input normalisation; else None.
    """
    if sae.architecture not in ("standard", "jumprelu") or sae.cfg.normalize_activations != "none":
        return None
    x = x.to(sae.dtype)
    idx = torch.as_tensor(list(indices))
    f = sae.encode(x)  # (N, S) dense, before the edit
    w = sae.W_enc[:, idx]  # (d, K)
    reads = sae.W_dec @ w  # (S, K): d_j · w_i
    own = f[:, idx] @ reads[idx] + (x_edited.to(sae.dtype) - x) @ w  # (N, K)
    other = f @ reads - f[:, idx] @ reads[idx]  # (N, K)
    error = (x - sae.decode(f)) @ w  # (N, K)
    bias = sae.b_enc[idx] + (0 if sae.cfg.apply_b_dec_to_input else sae.b_dec @ w)  # (K,)
    alive = (post > 0).to(sae.dtype)  # (N, K)
    parts = [own, other, error, bias.expand_as(own)]
    return torch.stack([(p * alive).sum(0) for p in parts], -1).float().cpu()  # (K, 4)


def prompt_ids(tokenizer: Any, prompt: str, raw: bool) -> list[int]:
    """The user message as the model receives it (chat template, generation prompt)."""
    if raw or tokenizer.chat_template is None:
        return list(tokenizer(prompt)["input_ids"])
    msgs = [{"role": "user", "content": prompt}]
    return list(
        tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )


@torch.no_grad()
def greedy(model: Any, tok: Any, ids: list[int], n: int, gen: Any = None) -> list[int]:
    """Up to ``n`` greedy new token ids after ``ids`` (batch 1), by ``gen.generate`` (e.g. a
    guarded model) or ``model.generate``."""
    dev = next(model.parameters()).device
    x = torch.tensor([ids], device=dev)  # (1, L0)
    out = (gen or model).generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    return [int(t) for t in out[0, len(ids) :].tolist()]


def generate_hooked(
    model: Any, tok: Any, hp: HookPoint, editing: Editing, ids: list[int], n: int
) -> list[int]:
    """Greedy completion with the edit on every column from ``len(ids)`` on (KV cache: the
    prefill holds the prompt, then one column per step)."""
    seen = [0]

    def hook(x: torch.Tensor) -> torch.Tensor:
        cols = seen[0] + torch.arange(x.shape[1], device=x.device)  # (T,) absolute columns
        seen[0] += x.shape[1]
        return editing.edit(x, editing.encode(x), (cols >= len(ids)).expand(x.shape[:2]))

    handle = hp.register(hook)
    try:
        return greedy(model, tok, ids, n)
    finally:
        handle.remove()


def forced_policy(cp: CompiledPolicy, target: Target, hook: str) -> CompiledPolicy:
    """A one-rule policy that ablates the target features at every completion token."""
    from monitor.policy.loader import load_policy_text

    s = target.sae
    where = f"bundled: {s.bundled}" if s.bundled else f"path: {json.dumps(s.path)}"
    feats = "".join(f"  t{i}: {{index: {ix}}}\n" for i, ix in enumerate(target.indices))
    names = ", ".join(f"t{i}" for i in range(len(target.indices)))
    text = (
        f"version: 1\npolicy: {{name: forced-{target.rule}, revision: eval}}\n"
        f"saes:\n  {s.name}: {{{where}, hook: {hook}}}\nfeatures:\n{feats}"
        "rules:\n  - id: forced\n    severity: high\n    scope: completion\n"
        "    condition: {not: {feature: t0, above: 1.0e+30}}\n"
        f"    actions: [{{type: ablate, features: [{names}]}}]\n"
    )
    return load_policy_text(text, "<forced policy>", base_dir=Path(cp.file).parent)
