"""Dictionary learning: train an SAE on stored activations.

Two recipes, one loop:

- ``batchtopk`` (default): BatchTopK (Bussmann et al. 2024) — keep the ``k × batch`` largest
  activations across the batch — with the AuxK loss for dead latents (Gao et al. 2024), unit-norm
  decoder rows, and export as **jumprelu** with the learnt global threshold, as SAELens does. A
  jumprelu SAE's features are independent of each other, so the monitor's subset encode is exact.
- ``topk``: per-token TopK with AuxK, exported as ``topk``.
- ``relu_l1``: ReLU with the decoder-norm-weighted L1 penalty ``λ Σ_i f_i ‖W_dec,i‖`` and no
  norm constraint (Anthropic, "Scaling Monosemanticity", 2024), exported as ``standard``.

Inputs are scaled by one constant so that ``E‖x‖ = √d_in`` while training; the scale is folded
back into the biases (and threshold) at export, so the saved SAE reads raw activations and its
feature values are in raw units. ``b_dec`` starts at the geometric median of a sample.
Warm-up then linear decay over the last ``decay_fraction`` of steps; checkpoints every
``checkpoint_every`` steps and resumes from the last one; deterministic for a seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sae.errors import FeatureguardError
from sae.training.store import ActivationReader

RECIPES = ("batchtopk", "topk", "relu_l1")


@dataclass
class TrainConfig:
    """Every knob of a training run (recorded in the saved SAE's metadata)."""

    recipe: str = "batchtopk"  # batchtopk | topk | relu_l1
    d_sae: int = 9216  # dictionary width (16 × 576 for the bundled model)
    k: int = 32  # active latents per token (batchtopk: on average)
    l1_coefficient: float = 5.0  # relu_l1 only, in units of the normalised input
    lr: float = 4e-4
    batch_size: int = 4096  # tokens per step
    epochs: float = 3.0  # passes over the store
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # linear decay to 0 over the last fraction of steps
    auxk_alpha: float = 1 / 32
    auxk_k: int = 256
    dead_tokens: int = 200_000  # a latent that has not fired for this many tokens is dead
    seed: int = 0
    checkpoint_every: int = 100
    threshold_momentum: float = 0.99  # batchtopk: EMA of the smallest kept activation
    # Tokens whose norm exceeds this multiple of the median norm are massive-activation
    # outliers (e.g. the first tokens of some rows): they are left out of training.
    outlier_norm_ratio: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise FeatureguardError(f"unknown recipe {self.recipe!r}; choose from {RECIPES}")


class TrainableSAE(nn.Module):
    """The SAE being trained, in normalised input units. Shapes follow SAELens."""

    threshold: torch.Tensor  # () batchtopk: EMA of the smallest kept activation

    def __init__(self, d_in: int, d_sae: int, recipe: str, k: int) -> None:
        super().__init__()
        self.recipe, self.k = recipe, k
        w = torch.randn(d_sae, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)  # (d_sae, d_in)
        self.W_enc = nn.Parameter(w.t().clone() * (0.1 if recipe == "relu_l1" else 1.0))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # (d_sae,)
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # (d_in,)
        self.register_buffer("threshold", torch.tensor(-1.0))  # batchtopk: learnt at train time

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)  # (N, d_sae)

    def select(self, pre: torch.Tensor) -> torch.Tensor:
        """Sparse codes from non-negative pre-activations, per recipe."""
        if self.recipe == "topk":
            vals, idx = pre.topk(self.k, dim=-1)  # (N, k)
            return torch.zeros_like(pre).scatter_(-1, idx, vals)
        if self.recipe == "batchtopk":
            rows, cols, vals = sparse_codes(self, pre)
            return torch.zeros_like(pre).index_put_((rows, cols), vals)
        return pre

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec  # (N, d_in)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Keep decoder rows on the unit sphere: drop the gradient along each row."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec.data).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec.data


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm. ``x (N, d) -> (d,)``."""
    m = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)  # (N,)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() < eps * m.norm().clamp_min(1.0):
            return m_new
        m = m_new
    return m


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    decay_start = int(total * (1 - cfg.decay_fraction))
    decay = 1.0 if step < decay_start else max(0.0, (total - step) / max(total - decay_start, 1))
    return cfg.lr * warm * decay


def sparse_codes(
    model: TrainableSAE, pre: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selected codes as ``(rows, cols, vals)`` sorted by row (``pre (N, d_sae)``, recipe rule)."""
    n, d_sae = pre.shape
    if model.recipe == "topk":
        vals, cols = pre.topk(model.k, dim=-1)  # (N, k)
        rows = torch.arange(n, device=pre.device).repeat_interleave(model.k)
        return rows, cols.flatten(), vals.flatten()
    if model.recipe == "batchtopk":
        # Two stages: each token's 4k largest are the candidates, then the batch's k·N largest
        # of those (a token keeps at most 4k latents; a full flat top-k is ~4× slower on CPU).
        cand_vals, cand_cols = pre.topk(min(4 * model.k, d_sae), dim=-1)  # (N, 4k)
        vals, flat = cand_vals.flatten().topk(min(model.k * n, cand_vals.numel()))  # (N·k,)
        order = flat.argsort()  # row-major: sorts by row
        flat, vals = flat[order], vals[order]
        rows = flat // cand_cols.shape[1]
        return rows, cand_cols.flatten()[flat], vals
    rows, cols = pre.nonzero(as_tuple=True)
    return rows, cols, pre[rows, cols]


