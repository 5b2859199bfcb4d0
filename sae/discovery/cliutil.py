"""Arguments and loading shared by the ``features``, ``steer`` and ``eval detection`` commands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sae.discovery.data import DEFAULT_SAE, SPANS

if TYPE_CHECKING:
    from sae.discovery.activations import Stack


def add_stack_args(parser: argparse.ArgumentParser, *, span: str | None = "user") -> None:
    """``--sae``, ``--model`` and (unless ``span`` is None) ``--span``."""
    parser.add_argument(
        "--sae", default=DEFAULT_SAE, help=f"bundled SAE name or path (default: {DEFAULT_SAE})"
    )
    parser.add_argument(
        "--model", default=None, help="model alias or path (default: the SAE's model_name)"
    )
    if span is not None:
        parser.add_argument(
            "--span",
            choices=SPANS,
            default=span,
            help="tokens scored: all (but position 0), the last user turn, or the completion; "
            f"`text` items are scored whole (default: {span})",
        )


def stack_from_args(args: argparse.Namespace) -> Stack:
    from sae.discovery.activations import load_stack

    return load_stack(args.sae, args.model)


def dump_json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)
