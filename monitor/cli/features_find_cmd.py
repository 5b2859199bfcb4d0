"""``featureguard features find``: rank SAE features by how well they separate two text sets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

WORDS = "features find"
HELP = "rank features separating positive from negative texts (AUC); optionally catalog one"

SOURCES = (
    "JSONL with text/messages, or DIR:CATEGORY[,..][:SPLIT[,..]] (e.g. data/detection:scam:train)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sae.discovery.cliutil import add_stack_args

    parser.add_argument("--positive", required=True, metavar="P", help=SOURCES)
    parser.add_argument("--negative", required=True, metavar="N", help=SOURCES)
    add_stack_args(parser)
    parser.add_argument("--pool", choices=["max", "mean"], default="max")
    parser.add_argument("--top", type=int, default=20, help="features to list (default: 20)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--allow-test", action="store_true", help="allow test-split items")
    g = parser.add_argument_group("catalog")
    g.add_argument("--write-catalog", type=Path, metavar="FILE", help="add a feature to FILE")
    g.add_argument("--name", help="catalog name of the feature written")
    g.add_argument("--pick", type=int, default=1, help="rank of the feature to write (1 = best)")
    g.add_argument("--description", default="", help="what the feature means (your words)")
    g.add_argument("--replace", action="store_true", help="overwrite an entry of that name")


def write_entry(args: argparse.Namespace, stack: Any, ranked: list[Any], sets: Any) -> str:
    """Add the ``--pick``-th feature to the catalog; returns a one-line summary."""
    import torch

    from monitor.policy.catalog import Evidence
    from sae.discovery import catalog_io as cio
    from sae.discovery.activations import encode_items
    from sae.discovery.data import items_sha256
    from sae.errors import FeatureguardError

    if not args.name or not 1 <= args.pick <= len(ranked):
        raise FeatureguardError("--write-catalog needs --name and 1 <= --pick <= --top")
    fs, (pos, neg) = ranked[args.pick - 1], sets
    scored = encode_items(stack, pos + neg, span=args.span, features=[fs.index])
    peaks = sorted(
        ((float(sc.values[:, 0].max()), sc) for sc in scored[: len(pos)] if sc.values.numel()),
        key=lambda t: -t[0],
    )
    evidence = []
    for value, sc in peaks[:3]:
        t = int(sc.values[:, 0].argmax())
        text = sc.item.text or sc.item.messages[-1]["content"]  # type: ignore[index]
        evidence.append(
            Evidence(
                text=text[:300],
                activation=value,
                token=sc.tokens[t],
                token_index=int(sc.positions[t]),
            )
        )
    scale = cio.recorded_scale(stack, fs.index)
    if scale is None:  # no held-out stats beside the SAE: the max over the texts scanned
        every = torch.cat([sc.values[:, 0] for sc in scored])
        scale = float(every.max()) if every.numel() and float(every.max()) > 0 else None
    desc = (
        f"{args.description + '. ' if args.description else ''}Contrast AUC {fs.auc:.3f}: fires "
        f"on {fs.fire_pos:.0%} of positives vs {fs.fire_neg:.0%} of negatives ({args.pool} pool, "
        f"span {args.span}); positives {len(pos)} texts sha256:{items_sha256(pos)[:16]} "
        f"({args.positive}), negatives {len(neg)} texts sha256:{items_sha256(neg)[:16]} "
        f"({args.negative}); command: {cio.command_line()}"
    )
    cat = cio.open_catalog(args.write_catalog, stack)
    entry = cio.feature_entry(args.name, fs.index, description=desc, scale=scale, evidence=evidence)
    cio.upsert_feature(cat, entry, replace=args.replace)
    cio.save(cat, args.write_catalog)
    return f"wrote {args.name} = feature {fs.index} (scale {scale}) to {args.write_catalog}"


def run(args: argparse.Namespace) -> int:
    from sae.discovery.cliutil import dump_json, stack_from_args
    from sae.discovery.contrast import pooled_features, rank_features
    from sae.discovery.data import load_items, refuse_test_split

    pos, neg = load_items(args.positive), load_items(args.negative)
    refuse_test_split(pos, args.positive, args.allow_test)
    refuse_test_split(neg, args.negative, args.allow_test)
    stack = stack_from_args(args)
    p = pooled_features(stack, pos, how=args.pool, span=args.span)
    n = pooled_features(stack, neg, how=args.pool, span=args.span)
    ranked = rank_features(p.values, n.values, pos_fired=p.fired, neg_fired=n.fired, top=args.top)
    note = write_entry(args, stack, ranked, (pos, neg)) if args.write_catalog else None
    if args.json:
        print(
            dump_json(
                {
                    "positives": len(pos),
                    "negatives": len(neg),
                    "pool": args.pool,
                    "span": args.span,
                    "sae_sha256": stack.sha256,
                    "features": [r.as_dict() for r in ranked],
                    "catalog": note,
                }
            )
        )
        return 0
    print(f"{len(pos)} positive vs {len(neg)} negative texts; pool {args.pool}, span {args.span}")
    print(f"{'rank':>4} {'feature':>7} {'AUC':>6} {'meandiff':>9} {'fire+':>6} {'fire-':>6}")
    for k, r in enumerate(ranked, 1):
        print(
            f"{k:>4} {r.index:>7} {r.auc:6.3f} {r.mean_diff:9.3f} {r.fire_pos:6.1%} "
            f"{r.fire_neg:6.1%}"
        )
    if note:
        print(note)
    return 0
