"""``featureguard policy diff OLD NEW``: what a policy change does, rule by rule."""

from __future__ import annotations

import argparse

WORDS = "policy diff"
HELP = "semantic diff of two policies: matches more/less, severity, enforcement, actions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.policy.cliutil import add_load_arguments

    parser.add_argument("old", metavar="OLD")
    parser.add_argument("new", metavar="NEW")
    add_load_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print changes as JSON")
    parser.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="KIND",
        help="exit 3 if a change of this kind is found (e.g. 'matches more', "
        "'enforcement'); repeatable",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from monitor.policy.cliutil import load_kwargs
    from monitor.policy.diagnostics import PolicyError
    from monitor.policy.diff import format_diff, policy_diff
    from monitor.policy.loader import load_policy

    kwargs = load_kwargs(args)
    kwargs["allow_missing_sae"] = True  # a diff compares files; SAE checks are `check`'s job
    try:
        old, new = load_policy(args.old, **kwargs), load_policy(args.new, **kwargs)
    except PolicyError as exc:
        print(exc.report())
        return 1
    changes = policy_diff(old, new)
    if args.json:
        print(
            json.dumps(
                [{"rule": c.rule, "kind": c.kind, "message": c.message} for c in changes], indent=2
            )
        )
    else:
        print(format_diff(changes))
    return 3 if any(c.kind in args.fail_on for c in changes) else 0
