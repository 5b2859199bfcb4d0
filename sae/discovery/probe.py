"""Linear probes over SAE features, trained on exactly the score the policy evaluator computes.

Per token t of a row the evaluator computes the logit ``z_t = x_t · w + b`` (``x_t`` the
probe's K features). With ``pooling: token`` a rule's literal reads ``z_t``; with ``pooling:
mean`` it reads the running mean ``m_t = (z_0 + … + z_t) / (t + 1)``. A rule fires on a row when
its literal holds at *any* token — and, with ``for: N``, on N consecutive tokens — so the row's
score is

    row(x) = max_t min(s_{t-N+1} … s_t)     s = z (pool "max" → pooling "token")
                                             s = m (pool "mean" → pooling "mean")
                                             s = e (pool "ema" → pooling "ema": the
                                             exponentially weighted mean of z, half-life H)

(``sustain`` = N; N = 1 is the plain peak; a row shorter than N never fires: score −inf), and
that is what we train (balanced logistic loss on ``row``, L1 or L2 penalty, L-BFGS),
cross-validate (stratified k-fold AUC of ``row``) and calibrate (threshold at a target FPR on
negative rows). :func:`token_scores` mirrors ``Evaluator.conditions`` operation for operation;
rows must hold every token the runtime scores, the row's first token included (all features 0,
as ``ignore_first_token`` makes it). Features are standardised for the fit (so one penalty
suits all scales) and the scaling is folded back into ``w`` and ``b``, which is exact because the
score is linear per token.

:func:`greedy_select` picks features for a probe by orthogonal matching pursuit on this same
objective: refit on the features chosen so far, then add the features whose weight has the
largest standardised loss gradient (the pooled value of each feature at the token that decides
each row's score).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from monitor.policy.pooling import log_decay, max_piece, pool_scan
from sae.discovery.metrics import auc, threshold_at_fpr

POOL_TO_SPEC = {"max": "token", "mean": "mean", "ema": "ema"}
DEFAULT_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)
_NEVER = -30.0  # training stand-in for a row that cannot fire (shorter than ``sustain``)


@dataclass(frozen=True)
class TokenBatch:
    """Rows of per-token features, packed: ``flat (M, K)`` holds only the valid tokens, row 0's
    in order, then row 1's, …; ``mask (N, T)`` (bool, right-padded) says where they sit in the
    padded ``(N, T, K)`` layout (``M = mask.sum()``, the order of ``x[mask]``). Rows differ in
    length by several times, so packing keeps a whole-dictionary batch (K = d_sae) to the
    memory and matmul cost of its real tokens."""

    flat: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def from_rows(rows: Sequence[torch.Tensor]) -> TokenBatch:
        """``rows``: one ``(S_i, K)`` tensor per row (S_i ≥ 1); the caller's rows are kept."""
        return TokenBatch.pack(list(rows))

    @staticmethod
    def pack(rows: list[torch.Tensor]) -> TokenBatch:
        """As :meth:`from_rows`, but ``rows`` is emptied as it is copied (last row first), so a
        whole-dictionary batch never holds its activations twice: each row is freed once it
        sits in ``flat`` (when nothing else refers to it)."""
        if not rows:
            raise ValueError("no rows to pack")
        if any(r.shape[0] == 0 for r in rows):
            raise ValueError("every row needs at least one scored token")
        lengths = torch.tensor([r.shape[0] for r in rows])  # (N,)
        mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (N, T)
        ends = torch.cumsum(lengths, 0).tolist()
        flat = torch.empty(ends[-1], rows[0].shape[1], dtype=torch.float32)  # (M, K)
        while rows:
            end, r = ends[len(rows) - 1], rows.pop()
            flat[end - r.shape[0] : end] = r
        return TokenBatch(flat, mask)

    @staticmethod
    def from_dense(x: torch.Tensor, mask: torch.Tensor) -> TokenBatch:
        """From the padded layout ``x (N, T, K)``, ``mask (N, T)`` (padding values dropped)."""
        return TokenBatch(x[mask].float(), mask)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def x(self) -> torch.Tensor:
        """The padded ``(N, T, K)`` layout (zeros at padding): a full-size copy, for small
        batches."""
        x = torch.zeros(*self.mask.shape, self.flat.shape[-1], dtype=self.flat.dtype)
        x[self.mask] = self.flat
        return x

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        """``(N, T)``: ``x_t · w`` at every valid token, 0 at padding (differentiable in ``w``)."""
        z = self.flat @ w  # (M,)
        return torch.zeros(self.mask.shape, dtype=z.dtype).masked_scatter(self.mask, z)

    def take(self, idx: torch.Tensor) -> TokenBatch:
        """Rows ``idx`` (long indices, in that order)."""
        pos = torch.full(self.mask.shape, -1, dtype=torch.long)  # (N, T): index into flat
        pos[self.mask] = torch.arange(self.flat.shape[0])
        mask = self.mask[idx]  # (n, T)
        mask = mask[:, : max(int(mask.sum(1).max()), 1)] if idx.numel() else mask
        return TokenBatch(self.flat[pos[idx][:, : mask.shape[1]][mask]], mask)


