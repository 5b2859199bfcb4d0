"""``featureguard features train-probe``: a logistic probe over SAE features, into a catalog."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

WORDS = "features train-probe"
HELP = "train an L1/L2 logistic probe over SAE features (CV, FPR-calibrated) into a catalog"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.cli.features_find_cmd import SOURCES
    from sae.discovery.cliutil import add_stack_args

    parser.add_argument("--positive", required=True, metavar="P", help=SOURCES)
    parser.add_argument("--negative", required=True, metavar="N", help=SOURCES)
    parser.add_argument("--name", required=True, help="probe name in the catalog")
    parser.add_argument("--catalog", type=Path, required=True, metavar="FILE")
    feats = parser.add_mutually_exclusive_group()
    feats.add_argument(
        "--features",
        metavar="LIST",
        help="indices, catalog names or probe:NAME, commas; `all` = the whole dictionary (a "
        "probe over more than 256 features is stored in a weights file next to the catalog)",
    )
    feats.add_argument(
        "--top", type=int, default=64, help="select the N best features (default: 64)"
    )
    parser.add_argument(
        "--select",
        choices=["auc", "greedy"],
        default="auc",
        help="with --top: auc = best single-feature contrast AUC; greedy = matching pursuit on "
        "the probe's own objective (refit, add the features with the largest loss gradient)",
    )
    add_stack_args(parser, span="all")
    parser.add_argument(
        "--pool",
        choices=["max", "mean", "ema"],
        default="max",
        help="max: peak per-token score (pooling token); mean: running mean over the row; ema: "
        "exponentially weighted mean (follows the recent tokens; see --half-life)",
    )
    parser.add_argument(
        "--half-life",
        type=float,
        default=None,
        metavar="TOKENS",
        help="with --pool ema: tokens over which a token's weight halves (default: 16)",
    )
    parser.add_argument("--penalty", choices=["l1", "l2"], default="l2")
    parser.add_argument(
        "--for",
        dest="sustain",
        type=int,
        default=1,
        metavar="N",
        help="train and calibrate for a rule with `for: N` (score held on N consecutive tokens)",
    )
    parser.add_argument("--folds", type=int, default=5, help="CV folds (default: 5)")
    parser.add_argument(
        "--cv-by",
        choices=["item", "source"],
        default="item",
        help="item: stratified folds of items; source: each fold holds out whole source files "
        "(authoring batches), so lambda and the out-of-fold threshold are chosen on batches "
        "the probe never saw (needs at least --folds files of positives and of negatives)",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=150,
        help="L-BFGS iterations of each probe fit (default: %(default)s; fewer = earlier stop; "
        "the warm start on row means always runs at least 200)",
    )
    parser.add_argument(
        "--lambdas",
        default="0.001,0.01,0.1,1",
        metavar="LIST",
        help="penalty strengths tried by CV, commas (default: %(default)s)",
    )
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument(
        "--calibration-negative",
        metavar="SPEC",
        help="negatives for the threshold (e.g. data/detection:plain_benign:dev); those that "
        "are also training negatives are scored out of fold; default: every training negative, "
        "out of fold",
    )
    parser.add_argument(
        "--also-raw",
        action="store_true",
        help="also train and calibrate on each chat item's last user turn as raw text (no chat "
        "template), in the same CV fold as its templated twin: one threshold for callers that "
        "send bare prompts and for chat-templated ones",
    )
    parser.add_argument("--replace", action="store_true", help="overwrite a probe of that name")
    parser.add_argument("--allow-test", action="store_true", help="allow test-split items")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from sae.discovery.cliutil import dump_json, stack_from_args
    from sae.discovery.data import load_items, refuse_test_split
    from sae.discovery.probe_catalog import train_probe
    from sae.errors import FeatureguardError

    sets = {}
    for key in ("positive", "negative", "calibration_negative"):
        spec = getattr(args, key)
        if spec:
            sets[key] = load_items(spec)
            refuse_test_split(sets[key], spec, args.allow_test)
    try:
        lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
    except ValueError:
        lambdas = []
    if not lambdas or any(not math.isfinite(v) or v < 0 for v in lambdas):
        raise FeatureguardError(
            f"--lambdas: expected non-negative numbers separated by commas, not {args.lambdas!r}"
        )
    if args.max_iter < 1:
        raise FeatureguardError(f"--max-iter must be at least 1, not {args.max_iter}")
    half_life = args.half_life
    if half_life is None and args.pool == "ema":
        half_life = 16.0
    stack = stack_from_args(args)
    out = train_probe(
        stack,
        sets["positive"],
        sets["negative"],
        catalog=args.catalog,
        name=args.name,
        features=args.features,
        top=args.top,
        select=args.select,
        pool=args.pool,
        span=args.span,
        penalty=args.penalty,
        sustain=args.sustain,
        k=args.folds,
        target_fpr=args.target_fpr,
        calibration=sets.get("calibration_negative"),
        replace=args.replace,
        sources=(args.positive, args.negative, args.calibration_negative),
        lambdas=lambdas,
        max_iter=args.max_iter,
        also_raw=args.also_raw,
        half_life=half_life,
        cv_by=args.cv_by,
    )
    if args.json:
        print(dump_json(out))
        return 0
    cal = out["calibration"]
    n_features = out["features"] if isinstance(out["features"], int) else len(out["features"])
    held = f", held for {out['sustain']} tokens" if out["sustain"] > 1 else ""
    print(
        f"probe {out['probe']} ({n_features} features, pooling {out['pooling']}{held}) "
        f"→ {out['catalog']}"
        + (f" (weights in {out['weights_file']})" if out["weights_file"] else "")
    )
    for lam, (m, sd) in out["cv_auc"].items():
        mark = " *" if float(lam) == out["lambda"] else ""
        print(f"  lambda {lam:>8}: CV AUC {m:.3f} ± {sd:.3f}{mark}")
    print(
        f"  threshold {out['threshold']:.6g} ({out['link']}); FPR {cal['calibration_fpr']:.3f} "
        f"on {cal['calibration_source']}; out-of-fold recall {cal['oof_recall']:.3f}"
        + (f"; use it in a rule with `for: {out['sustain']}`" if out["sustain"] > 1 else "")
    )
    return 0
