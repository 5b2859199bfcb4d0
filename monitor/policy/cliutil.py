"""Options shared by the ``policy`` commands: how to find SAE widths for checks."""

from __future__ import annotations

import argparse
from typing import Any

from monitor.policy.yaml_strict import MAX_BYTES
from sae.errors import FeatureguardError


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--d-sae",
        action="append",
        default=[],
        metavar="NAME=N",
        help="width of an SAE named in the policy, for SAEs not on disk (repeatable)",
    )
    parser.add_argument(
        "--allow-missing-sae",
        action="store_true",
        help="an SAE that cannot be found is a warning (FG401), not an error (FG310); its "
        "width then comes from --d-sae or the policy's d_sae, if given",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=MAX_BYTES,
        metavar="N",
        help=f"largest policy file accepted (default {MAX_BYTES})",
    )


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    widths: dict[str, int] = {}
    for item in args.d_sae:
        name, _, value = item.partition("=")
        if not name or not value.isdigit():
            raise FeatureguardError(f"--d-sae expects NAME=N, got {item!r}")
        widths[name] = int(value)
    out: dict[str, Any] = {"allow_missing_sae": args.allow_missing_sae, "max_bytes": args.max_bytes}
    if widths:
        out["d_sae"] = widths
    return out
