"""Evaluate an SAE on held-out text, and turn a trained model into a saved SAELens-format SAE.

Metrics (position 0 of every row and padding excluded, see REFERENCE.md):
L0, explained variance (1 − SSE / SST about the global mean), MSE per element, mean cosine of
reconstruction, dead fraction (features that never fire on the evaluated tokens), and CE loss
recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean) with the reconstruction spliced in at the
hook (:func:`sae.preflight.measure`, the same code the preflight check uses). Per-feature
activation maxima and firing counts are kept as well: the feature catalog uses them as scales.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from sae.base import SAE
from sae.hooks import resolve_hook
from sae.preflight import EVAL_KEY, measure
from sae.registry import create_sae
from sae.training.store import tokenize_document
from sae.training.trainer import TrainableSAE

RECIPE_ARCHITECTURE = {"batchtopk": "jumprelu", "topk": "topk", "relu_l1": "standard"}


def export_sae(
    trained: TrainableSAE,
    input_scale: float,
    *,
    hook_name: str,
    model_name: str,
    metadata: dict[str, Any] | None = None,
) -> SAE:
    """A raw-units SAE from a model trained on ``x / input_scale``.

    ReLU, TopK and JumpReLU are positively homogeneous, so scaling ``b_enc``, ``b_dec`` and the
    threshold by ``s`` gives features ``s ×`` the trained ones, and the same reconstruction ×
    ``s``: the saved SAE reads raw activations, with no normalisation step at run time.
    """
    s = float(input_scale)
    arch = RECIPE_ARCHITECTURE[trained.recipe]
    sae = create_sae(
        d_in=trained.W_enc.shape[0],
        d_sae=trained.W_enc.shape[1],
        architecture=arch,
        hook_name=hook_name,
        model_name=model_name,
        k=trained.k if arch == "topk" else None,
        metadata=dict(metadata or {}),
    )
    with torch.no_grad():
        sae.W_enc.copy_(trained.W_enc)
        sae.W_dec.copy_(trained.W_dec)
        sae.b_enc.copy_(trained.b_enc * s)
        sae.b_dec.copy_(trained.b_dec * s)
        if arch == "jumprelu":
            sae.get_parameter("threshold").fill_(float(trained.threshold) * s)
    return sae.requires_grad_(False).eval()


@dataclass
class _Acc:
    n: int = 0
    outliers: int = 0
    sse: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_x2: float = 0.0
    l0: float = 0.0
    cos: float = 0.0
    ce: dict[str, float] = field(default_factory=lambda: {"clean": 0.0, "sae": 0.0, "zero": 0.0})
    fired: torch.Tensor | None = None  # (d_sae,) counts
    max_act: torch.Tensor | None = None  # (d_sae,)


@torch.no_grad()
def evaluate_sae(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    docs: Iterable[dict[str, Any]],
    *,
    max_tokens: int = 20_000,
    max_len: int = 128,
    batch_rows: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of ``sae`` at its hook over corpus documents (``text`` or ``messages``).

    Tokens above the SAE's recorded outlier cutoff (``metadata["input_norm_cutoff"]``) are
    counted in ``n_outliers`` and left out of the metrics, as in :func:`sae.preflight.measure`.
    """
    from tqdm import tqdm

    hp = resolve_hook(model, sae.cfg.hook_name or "")
    acc = _Acc()
    rows: list[list[int]] = []
    bar = tqdm(total=max_tokens, desc="eval", unit="tok", disable=not progress)

    def run(batch: list[list[int]]) -> None:
        length = max(len(r) for r in batch)
        ids = torch.full((len(batch), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        raw = measure(model, sae, hp, ids, mask)  # one pass set: CE splice and activations
        acc.outliers += raw["n_outliers"]
        x, f, x_hat = raw["activations"], raw["features"], raw["reconstruction"]  # (N, ·)
        n = x.shape[0]
        acc.sse += float((x - x_hat).pow(2).sum())
        acc.sum_x = x.sum(0) if acc.sum_x is None else acc.sum_x + x.sum(0)
        acc.sum_x2 += float(x.pow(2).sum())
        acc.l0 += float((f > 0).sum())
        acc.cos += float(torch.cosine_similarity(x, x_hat, dim=-1).sum())
        for m in acc.ce:
            acc.ce[m] += raw[f"ce_{m}"] * n
        fired = (f > 0).sum(0)
        acc.fired = fired if acc.fired is None else acc.fired + fired
        mx = f.max(0).values
        acc.max_act = mx if acc.max_act is None else torch.maximum(acc.max_act, mx)
        acc.n += n
        bar.update(n)

    for doc in docs:
        rows.extend(tokenize_document(tokenizer, doc, max_len))
        while len(rows) >= batch_rows:
            run(rows[:batch_rows])
            rows = rows[batch_rows:]
        if acc.n >= max_tokens:
            break
    if rows and acc.n < max_tokens:
        run(rows)
    bar.close()
    if acc.n == 0 or acc.sum_x is None or acc.fired is None or acc.max_act is None:
        raise ValueError("no tokens to evaluate")
    d = acc.sum_x.shape[0]
    sst = acc.sum_x2 - float(acc.sum_x.pow(2).sum()) / acc.n
    ce = {m: v / acc.n for m, v in acc.ce.items()}
    gap = ce["zero"] - ce["clean"]
    return {
        "n_tokens": acc.n,
        "n_outliers": acc.outliers,
        "l0": acc.l0 / acc.n,
        "explained_variance": 1 - acc.sse / sst,
        "mse": acc.sse / (acc.n * d),
        "cosine": acc.cos / acc.n,
        "dead_fraction": float((acc.fired == 0).float().mean()),
        "ce_clean": ce["clean"],
        "ce_with_sae": ce["sae"],
        "ce_zero_ablated": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / gap if abs(gap) > 1e-6 else None,
        "feature_max": acc.max_act.tolist(),
        "feature_density": (acc.fired.float() / acc.n).tolist(),
    }


def eval_metadata(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics, under the key the preflight check reads (``metadata[EVAL_KEY]``)."""
    keys = (
        "n_tokens",
        "n_outliers",
        "l0",
        "explained_variance",
        "mse",
        "cosine",
        "dead_fraction",
        "ce_clean",
        "ce_with_sae",
        "ce_zero_ablated",
        "ce_loss_recovered",
    )
    return {EVAL_KEY: {k: result[k] for k in keys}}
