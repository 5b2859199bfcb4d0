"""``featureguard sae train``: dictionary learning on a model's activations (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

WORDS = "sae train"
HELP = "train an SAE on a model's activations at a hook (corpus → store → train → eval → save)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    p.add_argument("--hook", default="blocks.15.hook_resid_post", help="where the SAE reads")
    p.add_argument(
        "--corpus",
        nargs="*",
        type=Path,
        default=[],
        help="corpus JSONL files (source, split, text|messages); default: build the "
        "offline recipe of sae/training/corpus.py",
    )
    p.add_argument(
        "--corpus-src",
        type=Path,
        default=Path("data/corpus_src"),
        help="project-written corpus sources (default: data/corpus_src)",
    )
    p.add_argument("--work", type=Path, required=True, help="work dir: corpus, store, checkpoints")
    p.add_argument("--out", type=Path, help="where to save the SAE (SAELens v6 format)")
    p.add_argument("--recipe", default="batchtopk", choices=["batchtopk", "topk", "relu_l1"])
    p.add_argument("--width", type=int, default=9216, help="dictionary size d_sae")
    p.add_argument("--k", type=int, default=32, help="active latents per token")
    p.add_argument("--l1", type=float, default=5.0, help="relu_l1: L1 coefficient")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, help="cap on activations collected")
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--stop-after", type=int, help="train at most this many steps in this run")
    p.add_argument(
        "--save-dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="dtype of the saved weights (default float16)",
    )
    p.add_argument(
        "--outlier-norm-ratio",
        type=float,
        default=10.0,
        help="leave out tokens whose norm exceeds this × the median norm",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import json

    import structlog
    import torch

    from sae.lm import load_model
    from sae.training.pipeline import Job, run_job
    from sae.training.trainer import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_model(args.model, device=device)
    cfg = TrainConfig(
        recipe=args.recipe,
        d_sae=args.width,
        k=args.k,
        l1_coefficient=args.l1,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        outlier_norm_ratio=args.outlier_norm_ratio,
    )
    job = Job(
        model=args.model,
        hook=args.hook,
        work=args.work,
        out=args.out,
        corpora=list(args.corpus),
        max_tokens=args.max_tokens,
        eval_tokens=args.eval_tokens,
        stop_after=args.stop_after,
        save_dtype=args.save_dtype,
        train=cfg,
    )
    summary = run_job(job, lm, src_dir=args.corpus_src, log=structlog.get_logger("sae.train"))
    print(json.dumps(summary.get("eval", summary), indent=2))
    return 0
