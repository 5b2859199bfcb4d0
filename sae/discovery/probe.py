"""Linear probes over SAE features, trained on exactly the score the policy evaluator computes.

Per token t of a row the evaluator computes the logit ``z_t = x_t · w + b`` (``x_t`` the
probe's K features). With ``pooling: token`` a rule's literal reads ``z_t``; with ``pooling:
mean`` it reads the running mean ``(z_1 + … + z_t) / t``. A rule fires on a row when the literal
is above the threshold at *any* token, so the row's score is

    row(x) = max_t z_t                   (pool "max"  → serialised pooling "token")
    row(x) = max_t mean(z_1 … z_t)       (pool "mean" → serialised pooling "mean")

and that is what we train (balanced logistic loss on ``row``, L1 or L2 penalty, L-BFGS),
cross-validate (stratified k-fold AUC of ``row``) and calibrate (threshold at a target FPR on
negative rows). :func:`token_scores` mirrors ``Evaluator.conditions`` operation for operation.
Features are standardised for the fit (so one penalty suits all scales) and the scaling is
folded back into ``w`` and ``b``, which is exact because the score is linear per token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sae.discovery.metrics import auc, threshold_at_fpr

POOL_TO_SPEC = {"max": "token", "mean": "mean"}
DEFAULT_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class TokenBatch:
    """Rows of per-token features, right-padded: ``x (N, T, K)``, ``mask (N, T)`` bool."""

    x: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def from_rows(rows: Sequence[torch.Tensor]) -> TokenBatch:
        """``rows``: one ``(S_i, K)`` tensor per row (S_i ≥ 1)."""
        if any(r.shape[0] == 0 for r in rows):
            raise ValueError("every row needs at least one scored token")
        T, K = max(r.shape[0] for r in rows), rows[0].shape[1]
        x = torch.zeros(len(rows), T, K)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            x[i, : r.shape[0]] = r.float()
            mask[i, : r.shape[0]] = True
        return TokenBatch(x, mask)

    def take(self, idx: torch.Tensor) -> TokenBatch:
        return TokenBatch(self.x[idx], self.mask[idx])


def token_scores(
    x: torch.Tensor, mask: torch.Tensor, w: torch.Tensor, b: torch.Tensor | float, spec_pool: str
) -> torch.Tensor:
    """Per-token probe logits as the evaluator computes them: ``(N, T, K)`` → ``(N, T)``.

    ``spec_pool`` is the serialised pooling: ``token`` or ``mean`` (running mean over the
    row's valid tokens so far).
    """
    z = x @ w.unsqueeze(-1)  # (N, T, 1)
    z = (z + b).squeeze(-1)  # (N, T)
    if spec_pool == "mean":
        vf = mask.to(z.dtype)
        z = torch.cumsum(z * vf, dim=1) / torch.cumsum(vf, dim=1).clamp_min(1.0)
    return z


def row_scores(
    batch: TokenBatch, w: torch.Tensor, b: torch.Tensor | float, pool: str
) -> torch.Tensor:
    """``(N,)``: the highest per-token score over each row's valid tokens (see module doc)."""
    z = token_scores(batch.x, batch.mask, w, b, POOL_TO_SPEC[pool])
    return z.masked_fill(~batch.mask, -math.inf).amax(dim=1)


def _standardiser(batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(K,)`` over valid tokens (std 1 for constant features)."""
    v = batch.x[batch.mask]  # (M, K)
    mu, sd = v.mean(0), v.std(0) if v.shape[0] > 1 else torch.ones(v.shape[1])
    return mu, torch.where(sd > 1e-8, sd, torch.ones_like(sd))


def fit(
    batch: TokenBatch,
    y: torch.Tensor,
    *,
    pool: str = "max",
    penalty: str = "l2",
    lam: float = 1e-3,
    max_iter: int = 150,
) -> tuple[torch.Tensor, float]:
    """Fit ``(w (K,), b)`` by balanced logistic loss on :func:`row_scores` plus
    ``lam · ||v||²`` (l2) or ``lam · ||v||₁`` (l1, smoothed) on the standardised weights."""
    mu, sd = _standardiser(batch)
    z = TokenBatch((batch.x - mu) / sd, batch.mask)
    yf = y.float()
    n_pos, n_neg = float(yf.sum()), float((1 - yf).sum())
    weight = torch.where(yf > 0, 0.5 / max(n_pos, 1.0), 0.5 / max(n_neg, 1.0))  # (N,) balanced
    v = torch.zeros(batch.x.shape[-1], requires_grad=True)
    c = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS(
        [v, c], max_iter=max_iter, tolerance_change=1e-7, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = row_scores(z, v, c, pool)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(s, yf, reduction="none") * weight
        ).sum()
        reg = (v * v).sum() if penalty == "l2" else torch.sqrt(v * v + 1e-8).sum()
        total = loss + lam * reg
        total.backward()
        return total

    with torch.enable_grad():
        opt.step(closure)
    w = (v.detach() / sd).float()
    return w, float(c.detach() - (mu * w).sum())


def folds(y: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Stratified fold id ``(N,)`` in ``0..k-1`` (each class spread evenly, seeded shuffle)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(y.numel(), dtype=torch.long)
    for cls in (0, 1):
        idx = (y == cls).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        out[idx] = torch.arange(idx.numel()) % k
    return out


@dataclass
class ProbeFit:
    """A trained probe and how it was chosen."""

    w: torch.Tensor  # (K,)
    b: float
    pool: str  # max | mean (training pooling)
    penalty: str
    lam: float
    threshold: float  # on the logit scale: fire when row score > threshold
    cv: dict[float, tuple[float, float]] = field(default_factory=dict)  # lam → (AUC mean, std)
    calibration: dict[str, float | str] = field(default_factory=dict)

    @property
    def spec_pooling(self) -> str:
        return POOL_TO_SPEC[self.pool]


def fit_cv(
    batch: TokenBatch,
    y: torch.Tensor,
    *,
    pool: str = "max",
    penalty: str = "l2",
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    k: int = 5,
    target_fpr: float = 0.05,
    calib: TokenBatch | None = None,
    seed: int = 0,
) -> ProbeFit:
    """Choose the penalty by stratified k-fold AUC, refit on everything, calibrate.

    The threshold puts at most ``target_fpr`` of the calibration negatives above it: ``calib``
    (held-out negative rows, e.g. the dev split) when given, else the out-of-fold scores of the
    training negatives under the chosen penalty.
    """
    fold = folds(y, k, seed)
    cv: dict[float, tuple[float, float]] = {}
    oof: dict[float, torch.Tensor] = {}
    for lam in lambdas:
        scores, aucs = torch.zeros(y.numel()), []
        for f in range(k):
            tr, te = (fold != f).nonzero().flatten(), (fold == f).nonzero().flatten()
            w, b = fit(batch.take(tr), y[tr], pool=pool, penalty=penalty, lam=lam)
            scores[te] = row_scores(batch.take(te), w, b, pool)
            if 0 < int(y[te].sum()) < te.numel():
                aucs.append(float(auc(scores[te][y[te] == 1], scores[te][y[te] == 0])))
        t = torch.tensor(aucs or [float("nan")])
        cv[lam] = (float(t.mean()), float(t.std()) if len(aucs) > 1 else 0.0)
        oof[lam] = scores
    best = max(lambdas, key=lambda lam: (cv[lam][0], lam))  # ties → the stronger penalty
    w, b = fit(batch, y, pool=pool, penalty=penalty, lam=best)
    if calib is not None:
        neg = row_scores(calib, w, b, pool)
        source = "held-out negatives"
    else:
        neg = oof[best][y == 0]
        source = "out-of-fold training negatives"
    thr = threshold_at_fpr(neg, target_fpr)
    train = row_scores(batch, w, b, pool)
    pos_oof = oof[best][y == 1]
    return ProbeFit(
        w,
        b,
        pool,
        penalty,
        best,
        thr,
        cv,
        {
            "target_fpr": target_fpr,
            "calibration_fpr": float((neg > thr).float().mean()),
            "calibration_negatives": float(neg.numel()),
            "calibration_source": source,
            "train_recall": float((train[y == 1] > thr).float().mean()),
            "oof_recall": float((pos_oof > thr).float().mean()),
        },
    )


def logistic_threshold(logit: float) -> tuple[str, float]:
    """(link, threshold) for a ProbeSpec: a probability when it is representable, else the
    raw logit with ``link: linear``."""
    if abs(logit) < 30:
        return "logistic", 1.0 / (1.0 + math.exp(-logit))
    return "linear", logit