def token_scores(
    x: torch.Tensor,
    mask: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | float,
    spec_pool: str,
    half_life: float | None = None,
) -> torch.Tensor:
    """Per-token probe logits as the evaluator computes them: ``(N, T, K)`` → ``(N, T)``.

    ``spec_pool`` is the serialised pooling: ``token``, ``mean`` (running mean over the row's
    valid tokens so far) or ``ema`` (exponentially weighted mean, ``half_life`` tokens;
    :mod:`monitor.policy.pooling`, the evaluator's own scan).
    """
    return pool_logits((x @ w.unsqueeze(-1)).squeeze(-1), mask, b, spec_pool, half_life)


def pool_logits(
    z: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor | float,
    spec_pool: str,
    half_life: float | None = None,
) -> torch.Tensor:
    """``(N, T)``: per-token scores from the per-token products ``z = x_t · w`` ``(N, T)`` and
    the bias, pooled as :func:`token_scores` says."""
    if spec_pool == "ema":
        ld = log_decay("ema", half_life)
        zero = torch.zeros(z.shape[0], 1, dtype=torch.float64, device=z.device)  # (N, 1)
        la = torch.tensor([ld], dtype=torch.float64, device=z.device)  # (1,)
        zb = z.unsqueeze(-1) + b  # (N, T, 1)
        return pool_scan(zb, mask, la, zero, zero, max_piece([ld]))[0].squeeze(-1)  # (N, T)
    z = z + b  # (N, T)
    if spec_pool == "mean":
        vf = mask.to(z.dtype)
        z = torch.cumsum(z * vf, dim=1) / torch.cumsum(vf, dim=1).clamp_min(1.0)
    return z


def sustained_peak(s: torch.Tensor, mask: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, ...]:
    """``(peak (N,), token (N,))``: the highest ``min(s_{t-n+1} … s_t)`` over each row's valid
    windows of ``n`` tokens (right-padded rows), and the token inside the best window where that
    minimum sits (the token that decides the row's score). −inf and token 0 for a row with fewer
    than ``n`` valid tokens."""
    N, T = s.shape
    if n <= 1:
        v = s.masked_fill(~mask, -math.inf)
        best = v.argmax(dim=1)  # (N,)
        return v.gather(1, best[:, None]).squeeze(1), best
    if n > T:
        return torch.full((N,), -math.inf), torch.zeros(N, dtype=torch.long)
    win = s.unfold(1, n, 1)  # (N, T-n+1, n): window j covers tokens j … j+n-1
    mins, arg = win.min(dim=-1)  # (N, T-n+1)
    ok = mask[:, n - 1 :]  # window ends on a valid token (rows are right-padded)
    mins = mins.masked_fill(~ok, -math.inf)
    j = mins.argmax(dim=1)  # (N,)
    peak = mins.gather(1, j[:, None]).squeeze(1)
    tok = j + arg.gather(1, j[:, None]).squeeze(1)
    return peak, torch.where(torch.isfinite(peak), tok, torch.zeros_like(tok))


def row_scores(
    batch: TokenBatch,
    w: torch.Tensor,
    b: torch.Tensor | float,
    pool: str,
    sustain: int = 1,
    half_life: float | None = None,
) -> torch.Tensor:
    """``(N,)``: each row's score (module doc): the peak per-token score, held for ``sustain``
    consecutive tokens."""
    z = pool_logits(batch.logits(w), batch.mask, b, POOL_TO_SPEC[pool], half_life)  # (N, T)
    return sustained_peak(z, batch.mask, sustain)[0]


_CHUNK_ROWS = 64  # rows per slice when a statistic is taken over a (large) batch


