"""``featureguard features add``: put a feature you chose into a catalog (name, scale, evidence)."""

from __future__ import annotations

import argparse
from pathlib import Path

WORDS = "features add"
HELP = "add (or update) a named feature in a catalog, with its activation scale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sae.discovery.cliutil import add_stack_args

    parser.add_argument("--catalog", type=Path, required=True, metavar="FILE")
    parser.add_argument("--index", type=int, required=True, metavar="IDX")
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", default="")
    add_stack_args(parser, span="all")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=float, help="activation scale (absolute)")
    scale.add_argument(
        "--scale-quantile",
        type=float,
        metavar="Q",
        help="scale = quantile Q of the feature's active token values on --corpus",
    )
    parser.add_argument("--corpus", help="texts for --scale-quantile (JSONL or detection spec)")
    parser.add_argument("--replace", action="store_true", help="overwrite an entry of that name")


def run(args: argparse.Namespace) -> int:
    import torch

    from sae.discovery import catalog_io as cio
    from sae.discovery.activations import encode_items, load_stack
    from sae.discovery.data import items_sha256, load_items
    from sae.errors import FeatureguardError

    need_model = args.scale_quantile is not None
    stack = load_stack(args.sae, args.model, with_model=need_model)
    if not 0 <= args.index < stack.sae.cfg.d_sae:
        raise FeatureguardError(f"feature {args.index} is outside 0..{stack.sae.cfg.d_sae - 1}")
    desc, quantile = args.description, None
    if args.scale is not None:
        scale: float | None = args.scale
    elif need_model:
        if not args.corpus or not 0 < args.scale_quantile < 1:
            raise FeatureguardError("--scale-quantile Q needs 0 < Q < 1 and --corpus")
        items = load_items(args.corpus)
        vals = torch.cat(
            [
                sc.values[:, 0]
                for sc in encode_items(stack, items, span=args.span, features=[args.index])
            ]
        )
        active = vals[vals > 0]
        if active.numel() == 0:
            raise FeatureguardError(f"feature {args.index} never fires on {args.corpus}")
        scale, quantile = float(torch.quantile(active, args.scale_quantile)), args.scale_quantile
        desc += (
            f" (scale: q{quantile} of {active.numel()} active tokens on {args.corpus}, "
            f"sha256:{items_sha256(items)[:16]})"
        )
    else:
        scale = cio.recorded_scale(stack, args.index)
    cat = cio.open_catalog(args.catalog, stack)
    entry = cio.feature_entry(
        args.name, args.index, description=desc.strip(), scale=scale, scale_quantile=quantile
    )
    cio.upsert_feature(cat, entry, replace=args.replace)
    cio.save(cat, args.catalog)
    print(f"wrote {args.name} = feature {args.index} (scale {scale}) to {args.catalog}")
    return 0
