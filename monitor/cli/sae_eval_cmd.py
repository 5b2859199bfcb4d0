"""``featureguard sae eval``: L0, explained variance, MSE, cosine, dead fraction, CE recovered."""

from __future__ import annotations

import argparse
from pathlib import Path

WORDS = "sae eval"
HELP = "evaluate an SAE on held-out text (optionally write the metrics into its metadata)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="SAE folder or bundled name")
    p.add_argument("--model", default=None, help="model (default: the SAE's model_name)")
    p.add_argument(
        "--corpus",
        nargs="*",
        type=Path,
        default=[],
        help="corpus JSONL files; their 'heldout' split is used (default: the "
        "bundled SAE's recipe, rebuilt under --work)",
    )
    p.add_argument("--split", default="heldout", help="corpus split to evaluate (default heldout)")
    p.add_argument("--work", type=Path, default=Path("runs/eval"), help="where to build corpora")
    p.add_argument("--corpus-src", type=Path, default=Path("data/corpus_src"))
    p.add_argument("--tokens", type=int, default=20_000, help="tokens to evaluate")
    p.add_argument("--write", action="store_true", help="write the metrics into the SAE folder")
    p.add_argument("--json", action="store_true", help="print JSON only")


def run(args: argparse.Namespace) -> int:
    import itertools
    import json

    import torch

    from sae.base import parse_dtype
    from sae.lm import load_model
    from sae.loading import load_sae, resolve_sae_path, save_sae
    from sae.training.corpus import iter_corpus
    from sae.training.evaluate import eval_metadata, evaluate_sae
    from sae.training.pipeline import default_corpora, save_feature_stats

    # compute in fp32 whatever the stored dtype (fp16 matmuls are slow on CPU and overflow sums)
    sae = load_sae(args.sae, dtype=torch.float32)
    lm = load_model(args.model or sae.cfg.model_name or "smollm2-135m")
    corpora = args.corpus or default_corpora(args.work, args.corpus_src, seed=0)
    docs = itertools.chain.from_iterable(iter_corpus(p, args.split) for p in corpora)
    result = evaluate_sae(
        lm.model,
        lm.tokenizer,
        sae,
        docs,
        max_tokens=args.tokens,
        progress=not args.json,
    )
    metrics = eval_metadata(result)
    print(json.dumps(metrics, indent=2))
    if not args.json:
        declared = sae.cfg.metadata.get("eval")
        if declared:
            print("declared in the SAE's metadata:", json.dumps(declared))
    if args.write:
        path = resolve_sae_path(args.sae)
        stored = json.loads((path / "cfg.json").read_text()).get("dtype", "float32")
        sae.cfg.metadata.update(metrics)
        sae.to(parse_dtype(stored)).cfg.dtype = stored  # keep the stored dtype on disk
        save_sae(sae, path)
        save_feature_stats(path, result)
    return 0
