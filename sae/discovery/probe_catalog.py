"""``features train-probe`` end to end: choose features, encode, fit with CV, calibrate, and
write the probe into a catalog as a :class:`~monitor.policy.catalog.ProbeSpec`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monitor.policy.catalog import Catalog, ProbeSpec
from sae.discovery import catalog_io as cio
from sae.discovery.activations import Stack, encode_items
from sae.discovery.contrast import pooled_features, rank_features
from sae.discovery.data import Item, items_sha256
from sae.discovery.probe import DEFAULT_LAMBDAS, ProbeFit, TokenBatch, fit_cv, logistic_threshold
from sae.errors import FeatureguardError


def resolve_features(spec: str, cat: Catalog) -> list[int]:
    """``"12,407,scam_email"``: indices, or names of features in the catalog."""
    by_name = {f.name: f.index for f in cat.features}
    out = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        if tok.isdigit():
            out.append(int(tok))
        elif tok in by_name:
            out.append(by_name[tok])
        else:
            raise FeatureguardError(f"--features: '{tok}' is neither an index nor in the catalog")
    return list(dict.fromkeys(out))


def token_rows(
    stack: Stack, items: Sequence[Item], idx: list[int], span: str
) -> list[torch.Tensor]:
    """Per-token values ``(S, K)`` of the chosen features; items with no scored token dropped."""
    return [
        sc.values
        for sc in encode_items(stack, items, span=span, features=idx)
        if sc.values.shape[0]
    ]


def probe_spec(fit: ProbeFit, names: list[str], sha256: str, description: str) -> ProbeSpec:
    link, thr = logistic_threshold(fit.threshold)
    return ProbeSpec(
        features=names,
        weights=[float(v) for v in fit.w.tolist()],
        bias=float(fit.b),
        pooling=fit.spec_pooling,  # type: ignore[arg-type]
        link=link,  # type: ignore[arg-type]
        threshold=thr,
        sae_sha256=sha256,
        description=description,
    )


def train_probe(
    stack: Stack,
    positive: Sequence[Item],
    negative: Sequence[Item],
    *,
    catalog: Path,
    name: str,
    features: str | None = None,
    top: int = 64,
    pool: str = "max",
    span: str = "user",
    penalty: str = "l2",
    k: int = 5,
    target_fpr: float = 0.05,
    calibration: Sequence[Item] | None = None,
    replace: bool = False,
    sources: tuple[str, str, str | None] = ("", "", None),
) -> dict[str, Any]:
    """Train, calibrate and catalog a probe; returns a JSON-able summary."""
    cat = cio.open_catalog(catalog, stack)
    if features:
        idx = resolve_features(features, cat)
    else:  # top features by contrast AUC on the training texts themselves
        p = pooled_features(stack, positive, how=pool, span=span)
        n = pooled_features(stack, negative, how=pool, span=span)
        idx = [r.index for r in rank_features(p.values, n.values, top=top)]
    pos, neg = token_rows(stack, positive, idx, span), token_rows(stack, negative, idx, span)
    batch = TokenBatch.from_rows(pos + neg)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long()
    calib = TokenBatch.from_rows(token_rows(stack, calibration, idx, span)) if calibration else None
    fit = fit_cv(
        batch,
        y,
        pool=pool,
        penalty=penalty,
        lambdas=DEFAULT_LAMBDAS,
        k=k,
        target_fpr=target_fpr,
        calib=calib,
    )
    names = cio.names_for(cat, idx)
    best = fit.cv[fit.lam]
    desc = (
        f"{penalty.upper()} logistic probe on {len(idx)} features, {pool}-pooled over span "
        f"{span}; lambda {fit.lam:g} by {k}-fold CV (AUC {best[0]:.3f} ± {best[1]:.3f}); "
        f"threshold at FPR {target_fpr:g} on {fit.calibration['calibration_source']} "
        f"(observed {float(fit.calibration['calibration_fpr']):.3f}); positives {len(pos)} "
        f"sha256:{items_sha256(positive)[:16]} ({sources[0]}), negatives {len(neg)} "
        f"sha256:{items_sha256(negative)[:16]} ({sources[1]})"
        + (
            f", calibration sha256:{items_sha256(calibration)[:16]} ({sources[2]})"
            if calibration
            else ""
        )
        + f"; command: {cio.command_line()}"
    )
    spec = probe_spec(fit, names, stack.sha256, desc)
    cio.upsert_probe(cat, name, spec, replace=replace)
    cio.save(cat, catalog)
    return {
        "probe": name,
        "catalog": str(catalog),
        "features": dict(zip(names, idx, strict=True)),
        "weights": spec.weights,
        "bias": spec.bias,
        "pooling": spec.pooling,
        "link": spec.link,
        "threshold": spec.threshold,
        "threshold_logit": fit.threshold,
        "lambda": fit.lam,
        "cv_auc": {f"{lam:g}": v for lam, v in fit.cv.items()},
        "calibration": fit.calibration,
        "positives": len(pos),
        "negatives": len(neg),
    }