def _row_stats(batch: TokenBatch, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Over ``rows`` of ``batch``, ``_CHUNK_ROWS`` at a time (never a full-size temporary):
    per-feature mean and std ``(K,)`` over valid tokens (std 1 for constant features), and each
    row's mean feature vector ``(len(rows), K)``."""
    K = batch.flat.shape[-1]
    total, sq = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    n, means = 0, []
    for lo in range(0, rows.numel(), _CHUNK_ROWS):
        part = batch.take(rows[lo : lo + _CHUNK_ROWS])
        x = part.flat  # (m, K): the chunk's valid tokens
        total += x.sum(0).double()
        sq += (x * x).sum(0).double()
        n += x.shape[0]
        lengths = part.mask.sum(1)  # (c,)
        owner = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)  # (m,)
        sums = torch.zeros(lengths.numel(), K).index_add_(0, owner, x)  # (c, K)
        means.append(sums / lengths.clamp_min(1).unsqueeze(1))
    mu = total / max(n, 1)
    var = (sq - n * mu * mu) / max(n - 1, 1)
    sd = var.clamp_min(0).sqrt()
    sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd)) if n > 1 else torch.ones(K)
    return mu.float(), sd.float(), torch.cat(means) if means else torch.zeros(0, K)


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """``(N,)``: each class carries half of the total weight."""
    yf = y.float()
    n_pos, n_neg = float(yf.sum()), float((1 - yf).sum())
    return torch.where(yf > 0, 0.5 / max(n_pos, 1.0), 0.5 / max(n_neg, 1.0))


