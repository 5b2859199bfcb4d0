"""``featureguard sae inspect PATH``: what an SAE is, where it reads, what it claims, its sha256."""

from __future__ import annotations

import argparse
from typing import Any

WORDS = "sae inspect"
HELP = "show an SAE's format, config, tensor shapes, hook, declared metrics and sha256"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sae", metavar="PATH", help="an SAE folder/file, or a bundled SAE name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(name_or_path: str) -> dict[str, Any]:
    """Everything ``sae inspect`` prints, as a JSON-able dict."""
    from sae.loading import load_sae, resolve_sae_path, sae_sha256
    from sae.preflight import declared_metrics

    path = resolve_sae_path(name_or_path)
    sae = load_sae(path)
    cfg = sae.cfg.to_dict()
    metadata = cfg.pop("metadata")
    return {
        "path": str(path),
        "format": sae.source_format,
        "weights_file": str(sae.weights_file),
        "sha256": sae_sha256(path),
        "config": cfg,
        "hook_name": sae.cfg.hook_name,
        "shapes": {n: list(p.shape) for n, p in sae.named_parameters()},
        "declared_metrics": declared_metrics(sae),
        "metadata": metadata,
    }


def run(args: argparse.Namespace) -> int:
    import json

    info = describe(args.sae)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cfg = info["config"]
    print(f"SAE        {info['path']}")
    print(f"format     {info['format']} ({info['weights_file']})")
    print(f"sha256     {info['sha256']}")
    print(
        f"arch       {cfg['architecture']}  d_in={cfg['d_in']}  d_sae={cfg['d_sae']}  "
        f"dtype={cfg['dtype']}" + (f"  k={cfg['k']}" if cfg.get("k") else "")
    )
    print(f"hook       {info['hook_name'] or '(not declared)'}  model={cfg['model_name']}")
    print(
        f"input      apply_b_dec_to_input={cfg['apply_b_dec_to_input']}  "
        f"normalize_activations={cfg['normalize_activations']}"
    )
    print("tensors    " + "  ".join(f"{n} {tuple(s)}" for n, s in info["shapes"].items()))
    metrics = info["declared_metrics"]
    print(
        "declared   "
        + (
            "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            if metrics
            else "(no metrics in metadata['eval'])"
        )
    )
    rest = {k: v for k, v in info["metadata"].items() if k != "source_cfg"}
    if rest:
        print("metadata   " + json.dumps(rest, default=str)[:400])
    return 0
