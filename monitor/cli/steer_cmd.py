"""``featureguard steer``: the same prompt with and without one feature clamped, side by side."""

from __future__ import annotations

import argparse

WORDS = "steer"
HELP = "generate with a feature clamped at every token beside the unsteered output (greedy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sae.discovery.cliutil import add_stack_args

    parser.add_argument("--feature", type=int, required=True, metavar="IDX")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--value", type=float, help="clamp to this absolute activation")
    how.add_argument(
        "--times-max",
        type=float,
        metavar="X",
        help="clamp to X × the feature's recorded max (feature_stats)",
    )
    parser.add_argument(
        "--prompt",
        default="Tell me about your weekend.",
        help="the user message (chat template applied unless --raw)",
    )
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    add_stack_args(parser, span=None)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sae.discovery.cliutil import dump_json, stack_from_args
    from sae.discovery.steer import recorded_max, steer

    stack = stack_from_args(args)
    value = (
        args.value if args.value is not None else args.times_max * recorded_max(stack, args.feature)
    )
    res = steer(
        stack, args.prompt, args.feature, value, max_new_tokens=args.max_new_tokens, raw=args.raw
    )
    if args.json:
        print(dump_json(asdict(res)))
        return 0
    print(f"prompt: {res.prompt!r}; feature {res.index} clamped to {res.value:.3f} (greedy)")
    print("--- without ---")
    print(res.baseline)
    print(f"--- with feature {res.index} = {res.value:.3f} ---")
    print(res.steered)
    return 0