def fit(
    batch: TokenBatch,
    y: torch.Tensor,
    *,
    pool: str = "max",
    penalty: str = "l2",
    lam: float = 1e-3,
    sustain: int = 1,
    max_iter: int = 150,
    half_life: float | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Fit ``(w (K,), b)`` by balanced logistic loss on :func:`row_scores` plus
    ``lam · ||v||²`` (l2) or ``lam · ||v||₁`` (l1, smoothed) on the standardised weights.

    ``rows`` (long indices): fit on those rows of ``batch`` only (``y`` is for those rows).
    Nothing the size of ``batch`` is copied: the standardisation is folded into the weights
    (``w = v / sd``, ``b = c − mu · w``), which is the same optimisation over ``v``, so a
    whole-dictionary probe trains in about the memory of its activations."""
    idx = torch.arange(len(batch)) if rows is None else rows
    mu, sd, row_mean = _row_stats(batch, idx)  # (K,), (K,), (n, K)
    yf = y.float()
    weight = balanced_weights(y)  # (n,)
    # Start from the same penalised logistic fit on each row's mean features (convex and cheap;
    # for pool "mean" it scores the last token's running mean): at v = 0 every token ties, the
    # peak sits on each row's first token and the gradient can vanish, and with thousands of
    # features a poor start leaves L-BFGS far from a good optimum.
    std_mean = (row_mean - mu) / sd  # (n, K) standardised
    v0, c0 = _fit_rows(std_mean, yf, weight, penalty, lam, max(200, max_iter))  # cheap: (n, K)
    v = v0.clone().requires_grad_(True)
    c = c0.clone().requires_grad_(True)

    def objective() -> torch.Tensor:
        w = v / sd  # (K,)
        b = c - (mu * w).sum()
        s = row_scores(batch, w, b, pool, sustain, half_life)  # (N,): one matmul over all rows
        if rows is not None:
            s = s[rows]  # (n,) the fitted rows' scores
        s = torch.where(torch.isfinite(s), s, torch.full_like(s, _NEVER))
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(s, yf, reduction="none") * weight
        ).sum()
        return loss + lam * _penalty(v, penalty)

    _lbfgs([v, c], objective, max_iter)
    w = (v.detach() / sd).float()
    return w, float(c.detach() - (mu * w).sum())


def _penalty(v: torch.Tensor, penalty: str) -> torch.Tensor:
    return (v * v).sum() if penalty == "l2" else torch.sqrt(v * v + 1e-8).sum()


def _lbfgs(params: list[torch.Tensor], objective: Callable[[], torch.Tensor], iters: int) -> None:
    opt = torch.optim.LBFGS(
        params, max_iter=iters, tolerance_change=1e-7, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = objective()
        total.backward()
        return total

    with torch.enable_grad():
        opt.step(closure)


def _fit_rows(
    x: torch.Tensor, yf: torch.Tensor, weight: torch.Tensor, penalty: str, lam: float, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v (K,), c)``: balanced penalised logistic regression on one vector per row ``(N, K)``
    (standardised features); zeros when a class is missing."""
    v = torch.zeros(x.shape[-1], requires_grad=True)
    c = torch.zeros((), requires_grad=True)
    if not 0 < float(yf.sum()) < yf.numel():
        return v.detach(), c.detach()

    def objective() -> torch.Tensor:
        s = x @ v + c  # (N,)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, yf, reduction="none")
        return (loss * weight).sum() + lam * _penalty(v, penalty)

    _lbfgs([v, c], objective, iters)
    return v.detach(), c.detach()


def folds(
    y: torch.Tensor, k: int, seed: int = 0, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Stratified fold id ``(N,)`` in ``0..k-1`` (each class spread evenly, seeded shuffle).

    ``groups`` ``(N,)``: rows with the same group id (two renderings of one item) share a fold,
    so no row is scored out of fold by a probe that trained on its twin; a group takes the
    label of its first row. Without groups every row is its own group."""
    if groups is None:
        gen = torch.Generator().manual_seed(seed)
        out = torch.empty(y.numel(), dtype=torch.long)
        for cls in (0, 1):
            idx = (y == cls).nonzero().flatten()
            idx = idx[torch.randperm(idx.numel(), generator=gen)]
            out[idx] = torch.arange(idx.numel()) % k
        return out
    uniq, inverse = torch.unique(groups, return_inverse=True)  # (G,), (N,)
    first = torch.full((uniq.numel(),), y.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(y.numel()), reduce="amin")  # (G,)
    return folds(y[first], k, seed)[inverse]  # (N,)


def batch_folds(y: torch.Tensor, batches: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Fold id ``(N,)`` in ``0..k-1`` that holds out whole batches: rows with the same
    ``batches`` id (one authoring batch, e.g. one source file) always share a fold, so every
    out-of-fold score comes from a probe that never saw that batch, the way a deployed probe
    meets new traffic. A batch takes its majority class; each class's batches are dealt largest
    first (ties in seeded order) to the fold holding the fewest rows of that class.
    Raises ``ValueError`` when a class has fewer than ``k`` batches (a fold would lack it)."""
    uniq, inverse = torch.unique(batches, return_inverse=True)  # (B,), (N,)
    size = torch.bincount(inverse, minlength=uniq.numel())  # (B,) rows per batch
    npos = torch.bincount(inverse, weights=y.double(), minlength=uniq.numel())  # (B,)
    label = (2 * npos > size).long()  # (B,) the batch's majority class
    order = torch.randperm(uniq.numel(), generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(uniq.numel(), dtype=torch.long)  # (B,)
    for cls in (0, 1):
        members = [int(b) for b in order if int(label[b]) == cls]
        if len(members) < k:
            raise ValueError(f"class {cls} has {len(members)} batches; {k} folds need {k}")
        members.sort(key=lambda b: -int(size[b]))  # stable: equal sizes keep the seeded order
        load = [0] * k
        for b in members:
            f = min(range(k), key=lambda j: (load[j], j))
            fold_of[b] = f
            load[f] += int(size[b])
    return fold_of[inverse]  # (N,)


@dataclass
class ProbeFit:
    """A trained probe and how it was chosen."""

    w: torch.Tensor  # (K,)
    b: float
    pool: str  # max | mean | ema (training pooling)
    penalty: str
    lam: float
    threshold: float  # on the logit scale: fire when row score > threshold
    cv: dict[float, tuple[float, float]] = field(default_factory=dict)  # lam → (AUC mean, std)
    calibration: dict[str, float | str] = field(default_factory=dict)
    sustain: int = 1  # the rule's `for:` this probe was trained and calibrated for
    half_life: float | None = None  # tokens, pool "ema"

    @property
    def spec_pooling(self) -> str:
        return POOL_TO_SPEC[self.pool]


def _nested(groups: torch.Tensor, batches: torch.Tensor) -> bool:
    """Whether every group's rows lie in one batch."""
    pairs = torch.unique(torch.stack([groups, batches]), dim=1)  # (2, P) distinct (group, batch)
    return pairs.shape[1] == torch.unique(groups).numel()


def stratified_threshold(scores: torch.Tensor, strata: torch.Tensor, target_fpr: float) -> float:
    """The lowest threshold that keeps at most ``target_fpr`` of each stratum's negative
    ``scores`` above it: the highest of the per-stratum thresholds."""
    return max(threshold_at_fpr(scores[strata == k], target_fpr) for k in strata.unique())


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
    calib_rows: torch.Tensor | None = None,
    sustain: int = 1,
    seed: int = 0,
    max_iter: int = 150,
    groups: torch.Tensor | None = None,
    half_life: float | None = None,
    calib_strata: torch.Tensor | None = None,
    batches: torch.Tensor | None = None,
) -> ProbeFit:
    """Choose the penalty by stratified k-fold AUC, refit on everything, calibrate.

    The threshold puts at most ``target_fpr`` of the calibration negatives above it. Those are
    ``calib`` (held-out negative rows, scored by the final probe) and/or ``calib_rows`` (indices
    of training rows, scored out of fold under the chosen penalty); with neither, the out-of-fold
    scores of every training negative. ``groups`` keeps twin rows in one fold (:func:`folds`).
    ``calib_strata`` (one id per calibration negative, ``calib_rows`` first, then ``calib``):
    the threshold holds ``target_fpr`` within every stratum (the highest of their thresholds),
    e.g. chat-templated and raw renderings alike. ``batches`` ``(N,)``: folds hold out whole
    batches instead (:func:`batch_folds`; twin rows must share a batch), so the penalty and
    the out-of-fold threshold see the shift between authoring batches that new traffic brings.
    """
    if batches is None:
        fold = folds(y, k, seed, groups)
    else:
        if groups is not None and not _nested(groups, batches):
            raise ValueError("rows of one group (twins) must share a batch")
        fold = batch_folds(y, batches, k, seed)
    cv: dict[float, tuple[float, float]] = {}
    oof: dict[float, torch.Tensor] = {}
    for lam in lambdas:
        scores, aucs = torch.zeros(y.numel()), []
        for f in range(k):
            tr, te = (fold != f).nonzero().flatten(), (fold == f).nonzero().flatten()
            w, b = fit(
                batch,
                y[tr],
                rows=tr,
                pool=pool,
                penalty=penalty,
                lam=lam,
                sustain=sustain,
                max_iter=max_iter,
                half_life=half_life,
            )
            scores[te] = row_scores(batch, w, b, pool, sustain, half_life)[te]
            if 0 < int(y[te].sum()) < te.numel():
                aucs.append(float(auc(scores[te][y[te] == 1], scores[te][y[te] == 0])))
        t = torch.tensor(aucs or [float("nan")])
        cv[lam] = (float(t.mean()), float(t.std()) if len(aucs) > 1 else 0.0)
        oof[lam] = scores
    best = max(lambdas, key=lambda lam: (cv[lam][0], lam))  # ties → the stronger penalty
    w, b = fit(
        batch,
        y,
        pool=pool,
        penalty=penalty,
        lam=best,
        sustain=sustain,
        max_iter=max_iter,
        half_life=half_life,
    )
    parts, sources = [], []
    if calib_rows is not None and calib_rows.numel():
        parts.append(oof[best][calib_rows])
        sources.append(f"{calib_rows.numel()} training negatives out of fold")
    if calib is not None:
        parts.append(row_scores(calib, w, b, pool, sustain, half_life))
        sources.append(f"{len(calib)} held-out negatives")
    if not parts:
        parts.append(oof[best][y == 0])
        sources.append("out-of-fold training negatives")
    neg = torch.cat(parts)
    if calib_strata is None:
        thr = threshold_at_fpr(neg, target_fpr)
    else:
        thr = stratified_threshold(neg, calib_strata, target_fpr)
        sources.append(f"the highest of {int(calib_strata.unique().numel())} strata's thresholds")
    train = row_scores(batch, w, b, pool, sustain, half_life)
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
            "calibration_source": " + ".join(sources),
            "train_recall": float((train[y == 1] > thr).float().mean()),
            "oof_recall": float((pos_oof > thr).float().mean()),
        },
        sustain,
        half_life,
    )


