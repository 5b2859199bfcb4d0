"""``featureguard scan FILE.jsonl``: score texts or chats with a policy, without generating.

Input lines are ``{"id", "text"}`` (a completion with an empty prompt) or ``{"id",
"messages"}`` (chat template; the last assistant turn is the completion). Each output line is
``{"id", "fired": [{"rule", "severity", "mode", "first_token", "actions"}], "features":
{name: max activation}, "scored": {...}}``; a bad line gives ``{"id", "error"}``, never nothing.
Feature values come from the runtime's own hook and encode path (one forward per batch).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

WORDS = "scan"
HELP = "score a JSONL file of texts or chats with a policy (no generation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="JSONL file ('-' for stdin)")
    parser.add_argument("--policy", default="default", help="policy file or shipped name")
    parser.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    parser.add_argument("-o", "--output", default="-", help="output JSONL (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-tokens", type=int, default=1024, help="longer texts are an error line"
    )


def parse_line(line: str, tokenizer: Any, max_tokens: int) -> tuple[Any, Any]:
    """``(id, (prompt_ids, completion_ids))``; raises ValueError with the reason."""
    from monitor.runtime.texts import messages_pair, text_pair

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise ValueError("'text' must be a string")
        pair = text_pair(tokenizer, "", obj["text"])
    elif "messages" in obj:
        pair = messages_pair(tokenizer, obj["messages"])
    else:
        raise ValueError("a line needs 'text' or 'messages'")
    n = len(pair[0]) + len(pair[1])
    if n == 0:
        raise ValueError("empty text: nothing to score")
    if n > max_tokens:
        raise ValueError(f"{n} tokens is more than --max-tokens {max_tokens}")
    return obj.get("id"), pair


def _line_id(line: str) -> Any:
    try:
        obj = json.loads(line)
        return obj.get("id") if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        return None


def run(args: argparse.Namespace) -> int:
    import monitor
    from monitor.runtime.textscan import scan_batch
    from sae.lm import load_model

    lm = load_model(args.model)
    src = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    totals: Counter[str] = Counter()
    n_lines = n_errors = n_flagged = 0
    with monitor.attach(lm.model, args.policy, tokenizer=lm.tokenizer) as guarded:
        pol = guarded.policy  # named features only, not the inputs of weights-file probes
        names = {n: pol.feature_columns[n] for n in pol.reported_features}
        pending: list[tuple[int, Any, Any]] = []
        results: dict[int, dict[str, Any]] = {}

        def flush() -> None:
            rows = scan_batch(
                guarded, [p for _, _, (p, _) in pending], [c for *_, (_, c) in pending]
            )
            for (i, rid, (p, c)), row in zip(pending, rows, strict=True):
                fired = [
                    {
                        k: f.as_dict()[k]
                        for k in ("rule", "severity", "mode", "first_token", "actions")
                    }
                    for f in row.report.fired
                ]
                results[i] = {
                    "id": rid,
                    "fired": fired,
                    "features": row.features_max(names),
                    "scored": {
                        "prompt_tokens": [0, len(p)],
                        "completion_tokens": [len(p), len(p) + len(c)],
                        "degraded_tokens": row.report.degraded_tokens,
                    },
                }
            pending.clear()

        for i, raw in enumerate(src):
            line = raw.strip()
            if not line:
                continue
            n_lines += 1
            try:
                rid, pair = parse_line(line, lm.tokenizer, args.max_tokens)
                pending.append((i, rid, pair))
            except ValueError as exc:
                results[i] = {"id": _line_id(line), "error": str(exc)}
            if len(pending) >= args.batch_size:
                flush()
        if pending:
            flush()
    for i in sorted(results):
        rec = results[i]
        n_errors += "error" in rec
        n_flagged += bool(rec.get("fired"))
        totals.update(f["rule"] for f in rec.get("fired", []))
        out.write(json.dumps(rec) + "\n")
    out.flush()
    for f in (src, out):
        if f not in (sys.stdin, sys.stdout):
            f.close()
    summary = ", ".join(f"{r}: {n}" for r, n in totals.most_common()) or "none"
    print(
        f"scanned {n_lines} line(s): {n_flagged} flagged, {n_errors} error(s); matches: {summary}",
        file=sys.stderr,
    )
    return 1 if n_errors else 0
