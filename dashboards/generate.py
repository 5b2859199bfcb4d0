"""Generate the committed Grafana dashboard JSON from Python (grafana-foundation-sdk).

    .venv/bin/python -m dashboards.generate            # rewrite dashboards/*.json
    .venv/bin/python -m dashboards.generate --check    # exit 1 if the committed JSON drifted
    python dashboards/generate.py --out /tmp/dash      # write elsewhere

Output is deterministic: panel ids numbered in order, keys sorted, two-space indent, one
trailing newline, so the committed files change only when the Python does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import overview, safety

HERE = Path(__file__).resolve().parent
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "featureguard-overview.json": overview.build,
    "featureguard-safety.json": safety.build,
}
"""Committed file name → dashboard builder."""


def render(builder: Dashboard) -> str:
    """The dashboard as JSON text: panel ids 1..N in layout order, sorted keys, newline."""
    model = builder.build()
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i
    return json.dumps(model, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_all(out_dir: Path) -> list[Path]:
    """Write every dashboard into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in DASHBOARDS.items():
        path = out_dir / name
        path.write_text(render(build()), encoding="utf-8")
        paths.append(path)
    return paths


def drifted(committed_dir: Path = HERE) -> list[str]:
    """Names of committed dashboards that differ from what the generator produces now."""
    return [
        name
        for name, build in DASHBOARDS.items()
        if not (committed_dir / name).is_file()
        or (committed_dir / name).read_text(encoding="utf-8") != render(build())
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dashboards.generate", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="output folder (default: dashboards/)")
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = p.parse_args(argv)
    if args.check:
        bad = drifted(args.out)
        for name in bad:
            print(
                f"{args.out / name}: out of date; run python -m dashboards.generate",
                file=sys.stderr,
            )
        return 1 if bad else 0
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
