"""``featureguard policy test FILE...``: run policy unit tests (promtool-style)."""

from __future__ import annotations

import argparse

WORDS = "policy test"
HELP = "run policy test files: activation traces (or texts) in, expected rule matches out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy test YAML files")
    parser.add_argument(
        "--strict-text",
        action="store_true",
        help="fail text cases that cannot run (no model runtime) instead of skipping them",
    )


def run(args: argparse.Namespace) -> int:
    from monitor.policy.diagnostics import PolicyError
    from monitor.policy.testing import default_text_encoder, run_test_file
    from monitor.runtime.texts import lazy_text_encoder

    # Text cases go through the runtime's own encode path; the model loads on first use only.
    encoder = default_text_encoder() or lazy_text_encoder()
    failed = passed = skipped = 0
    for file in args.files:
        try:
            results = run_test_file(file, encode_texts=encoder)
        except PolicyError as exc:
            print(exc.report())
            print(f"{file}: ERROR")
            failed += 1
            continue
        for r in results:
            if r.skipped:
                skipped += 1
                failed += args.strict_text
                print(f"{'FAIL' if args.strict_text else 'SKIP'} {file}: {r.name} ({r.skipped})")
            elif r.ok:
                passed += 1
                print(f"PASS {file}: {r.name}")
            else:
                failed += 1
                print(f"FAIL {file}: {r.name}")
                print("\n".join(r.lines))
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0
