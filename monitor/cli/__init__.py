"""The ``featureguard`` command line: one entry point, one module per subcommand.

Each ``monitor/cli/*_cmd.py`` module defines ``WORDS`` (e.g. ``"sae inspect"``), ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``; they are discovered, so a command is
added by adding its module. Modules
and keeps heavy imports (torch, transformers) inside ``run`` so ``--help`` stays fast. Expected user
errors (:class:`sae.errors.FeatureguardError`) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

from sae.errors import FeatureguardError


def _command_modules() -> list[Any]:
    """Every ``*_cmd`` module of this package, sorted by its command words."""
    import monitor.cli as pkg

    mods = [
        importlib.import_module(f"monitor.cli.{info.name}")
        for info in pkgutil.iter_modules(pkg.__path__)
        if info.name.endswith("_cmd")
    ]
    return sorted(mods, key=lambda m: m.WORDS)


GROUP_HELP = {
    "sae": "SAE models: inspect, train, evaluate",
    "policy": "policy files: check, test, diff, explain, schema",
    "features": "find, inspect and catalog SAE features",
    "eval": "evaluate detection quality and interventions",
    "bench": "side-by-side speed benchmarks (ratios)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featureguard",
        description="Safety monitoring for LLMs with sparse-autoencoder features.",
    )
    parser.add_argument("--log-level", default="info", help="structlog level (default: info)")
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="log renderer: JSON lines, or console on a TTY (default: auto)",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for module in _command_modules():
        parts = module.WORDS.split()
        if len(parts) == 1:
            sub = top.add_parser(parts[0], help=module.HELP, description=module.HELP)
        else:
            group, name = parts
            if group not in groups:
                gp = top.add_parser(group, help=GROUP_HELP.get(group, group))
                groups[group] = gp.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", required=True
                )
            sub = groups[group].add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the process exit code."""
    from monitor.logging import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        level=args.log_level,
        json={"auto": None, "json": True, "console": False}[args.log_format],
    )
    try:
        return int(args._run(args) or 0)
    except FeatureguardError as exc:
        print(f"featureguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featureguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
