"""``featureguard features near IDX``: nearest features by decoder cosine similarity."""

from __future__ import annotations

import argparse
from pathlib import Path

WORDS = "features near"
HELP = "nearest features by decoder cosine, with catalog labels and promoted tokens"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sae.discovery.cliutil import add_stack_args

    parser.add_argument("index", type=int, metavar="IDX", help="feature index")
    add_stack_args(parser, span=None)
    parser.add_argument("--k", type=int, default=10, help="neighbours to list (default: 10)")
    parser.add_argument("--catalog", type=Path, help="catalog whose names label the features")
    parser.add_argument("--no-lens", action="store_true", help="skip the logit lens (no model)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from monitor.policy.catalog import load_catalog
    from sae.discovery.activations import load_stack
    from sae.discovery.cliutil import dump_json
    from sae.discovery.inspect import logit_lens
    from sae.discovery.neighbours import nearest

    stack = load_stack(args.sae, args.model, with_model=not args.no_lens)
    labels = {}
    if args.catalog:
        cat = load_catalog(args.catalog)
        if cat.sae.sha256 != stack.sha256:
            from sae.errors import FeatureguardError

            raise FeatureguardError(f"catalog {args.catalog} is pinned to another SAE")
        labels = {f.index: f.name for f in cat.features}
    near = nearest(stack.sae, args.index, args.k, labels=labels)
    if not args.no_lens:
        near = [
            replace(
                n,
                promoted=tuple(
                    t
                    for t, _ in logit_lens(stack.model, stack.tokenizer, stack.sae, n.index, k=5)[0]
                ),
            )
            for n in near
        ]
    if args.json:
        print(
            dump_json(
                {
                    "index": args.index,
                    "label": labels.get(args.index),
                    "neighbours": [asdict(n) for n in near],
                }
            )
        )
        return 0
    print(
        f"neighbours of feature {args.index}"
        + (f" ({labels[args.index]})" if args.index in labels else "")
    )
    for n in near:
        print(
            f"  {n.index:>7}  cos {n.cosine:+.3f}  {n.label or '-':<20} "
            + " ".join(repr(t) for t in n.promoted)
        )
    return 0
