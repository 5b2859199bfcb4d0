"""``featureguard eval detection``: per-category detection quality of a policy on a split.

Rules are judged by the runtime (``monitor.attach`` + the ``scan`` path): every token a
deployed monitor scores, with the same prompt/completion split, ``scope`` and first-token
handling. ``--span`` selects the tokens the raw-activation baseline pools (only the baseline).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

WORDS = "eval detection"
HELP = "recall / FPR (Wilson 95%), AUC and recall@FPR of a policy's rules vs a raw baseline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sae.discovery.data import SPANS

    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/detection"))
    from sae.discovery.data import SPLITS

    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument(
        "--span",
        choices=SPANS,
        default="user",
        help="tokens the baseline pools (rules always score what the runtime scores)",
    )
    parser.add_argument(
        "--rendering",
        choices=["as-is", "raw"],
        default="as-is",
        help="as-is: chat items through the chat template (system prompt included); raw: each "
        "chat item's last user turn as bare text, as callers that send plain prompt strings do "
        "(the evaluated split only; the baseline still trains on the data as is)",
    )
    parser.add_argument("--model", default=None, help="default: the SAE's model_name")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the raw-activation logistic baseline"
    )
    parser.add_argument(
        "--baseline-fpr",
        type=float,
        default=0.05,
        help="baseline threshold: this FPR on dev benign (default: 0.05)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")


def _ci(r: dict[str, Any]) -> str:
    if not r["n"]:
        return f"{'n/a':<19}"
    lo, hi = r["ci95"]
    return f"{r['rate']:6.1%} [{lo:4.0%},{hi:4.0%}] "


def run(args: argparse.Namespace) -> int:
    from monitor.policy.loader import load_policy
    from sae.discovery.activations import load_stack
    from sae.discovery.cliutil import dump_json
    from sae.discovery.detection import evaluate_detection

    cp = load_policy(args.policy)
    sae = cp.saes[0]
    stack = load_stack(sae.path or sae.bundled or "", args.model)
    rep = evaluate_detection(
        cp,
        stack,
        args.data,
        args.split,
        span=args.span,
        baseline=not args.no_baseline,
        baseline_fpr=args.baseline_fpr,
        rendering=args.rendering,
    )
    if args.out:
        args.out.write_text(dump_json(rep) + "\n", encoding="utf-8")
    if args.json:
        print(dump_json(rep))
        return 0
    base = (
        f"; baseline: {rep['baseline_tokens']} tokens of span {rep['span']}, position 0 excluded"
        if rep["baseline_tokens"] is not None
        else ""
    )
    print(
        f"policy {rep['policy']} on {args.data} split {rep['split']} "
        f"(rendering {rep['rendering']}): {rep['items']} items, "
        f"rules: {rep['scored_tokens']} tokens scored by the runtime{base}"
    )
    for cat, block in rep["categories"].items():
        print(
            f"\n{cat}: {block['positives']} positives, {block['benign']} benign, "
            f"{block['hard_negatives']} hard negatives"
        )
        print(
            f"  {'detector':<24} {'kind':<9} {'recall':<19} {'FPR benign':<19} "
            f"{'FPR hard-neg':<19} {'AUC':>5} {'R@1%':>5} {'R@5%':>5}"
        )
        for d in block["detectors"]:
            extra = (
                f"{d['auc']:5.3f} {d['recall_at_fpr_1pct']:5.2f} {d['recall_at_fpr_5pct']:5.2f}"
                if "auc" in d
                else "    -     -     -"
            )
            print(
                f"  {d['detector'][:24]:<24} {d['kind']:<9} {_ci(d['recall'])} "
                f"{_ci(d['fpr_benign'])} {_ci(d['fpr_hard_negative'])} {extra}"
            )
    return 0