def sparse_decode(
    w_dec: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int
) -> torch.Tensor:
    """``Σ_j vals_j · W_dec[cols_j]`` per row, no dense ``(N, d_sae)`` product -> (N, d_in)."""
    offsets = torch.zeros(n, dtype=torch.long, device=rows.device)
    counts = torch.bincount(rows, minlength=n)  # (N,)
    offsets[1:] = counts.cumsum(0)[:-1]
    return F.embedding_bag(cols, w_dec, offsets, mode="sum", per_sample_weights=vals)


def _loss(
    model: TrainableSAE, x: torch.Tensor, dead: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Loss for one batch ``x (N, d_in)``; returns (loss, kept values (nnz,), logs).

    The decoder runs sparse (embedding_bag over the selected latents): only the encoder's
    ``(N, d_in) @ (d_in, d_sae)`` product is dense, which makes training ~3× cheaper on CPU.
    """
    n = x.shape[0]
    pre = model.pre_acts(x)  # (N, d_sae)
    rows, cols, vals = sparse_codes(model, pre)  # (nnz,) each
    x_hat = sparse_decode(model.W_dec, rows, cols, vals, n) + model.b_dec  # (N, d_in)
    err = x - x_hat
    var = (x - x.mean(0)).pow(2).sum()
    mse = err.pow(2).sum() / var  # fraction of variance unexplained
    loss = mse
    logs = {"fvu": float(mse.detach())}
    if cfg.recipe == "relu_l1":
        penalty = (vals * model.W_dec.norm(dim=1)[cols]).sum() / n
        loss = err.pow(2).sum(-1).mean() + cfg.l1_coefficient * penalty
        logs["l1"] = float(penalty.detach())
    elif int(dead.sum()) > 0:
        k_aux = min(cfg.auxk_k, int(dead.sum()))
        aux_vals, aux_cols = pre.masked_fill(~dead, 0.0).topk(k_aux, dim=-1)  # (N, k_aux)
        aux_rows = torch.arange(n, device=x.device).repeat_interleave(k_aux)
        e_hat = sparse_decode(model.W_dec, aux_rows, aux_cols.flatten(), aux_vals.flatten(), n)
        aux = (err.detach() - e_hat).pow(2).sum() / err.detach().pow(2).sum().clamp_min(1e-8)
        loss = loss + cfg.auxk_alpha * aux
        logs["auxk"] = float(aux.detach())
    kept = vals > 0
    logs["l0"] = float(kept.sum()) / n
    fired = torch.zeros(pre.shape[1], dtype=torch.bool, device=pre.device)
    fired[cols[kept]] = True
    min_kept = float(vals.detach()[kept].min()) if bool(kept.any()) else 0.0
    return loss, fired, logs | {"min_kept": min_kept}


def train_sae(
    reader: ActivationReader,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    log: Any = None,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[TrainableSAE, dict[str, Any]]:
    """Train on ``reader`` and return the model (normalised units, on CPU) and a summary dict.

    ``device`` defaults to CUDA when available, else CPU; checkpoints are device-independent.

    ``out_dir/checkpoint.pt`` is written every ``cfg.checkpoint_every`` steps (and when
    ``stop_after`` steps have run in this call) and read back on restart, so a killed or
    time-sliced run resumes exactly.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    d_in = reader.manifest.d_in
    sample = reader.sample(16384)  # (n, d_in)
    norms = sample.norm(dim=1)  # (n,)
    cutoff = float(norms.median()) * cfg.outlier_norm_ratio  # raw units
    scale = float(sample.norm(dim=1).mean() / math.sqrt(d_in))  # raw = scale × normalised
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = TrainableSAE(d_in, cfg.d_sae, cfg.recipe, cfg.k)  # k may change between stages
    with torch.no_grad():
        model.b_dec.copy_(geometric_median(sample[:4096] / scale))
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(reader.rows / cfg.batch_size)
    total = max(1, int(cfg.epochs * steps_per_epoch))
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=dev)  # tokens since last fired
    step, history, seconds = 0, [], 0.0
    stages: list[dict[str, Any]] = []  # one per schedule: a run extended with more epochs adds one
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        since_fired, step, seconds = (
            state["since_fired"],
            int(state["step"]),
            float(state["seconds"]),
        )
        history = state["history"]
        stages = state.get("stages") or [{"start_step": 0, "total_steps": step}]
    if not stages or stages[-1]["total_steps"] != total:
        stages.append(
            {
                "start_step": step,
                "total_steps": total,
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "k": cfg.k,
                "outlier_norm_ratio": cfg.outlier_norm_ratio,
            }
        )
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress)
    end = total if stop_after is None else min(total, step + stop_after)
    while step < end:
        epoch, skip = divmod(step, steps_per_epoch)
        for i, batch in enumerate(reader.epoch(epoch)):
            if i < skip:
                continue
            if step >= end:
                break
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg)
            batch = batch.to(dev, non_blocking=True)
            x = batch[batch.norm(dim=1) < cutoff] / scale  # (N, d_in), outliers dropped
            dead = since_fired > cfg.dead_tokens
            loss, fired, logs = _loss(model, x, dead, cfg)
            min_kept = logs.pop("min_kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.recipe != "relu_l1":
                model.remove_parallel_grad()
            opt.step()
            if cfg.recipe != "relu_l1":
                model.normalise_decoder()
            with torch.no_grad():
                since_fired = torch.where(fired, 0, since_fired + x.shape[0])
                if cfg.recipe == "batchtopk":
                    th, m = model.threshold, cfg.threshold_momentum
                    th.fill_(min_kept if float(th) < 0 else m * float(th) + (1 - m) * min_kept)
            seconds += time.perf_counter() - t0
            step += 1
            logs.update(step=step, dead=float(dead.float().mean()), lr=lr_at(step - 1, total, cfg))
            if step % 10 == 0 or step == total:
                history.append(logs)
                bar.set_postfix(
                    fvu=f"{logs['fvu']:.3f}", l0=f"{logs['l0']:.1f}", dead=f"{logs['dead']:.3f}"
                )
                if log is not None:
                    log.info("train_step", **logs)
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == end:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "since_fired": since_fired,
                        "step": step,
                        "seconds": seconds,
                        "history": history,
                        "stages": stages,
                    },
                    ckpt,
                )
    bar.close()
    summary = {
        "config": asdict(cfg),
        "input_scale": scale,
        "input_norm_cutoff": cutoff,
        "steps": step,
        "tokens_seen": step * cfg.batch_size,
        "train_seconds": round(seconds, 1),
        "train_tokens_per_second": round(step * cfg.batch_size / max(seconds, 1e-9), 1),
        "final": history[-1] if history else {},
        "stages": stages,
        "dead_fraction_train": float((since_fired > cfg.dead_tokens).float().mean()),
    }
    return model.cpu(), summary
