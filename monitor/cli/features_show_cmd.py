"""``featureguard features show IDX``: what one feature responds to and what it promotes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

WORDS = "features show"
HELP = (
    "top-activating contexts, histogram, density and logit lens of one feature; or a probe's "
    "top inputs"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sae.discovery.cliutil import add_stack_args

    parser.add_argument("index", type=int, nargs="?", metavar="IDX", help="feature index")
    parser.add_argument(
        "--probe",
        metavar="NAME",
        help="instead of one feature: a probe's top positive and negative inputs, with their "
        "catalog labels and the tokens each promotes (needs --catalog)",
    )
    parser.add_argument("--catalog", type=Path, metavar="FILE", help="the catalog of --probe")
    add_stack_args(parser, span="all")
    parser.add_argument(
        "--corpus",
        help="JSONL or detection-set spec (default: data/corpus/*.jsonl held-out split if "
        "present, else data/detection:*:train,dev)",
    )
    parser.add_argument("--limit", type=int, default=400, help="texts to scan (default: 400)")
    parser.add_argument("--top", type=int, default=10, help="contexts to show (default: 10)")
    parser.add_argument("--html", type=Path, metavar="OUT", help="also write an HTML page")
    parser.add_argument("--json", action="store_true", help="print JSON")


def corpus_items(spec: str | None, limit: int) -> tuple[str, list[Any]]:
    """The texts to scan and a name for them (see ``--corpus``)."""
    from sae.discovery.data import load_items, read_jsonl

    if spec:
        return spec, load_items(spec)[:limit]
    files = sorted(Path("data/corpus").glob("*.jsonl"))
    held = [it for f in files for it in read_jsonl(f) if it.split == "heldout"]
    if held:
        return "data/corpus/*.jsonl (heldout)", held[:limit]
    spec = "data/detection:*:train,dev"
    return spec, load_items(spec)[:limit]


def run_probe(args: argparse.Namespace) -> int:
    from sae.discovery import catalog_io as cio
    from sae.discovery.cliutil import dump_json, stack_from_args
    from sae.discovery.inspect import logit_lens
    from sae.discovery.probe_catalog import probe_inputs, top_inputs
    from sae.errors import FeatureguardError

    if args.catalog is None:
        raise FeatureguardError("--probe needs --catalog FILE")
    if not args.catalog.exists():
        raise FeatureguardError(f"no catalog at {args.catalog}")
    stack = stack_from_args(args)
    cat = cio.open_catalog(args.catalog, stack)  # refuses a catalog made for another SAE
    inputs = probe_inputs(cat, args.probe)
    scale = _max_activations(stack)  # rank by weight × the feature's max activation, if known
    pos, neg = top_inputs(inputs, args.top, scale)
    lens = {
        i: [t for t, _ in logit_lens(stack.model, stack.tokenizer, stack.sae, i, k=4)[0]]
        for _, i, _, _ in pos + neg
    }
    spec = cat.probes[args.probe]
    side = lambda rows: [  # noqa: E731
        {
            "name": n,
            "index": i,
            "weight": w,
            "max_activation": scale[i] if scale else None,
            "label": lab,
            "promotes": lens[i],
        }
        for n, i, w, lab in rows
    ]
    if args.json:
        print(
            dump_json(
                {
                    "probe": args.probe,
                    "inputs": len(inputs),
                    "positive": side(pos),
                    "negative": side(neg),
                }
            )
        )
        return 0
    where = f"weights file {spec.weights_file}" if spec.is_file else "inline"
    print(
        f"probe {args.probe} ({len(inputs)} inputs, {where}; pooling {spec.pooling}, "
        f"{spec.link} threshold {spec.threshold:.6g}, bias {spec.bias:+.4g})"
    )
    rank = "weight × max activation" if scale else "weight"
    for title, rows in (("raise the score", pos), ("lower the score", neg)):
        print(f"top inputs that {title} (by {rank}):")
        for n, i, w, lab in rows:
            label = f" — {lab}" if lab and lab != "(probe input)" else ""
            toks = " ".join(repr(t) for t in lens[i])
            at_max = f" (×max {w * scale[i]:+.3f})" if scale else ""
            name = n if n == f"#{i}" else f"{n} (#{i})"
            print(f"  {w:+9.4f}{at_max}  {name}{label}; promotes {toks}")
    return 0


def _max_activations(stack: Any) -> list[float] | None:
    """Each feature's max activation on held-out text (the SAE's feature_stats), if shipped."""
    from sae.training.pipeline import load_feature_stats

    stats = load_feature_stats(stack.sae_path) if stack.sae_path is not None else None
    return None if stats is None else [float(v) for v in stats["max"].tolist()]


def run(args: argparse.Namespace) -> int:
    from sae.discovery.cliutil import dump_json, stack_from_args
    from sae.discovery.inspect import highlight, histogram, html_report, inspect_feature
    from sae.errors import FeatureguardError

    if args.probe:
        if args.index is not None:
            raise FeatureguardError("give a feature index or --probe, not both")
        return run_probe(args)
    if args.index is None:
        raise FeatureguardError("give a feature index, or --probe NAME --catalog FILE")

    name, items = corpus_items(args.corpus, args.limit)
    stack = stack_from_args(args)
    rep = inspect_feature(stack, items, args.index, span=args.span, top=args.top)
    if args.html:
        args.html.write_text(html_report(rep, f"feature {args.index} ({stack.name})"), "utf-8")
    if args.json:
        print(
            dump_json(
                {
                    "index": rep.index,
                    "corpus": name,
                    "scored_tokens": rep.values.numel(),
                    "density": rep.density,
                    "promoted": rep.promoted,
                    "suppressed": rep.suppressed,
                    "contexts": [
                        {"id": c.item_id, "peak": c.peak, "tokens": c.tokens, "values": c.values}
                        for c in rep.contexts
                    ],
                }
            )
        )
        return 0
    print(
        f"feature {rep.index} of {stack.name}; corpus {name} ({len(items)} texts, "
        f"{rep.values.numel()} scored tokens, span {args.span})"
    )
    print(f"density  {rep.density:.4%} of scored tokens active")
    print("promotes   " + "  ".join(f"{t!r} {v:+.2f}" for t, v in rep.promoted))
    print("suppresses " + "  ".join(f"{t!r} {v:+.2f}" for t, v in rep.suppressed))
    print("histogram of active values:")
    print("\n".join("  " + line for line in histogram(rep.values)))
    print("top contexts ([[token|value]] marks active tokens):")
    for c in rep.contexts:
        print(f"  {c.peak:8.3f}  {c.item_id}: {highlight(c)!r}")
    if not rep.contexts:
        print("  (the feature never fired on these texts)")
    if args.html:
        print(f"wrote {args.html}")
    return 0
