"""Preflight: check that an SAE is attached where it was trained, before trusting its features.

``check_attachment`` runs a few hundred tokens through the model, reads the hook, and measures:

- ``l0``: mean number of active features per token;
- ``explained_variance``: ``1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` over the scored tokens;
- ``ce_loss_recovered``: ``(CE_zero − CE_sae) / (CE_zero − CE_clean)``, where CE_sae splices the
  SAE reconstruction into the forward pass at the hook and CE_zero splices zeros.

Position 0 of every sequence is a massive-activation outlier on the bundled model (REFERENCE.md):
by default it is neither scored nor spliced. Pads are never scored.

Declared metrics are read from ``sae.cfg.metadata["eval"]`` (the trainer writes them, same
definitions, position 0 excluded): ``{"l0": float, "explained_variance": float,
"ce_loss_recovered": float}``, optionally ``dead_fraction``, ``mse``, ``n_tokens``. A mismatch
beyond :data:`TOLERANCES` (the symptom of a wrong layer or hook) raises :class:`PreflightError`
(``strict=True``) or warns. An SAE that declares nothing is still checked for sanity: explained
variance must exceed ``0.5`` (an SAE on its own hook explains most of the variance, typically
0.7–0.95; on another layer or tensor it drops far below, often under 0) and L0 must exceed
``0.5`` (all-zero features, the symptom of reading the wrong tensor).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sae.base import SAE
from sae.encode import outlier_cutoff
from sae.errors import PreflightError
from sae.hooks import HookPoint, resolve_hook

EVAL_KEY = "eval"
METRIC_KEYS = ("l0", "explained_variance", "ce_loss_recovered")
TOLERANCES = {
    "l0_ratio": 2.0,  # measured L0 within [declared / 2 − 1, declared × 2 + 1]
    "explained_variance": 0.2,  # measured ≥ declared − 0.2
    "ce_loss_recovered": 0.25,  # measured ≥ declared − 0.25
}
SANITY_MIN_EXPLAINED_VARIANCE = 0.5
SANITY_MIN_L0 = 0.5
MIN_CE_GAP = 0.05  # nats; below it the model ignores the hook (CE_zero ≈ CE_clean): CE not checked


def declared_metrics(sae: SAE) -> dict[str, float]:
    """The metrics ``sae`` declares in ``metadata["eval"]`` (only the known, numeric ones)."""
    raw = sae.cfg.metadata.get(EVAL_KEY) or {}
    return {k: float(raw[k]) for k in METRIC_KEYS if isinstance(raw.get(k), (int, float))}


@dataclass
class PreflightReport:
    """What preflight measured, what the SAE declared, and any problems found."""

    hook_name: str
    n_tokens: int
    l0: float
    explained_variance: float
    ce_clean: float
    ce_with_sae: float
    ce_zero_ablated: float
    ce_loss_recovered: float | None
    declared: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        ce = "n/a" if self.ce_loss_recovered is None else f"{self.ce_loss_recovered:.3f}"
        lines = [
            f"preflight at {self.hook_name} on {self.n_tokens} tokens: L0 {self.l0:.1f}, "
            f"explained variance {self.explained_variance:.3f}, CE loss recovered {ce} "
            f"(CE clean {self.ce_clean:.3f}, with SAE {self.ce_with_sae:.3f}, "
            f"zero-ablated {self.ce_zero_ablated:.3f})"
        ]
        if self.declared:
            lines.append("declared: " + ", ".join(f"{k} {v:.3f}" for k, v in self.declared.items()))
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _compare(rep: PreflightReport, tol: dict[str, float]) -> list[str]:
    d, out = rep.declared, []
    if not (math.isfinite(rep.l0) and math.isfinite(rep.explained_variance)):
        # NaN compares false with every bound: never let it pass as "fits"
        out.append(
            f"non-finite metrics (L0 {rep.l0}, explained variance "
            f"{rep.explained_variance}): the SAE or the activations overflow"
        )
    if "l0" in d:
        lo, hi = d["l0"] / tol["l0_ratio"] - 1, d["l0"] * tol["l0_ratio"] + 1
        if not lo <= rep.l0 <= hi:
            out.append(
                f"L0 {rep.l0:.1f} is far from the declared {d['l0']:.1f} "
                f"(allowed {max(lo, 0):.1f}..{hi:.1f})"
            )
    if "explained_variance" in d:
        floor = d["explained_variance"] - tol["explained_variance"]
        if rep.explained_variance < floor:
            out.append(
                f"explained variance {rep.explained_variance:.3f} is below the declared "
                f"{d['explained_variance']:.3f} − {tol['explained_variance']}"
            )
    if "ce_loss_recovered" in d and rep.ce_loss_recovered is not None:
        floor = d["ce_loss_recovered"] - tol["ce_loss_recovered"]
        if rep.ce_loss_recovered < floor:
            out.append(
                f"CE loss recovered {rep.ce_loss_recovered:.3f} is below the declared "
                f"{d['ce_loss_recovered']:.3f} − {tol['ce_loss_recovered']}"
            )
    if not d:
        if rep.explained_variance < SANITY_MIN_EXPLAINED_VARIANCE:
            out.append(
                f"explained variance {rep.explained_variance:.3f} < "
                f"{SANITY_MIN_EXPLAINED_VARIANCE} (the SAE declares no metrics)"
            )
        if rep.l0 < SANITY_MIN_L0:
            out.append(f"L0 {rep.l0:.2f} < {SANITY_MIN_L0}: features are (almost) all zero")
    return out


def _ce(logits: torch.Tensor, ids: torch.Tensor, score: torch.Tensor) -> float:
    """Mean next-token CE of predictions made at positions where ``score (B, T−1)`` is true."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T−1, V)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T−1)
    return float(nll[score].mean())


