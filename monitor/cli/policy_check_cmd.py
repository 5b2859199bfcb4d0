"""``featureguard policy check FILE...``: validate policies; every problem, never a traceback."""

from __future__ import annotations

import argparse
import json

WORDS = "policy check"
HELP = "validate policy files: print 'FILE: OK' or every error as FILE:LINE:COL: FGxxx message"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.policy.cliutil import add_load_arguments

    parser.add_argument("files", nargs="+", metavar="FILE", help="policy YAML files")
    add_load_arguments(parser)
    parser.add_argument("--no-warnings", action="store_true", help="do not print warnings")
    parser.add_argument("--json", action="store_true", help="print diagnostics as JSON lines")


def run(args: argparse.Namespace) -> int:
    from monitor.policy.cliutil import load_kwargs
    from monitor.policy.diagnostics import Diagnostic

    kwargs = load_kwargs(args)
    failed = 0
    for file in args.files:
        try:
            from monitor.policy.loader import check_policy

            policy, diags = check_policy(file, **kwargs)
        except Exception as exc:  # never a traceback: report the crash as a diagnostic
            policy, diags = None, [Diagnostic("FG100", f"internal error: {exc!r}", file)]
        shown = [d for d in diags if not (args.no_warnings and d.severity == "warning")]
        if args.json:
            for d in shown:
                print(
                    json.dumps(
                        {
                            "file": d.file,
                            "line": d.line,
                            "col": d.col,
                            "code": d.code,
                            "severity": d.severity,
                            "message": d.message,
                        }
                    )
                )
        else:
            for d in shown:
                print(d)
        if policy is None:
            failed += 1
            if not args.json:
                errors = sum(d.severity == "error" for d in diags)
                print(f"{file}: FAILED ({errors} error(s))")
        elif not args.json:
            print(
                f"{file}: OK ({policy.R} rule(s), {policy.K} feature(s), sha256 "
                f"{policy.sha256[:12]})"
            )
    return 1 if failed else 0
