"""The whole ``featureguard sae train`` job: corpus → activations → training → eval → saved SAE.

Every stage is resumable (the corpus is rebuilt only if missing, the store records the documents
it holds, the trainer checkpoints), so a killed job is re-run with the same command. The saved
SAE carries its provenance in ``metadata``: the command, corpus recipe and token counts per
source, seed, training config and throughput, and the held-out eval metrics.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae.base import parse_dtype
from sae.loading import save_sae
from sae.training.corpus import build_corpus, iter_corpus
from sae.training.evaluate import eval_metadata, evaluate_sae, export_sae
from sae.training.store import ActivationReader, collect
from sae.training.trainer import TrainConfig, train_sae

FEATURE_STATS = "feature_stats.safetensors"
# Collected in this order until --max-tokens: all of the (small, safety-relevant) project-written
# text first, then as much of the shuffled Debian text as the cap allows.
DEFAULT_CORPORA = {
    "project": ("project",),
    "debian": ("austen", "gcide", "wordnet", "fortunes"),
}


@dataclass
class Job:
    model: str
    hook: str
    work: Path
    out: Path | None
    corpora: list[Path] = field(default_factory=list)  # empty: build the default recipe
    max_tokens: int | None = None
    eval_tokens: int = 20_000
    stop_after: int | None = None
    progress: bool = True
    save_dtype: str = "float16"
    train: TrainConfig = field(default_factory=TrainConfig)


def save_feature_stats(sae_dir: Path, result: dict[str, Any]) -> None:
    """Per-feature max activation and firing density on held-out text, beside the SAE."""
    import torch
    from safetensors.torch import save_file

    save_file(
        {
            "max": torch.tensor(result["feature_max"]),
            "density": torch.tensor(result["feature_density"]),
        },
        str(sae_dir / FEATURE_STATS),
    )


def load_feature_stats(sae_dir: Path) -> dict[str, Any] | None:
    """``{"max": (d_sae,), "density": (d_sae,)}`` if the SAE folder has them."""
    from safetensors.torch import load_file

    path = Path(sae_dir) / FEATURE_STATS
    return load_file(str(path)) if path.exists() else None


def default_corpora(work: Path, src_dir: Path, seed: int) -> list[Path]:
    """Build (once) the default recipe's corpus files under ``work``."""
    paths = []
    for name, sources in DEFAULT_CORPORA.items():
        path = work / f"corpus-{name}.jsonl"
        if not path.exists():
            counts = build_corpus(path, src_dir=src_dir, seed=seed, sources=sources)
            print(f"corpus {path.name}: documents per source {counts}", file=sys.stderr)
        paths.append(path)
    return paths


def run_job(job: Job, lm: Any, *, src_dir: Path, log: Any = None) -> dict[str, Any]:
    """Run (or resume) the job; returns the summary written into the SAE's metadata."""
    job.work.mkdir(parents=True, exist_ok=True)
    corpora = job.corpora or default_corpora(job.work, src_dir, job.train.seed)
    store = job.work / "store"
    t0 = time.perf_counter()
    man = None
    for path in corpora:
        man = collect(
            lm.model,
            lm.tokenizer,
            job.hook,
            job.model,
            iter_corpus(path, "train"),
            store,
            corpus_name=path.name,
            max_tokens=job.max_tokens,
            progress=job.progress,
        )
    assert man is not None
    collect_summary = {
        "tokens": man.rows,
        "tokens_per_source": man.tokens_per_source,
        "seconds": round(man.seconds, 1),
        "tokens_per_second": round(man.rows / max(man.seconds, 1e-9), 1),
    }
    reader = ActivationReader(store, batch_size=job.train.batch_size, seed=job.train.seed)
    trained, train_summary = train_sae(
        reader,
        job.train,
        job.work / "train",
        log=log,
        stop_after=job.stop_after,
        progress=job.progress,
    )
    if train_summary["steps"] < int(job.train.epochs * -(-reader.rows // job.train.batch_size)):
        print("training paused (--stop-after); run the same command to resume", file=sys.stderr)
        return {"paused_at_step": train_summary["steps"]}
    provenance: dict[str, Any] = {
        "command": "featureguard " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "corpus": [p.name for p in corpora],
        "collection": collect_summary,
        "training": train_summary,
        "featureguard_recipe": "sae/training (BatchTopK → jumprelu)",
    }
    sae = export_sae(
        trained,
        train_summary["input_scale"],
        hook_name=job.hook,
        model_name=job.model,
        metadata={"provenance": provenance},
    )
    # Evaluate exactly what is shipped: weights rounded to the saved dtype, computed in fp32.
    sae = sae.to(parse_dtype(job.save_dtype)).float()
    heldout = itertools.chain.from_iterable(iter_corpus(p, "heldout") for p in corpora)
    sae.cfg.metadata["input_norm_cutoff"] = train_summary["input_norm_cutoff"]  # eval reads it
    result = evaluate_sae(
        lm.model,
        lm.tokenizer,
        sae,
        heldout,
        max_tokens=job.eval_tokens,
        progress=job.progress,
    )
    sae.cfg.metadata.update(eval_metadata(result))
    sae.cfg.metadata["feature_stats_file"] = FEATURE_STATS
    provenance["total_seconds"] = round(time.perf_counter() - t0, 1)
    if job.out is not None:
        shipped = sae.to(parse_dtype(job.save_dtype))
        shipped.cfg.dtype = job.save_dtype
        save_sae(shipped, job.out)
        save_feature_stats(job.out, result)
        (job.out / "PROVENANCE.json").write_text(
            json.dumps(
                {
                    "provenance": provenance,
                    "eval": eval_metadata(result),
                    "job": {
                        "model": job.model,
                        "hook": job.hook,
                        "train": asdict(job.train),
                        "max_tokens": job.max_tokens,
                        "eval_tokens": job.eval_tokens,
                    },
                },
                indent=2,
            )
        )
    return {"eval": eval_metadata(result), "provenance": provenance}