@dataclass(frozen=True)
class SparseRows:
    """Per-token values of *every* feature for N rows, as coordinates: entry i is the value
    ``val[i]`` of feature ``feat[i]`` at token ``pos[i]`` of row ``row[i]``; ``lengths (N,)``
    counts each row's tokens (tokens without entries are all-zero, e.g. the first)."""

    row: torch.Tensor  # (M,) long
    pos: torch.Tensor  # (M,) long
    feat: torch.Tensor  # (M,) long
    val: torch.Tensor  # (M,) float32
    lengths: torch.Tensor  # (N,) long
    n_features: int

    @staticmethod
    def from_dense(rows: Sequence[torch.Tensor]) -> SparseRows:
        """``rows``: one ``(S_i, F)`` tensor per row."""
        parts = []
        for i, r in enumerate(rows):
            nz = r.nonzero()  # (m, 2)
            parts.append((torch.full((nz.shape[0],), i), nz[:, 0], nz[:, 1], r[nz[:, 0], nz[:, 1]]))
        cat = [torch.cat([p[j] for p in parts]) for j in range(4)]
        lengths = torch.tensor([r.shape[0] for r in rows])
        return SparseRows(
            cat[0].long(), cat[1].long(), cat[2].long(), cat[3].float(), lengths, rows[0].shape[1]
        )

    def columns(self, idx: Sequence[int]) -> TokenBatch:
        """The rows restricted to features ``idx`` (in that order), as a :class:`TokenBatch`."""
        col = torch.full((self.n_features,), -1, dtype=torch.long)
        col[torch.as_tensor(list(idx), dtype=torch.long)] = torch.arange(len(idx))
        keep = col[self.feat] >= 0
        N, T = self.lengths.numel(), int(self.lengths.max())
        x = torch.zeros(N, T, len(idx))
        x[self.row[keep], self.pos[keep], col[self.feat[keep]]] = self.val[keep]
        mask = torch.arange(T)[None, :] < self.lengths[:, None]  # (N, T)
        return TokenBatch.from_dense(x, mask)

    def pooled_at(self, tok: torch.Tensor, spec_pool: str) -> torch.Tensor:
        """``(N, F)``: every feature's pooled value at token ``tok[i]`` of row i: the value there
        (``token``) or the running mean up to it (``mean``)."""
        t = tok[self.row]  # (M,)
        keep = self.pos == t if spec_pool == "token" else self.pos <= t
        out = torch.zeros(self.lengths.numel(), self.n_features)
        out.index_put_((self.row[keep], self.feat[keep]), self.val[keep], accumulate=True)
        if spec_pool == "mean":
            out = out / (tok + 1).unsqueeze(1).float()
        return out


