"""``featureguard policy explain FILE``: the compiled policy in plain words."""

from __future__ import annotations

import argparse

WORDS = "policy explain"
HELP = "describe a policy in plain words: features, rules, timing, exceptions, actions, probes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.policy.cliutil import add_load_arguments

    parser.add_argument("file", metavar="FILE")
    add_load_arguments(parser)
    parser.add_argument("--top", type=int, default=5, help="probe features to show (default 5)")


def run(args: argparse.Namespace) -> int:
    from monitor.policy.cliutil import load_kwargs
    from monitor.policy.diagnostics import PolicyError
    from monitor.policy.explain import explain
    from monitor.policy.loader import load_policy

    try:
        policy = load_policy(args.file, **load_kwargs(args))
    except PolicyError as exc:
        print(exc.report())
        return 1
    print(explain(policy, top=args.top))
    return 0
