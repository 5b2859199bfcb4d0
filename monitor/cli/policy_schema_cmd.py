"""``featureguard policy schema``: the policy file's JSON Schema, for editor completion."""

from __future__ import annotations

import argparse

WORDS = "policy schema"
HELP = "print the JSON Schema of policy files (for the YAML language server)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from monitor.policy.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