@torch.no_grad()
def measure(
    model: nn.Module,
    sae: SAE,
    hp: HookPoint,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    skip_first_position: bool = True,
) -> dict[str, Any]:
    """Run the three forward passes on ``ids, mask (B, T)``; return the raw metrics."""
    pos = mask.long().cumsum(-1) - 1  # (B, T) 0 at each row's first real token
    scored = mask.bool() & (pos >= (1 if skip_first_position else 0))  # (B, T)
    captured: list[torch.Tensor] = []
    mode = {"value": "clean"}

    def hook(t: torch.Tensor) -> torch.Tensor | None:
        if mode["value"] == "clean":
            captured.append(t.detach())
            return None
        new = torch.zeros_like(t) if mode["value"] == "zero" else sae(t).to(t.dtype)
        return torch.where(scored[..., None], new, t)  # never splice pos 0 or pads

    handle = hp.register(hook)
    try:
        logits = {}
        for m in ("clean", "sae", "zero"):
            mode["value"] = m
            logits[m] = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if m == "clean" and captured[0].shape[-1] != sae.cfg.d_in:
                raise PreflightError(
                    f"hook {hp.name!r} gives width {captured[0].shape[-1]} but the SAE reads "
                    f"d_in={sae.cfg.d_in}: wrong hook or wrong model"
                )
    finally:
        handle.remove()
    x = captured[0]  # (B, T, d)
    xs = x[scored].to(sae.dtype)  # (N, d)
    cutoff = outlier_cutoff(sae)  # massive-activation outliers are not scored (as in training)
    n_scored = int(xs.shape[0])
    if cutoff is not None:
        xs = xs[xs.norm(dim=-1) < cutoff]
    f = sae.encode(xs)  # (N, d_sae)
    recon = sae(xs).float()  # (N, d); sums in fp32: an fp16 SAE would overflow them
    xs = xs.float()
    total = (xs - xs.mean(0)).pow(2).sum()
    ce_score = scored[:, :-1] & mask[:, 1:].bool()  # predictions at scored positions
    return {
        "n_tokens": int(xs.shape[0]),
        "l0": float((f != 0).float().sum(-1).mean()),
        "explained_variance": float(1 - (xs - recon).pow(2).sum() / total),
        **{f"ce_{m}": _ce(logits[m], ids, ce_score) for m in ("clean", "sae", "zero")},
        # what the metrics were computed from, for callers that aggregate over batches
        "n_outliers": n_scored - int(xs.shape[0]),
        "activations": xs,  # (N, d) fp32, scored and not outliers
        "features": f,  # (N, d_sae)
        "reconstruction": recon,  # (N, d) fp32
    }


def check_attachment(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    texts: list[str],
    *,
    strict: bool = True,
    skip_first_position: bool = True,
    hook_name: str | None = None,
    max_length: int = 128,
    tolerances: dict[str, float] | None = None,
) -> PreflightReport:
    """Measure ``sae`` on ``model`` at its hook over ``texts`` and compare with what it declares.

    Returns a :class:`PreflightReport`; raises :class:`PreflightError` on a mismatch beyond
    tolerance when ``strict`` (else warns). ``hook_name`` overrides ``sae.cfg.hook_name``.
    A few hundred tokens (e.g. 8–16 short texts) are enough.
    """
    name = hook_name or sae.cfg.hook_name
    if not name:
        raise PreflightError("the SAE declares no hook_name; pass hook_name=")
    hp = resolve_hook(model, name)
    device = next(model.parameters()).device
    enc = tokenizer(
        list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length
    )
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    raw = measure(model, sae, hp, ids, mask, skip_first_position=skip_first_position)
    if raw["n_tokens"] < 16:
        raise PreflightError(f"only {raw['n_tokens']} tokens to score; pass more or longer texts")
    gap = raw["ce_zero"] - raw["ce_clean"]
    rec = (raw["ce_zero"] - raw["ce_sae"]) / gap if abs(gap) > MIN_CE_GAP else None
    report = PreflightReport(
        hook_name=name,
        n_tokens=raw["n_tokens"],
        l0=raw["l0"],
        explained_variance=raw["explained_variance"],
        ce_clean=raw["ce_clean"],
        ce_with_sae=raw["ce_sae"],
        ce_zero_ablated=raw["ce_zero"],
        ce_loss_recovered=None if rec is None or math.isnan(rec) else rec,
        declared=declared_metrics(sae),
    )
    report.problems = _compare(report, {**TOLERANCES, **(tolerances or {})})
    if report.problems:
        msg = f"SAE does not fit {name!r} (wrong layer or hook?)\n" + report.summary()
        if strict:
            raise PreflightError(msg)
        warnings.warn(msg, stacklevel=2)
    return report