def greedy_select(
    rows: SparseRows,
    y: torch.Tensor,
    k: int,
    *,
    pool: str = "mean",
    sustain: int = 1,
    lam: float = 0.1,
    step: int = 4,
    exclude: Sequence[int] = (),
) -> list[int]:
    """``k`` feature indices by orthogonal matching pursuit on the probe objective (module
    doc): each round refits an L2 probe (penalty ``lam``) on the features chosen so far and adds
    the ``step`` features with the largest ``|∂ loss / ∂ w_j|`` per unit of standard deviation,
    where row i's gradient is taken at the token that decides its score."""
    yf = y.float()
    weight = balanced_weights(y)  # (N,)
    spec = POOL_TO_SPEC[pool]
    chosen: list[int] = []
    banned = torch.zeros(rows.n_features, dtype=torch.bool)
    banned[torch.as_tensor(list(exclude), dtype=torch.long)] = True
    while len(chosen) < k:
        if chosen:
            b = rows.columns(chosen)
            w, c = fit(b, y, pool=pool, lam=lam, sustain=sustain)
            z = pool_logits(b.logits(w), b.mask, c, spec)  # (N, T), as row_scores scores it
            peak, tok = sustained_peak(z, b.mask, sustain)
            p = torch.sigmoid(peak.clamp_min(_NEVER))
        else:  # no feature yet: every row scores the same, decided at its last token
            tok, p = rows.lengths - 1, torch.full((y.numel(),), 0.5)
        g_rows = rows.pooled_at(tok, spec)  # (N, F)
        grad = ((weight * (p - yf)).unsqueeze(1) * g_rows).sum(0)  # (F,)
        score = grad.abs() / g_rows.std(0).clamp_min(1e-6)
        score[banned] = -1.0
        if chosen:
            score[torch.tensor(chosen)] = -1.0
        take = min(step, k - len(chosen))
        chosen += score.argsort(descending=True)[:take].tolist()
    return chosen


def logistic_threshold(logit: float) -> tuple[str, float]:
    """(link, threshold) for a ProbeSpec: a probability when it is representable, else the
    raw logit with ``link: linear``."""
    if abs(logit) < 30:
        return "logistic", 1.0 / (1.0 + math.exp(-logit))
    return "linear", logit
