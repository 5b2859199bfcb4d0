"""``featureguard eval intervention``: does ablating / negatively clamping a rule's features
remove them from what the model writes next, and what does it cost on benign text?

See :mod:`sae.discovery.intervention_eval` for exactly what is generated and measured.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

WORDS = "eval intervention"
HELP = "feature reduction under a rule's ablate/clamp (same tokens) and benign perplexity cost"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="default", help="policy file or shipped name")
    parser.add_argument("--rule", default="scam-request", help="the rule whose features to edit")
    parser.add_argument("--mode", choices=["ablate", "clamp"], default="ablate")
    parser.add_argument(
        "--value", type=float, help="clamp: set the features to this (absolute; e.g. -10)"
    )
    parser.add_argument(
        "--prompts",
        default="default",
        help="'default' (6 built-in scam-email requests), a text file (one prompt a line, "
        "# comments) or JSONL with 'prompt' (and optional 'id') per line",
    )
    parser.add_argument(
        "--benign",
        default="data/detection:plain_benign:test",
        help="benign perplexity texts: JSONL or DIR:CATEGORY[:SPLIT] (default: %(default)s)",
    )
    parser.add_argument("--max-benign", type=int, default=0, help="use the first N (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--model", default=None, help="default: the SAE's model_name")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=100, help="completion column width")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")


def read_prompts(spec: str) -> list[tuple[str, str]]:
    """``(id, prompt)`` pairs from ``default``, a text file or a JSONL file (errors name the
    file and line)."""
    from sae.discovery.intervention_eval import DEFAULT_PROMPTS
    from sae.errors import FeatureguardError

    if spec == "default":
        return [(f"p{i + 1}", p) for i, p in enumerate(DEFAULT_PROMPTS)]
    path = Path(spec)
    if not path.is_file():
        raise FeatureguardError(f"no prompts file {spec!r}", hint="pass a file or 'default'")
    out: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (path.suffix != ".jsonl" and line.lstrip().startswith("#")):
            continue
        if path.suffix != ".jsonl":
            out.append((f"p{len(out) + 1}", line.strip()))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FeatureguardError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise FeatureguardError(f"{path}:{n}: needs a string field 'prompt'")
        out.append((str(row.get("id", f"p{len(out) + 1}")), row["prompt"]))
    if not out:
        raise FeatureguardError(f"{path}: no prompts")
    return out


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:6.1%}"


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [95% CI {ci[0]:.1%}, {ci[1]:.1%}]"


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else "met" if flag else "NOT met"


def _side_by_side(left: str, right: str, width: int, heads: tuple[str, str]) -> list[str]:
    """Two texts in two columns of ``width // 2`` characters (newlines shown as ⏎)."""
    w = max(20, width // 2 - 2)
    cols = [textwrap.wrap(t.replace("\n", " ⏎ "), w) or [""] for t in (left, right)]
    rows = [f"  {heads[0]:<{w}}  {heads[1]}", f"  {'-' * w}  {'-' * w}"]
    for i in range(max(len(c) for c in cols)):
        a, b = (c[i] if i < len(c) else "" for c in cols)
        rows.append(f"  {a:<{w}}  {b}")
    return rows


def print_report(rep: dict[str, Any], width: int) -> None:
    """The human-readable report: settings, per-prompt table, aggregates, completions."""
    what = rep["mode"] if rep["value"] is None else f"clamp to {rep['value']:g}"
    feats = ", ".join(f"{f['name']}={f['index']}" for f in rep["features"])
    print(f"policy {rep['policy']}, rule {rep['rule']}: {what} [{feats}] at {rep['hook']}")
    print(f"intervened generation: {rep['path']}; greedy, {rep['max_new_tokens']} new tokens")
    print(
        "\nreduction = 1 − Σ after / Σ before on the baseline completion's tokens (after: the "
        "edited activation encoded again);\nown tokens = change of what the monitor reads (per "
        "token) on the intervened completion's own tokens"
    )
    print(
        f"{'prompt':<8} {'tokens':>6} {'Σ before':>9} {'Σ after':>9} {'reduction':>9} "
        f"{'own tokens':>10}  deployed rule first matches"
    )
    for p in rep["prompts"]:
        own_pt = sum(p["monitor_own"]) / p["own_tokens"] if p["own_tokens"] else 0.0
        base_pt = sum(p["before"]) / p["tokens"] if p["tokens"] else 0.0
        own = None if base_pt <= 0 else 1 - own_pt / base_pt
        d = p["deployed"]
        dep = (
            "never"
            if d is None
            else f"{d['phase']} token {d['token_index']} (prompt: {d['prompt_tokens']} tokens)"
        )
        print(
            f"{p['id']:<8} {p['tokens']:>6} {sum(p['before']):>9.1f} {sum(p['after']):>9.1f} "
            f"{_pct(p['reduction']):>9} {_pct(own):>10}  {dep}"
        )
    a = rep["aggregate"]
    pp = a["per_prompt"] or {}
    print(
        f"\nreduction on the same tokens, re-encoded after the edit: {_pct(a['reduction'])}"
        f"{_ci(a['ci95'])}; per prompt min {_pct(pp.get('min'))}, median "
        f"{_pct(pp.get('median'))}, max {_pct(pp.get('max'))}"
    )
    print("  per feature: " + ", ".join(f"{k} {_pct(v)}" for k, v in a["per_feature"].items()))
    if a["residue"]:
        print("  what is left (Σ re-encoded pre-activation where still active) comes from:")
        for name, parts in a["residue"].items():
            total = sum(parts.values())
            split = ", ".join(f"{k.replace('_', ' ')} {v:+.1f}" for k, v in parts.items())
            print(f"    {name:<14} {total:7.1f} = {split}")
    print(
        f"as the monitor reads them (pre-edit) on the same tokens: "
        f"{_pct(a['monitor_same_tokens_reduction'])} (the edit acts after the hook)"
    )
    print(
        f"as the monitor reads them on the intervened completion's own tokens (per token): "
        f"{_pct(a['monitor_own_tokens_reduction'])} ({a['before_per_token']:.2f} → "
        f"{a['own_per_token']:.2f})"
    )
    p = rep["perplexity"]
    print(
        f"benign perplexity ({p['texts']} texts, {p['tokens']} tokens; a target feature fires "
        f"on {p['tokens_where_a_target_feature_fires']}): {p['ppl_off']:.3f} → "
        f"{p['ppl_on']:.3f}, {p['relative_increase']:+.2%}{_ci(p['ci95'])}; per text median "
        f"{p['per_text_increase']['median']:+.2%}, max {p['per_text_increase']['max']:+.2%}"
    )
    t = rep["targets"]
    print(
        f"targets (reduction ≥ {t['reduction_at_least']:.0%}, perplexity increase < "
        f"{t['ppl_increase_below']:.0%}): {'met' if t['met'] else 'NOT met'} on the point "
        f"estimates; {_met(t['met_at_ci_bounds'])} at the 95% interval bounds"
    )
    for p in rep["prompts"]:
        print(f"\n[{p['id']}] {p['prompt']}")
        for line in _side_by_side(p["baseline"], p["intervened"], width, ("baseline", what)):
            print(line)


def run(args: argparse.Namespace) -> int:
    from monitor.policy.loader import load_policy
    from monitor.resources import resolve_policy_path
    from sae.discovery.activations import load_stack
    from sae.discovery.cliutil import dump_json
    from sae.discovery.data import load_items
    from sae.discovery.intervention_eval import evaluate_intervention, rule_target

    cp = load_policy(resolve_policy_path(args.policy))
    target = rule_target(cp, args.rule)  # a wrong rule fails before the model loads
    prompts = read_prompts(args.prompts)
    benign = load_items(args.benign)
    if args.max_benign > 0:
        benign = benign[: args.max_benign]
    stack = load_stack(target.sae.path or target.sae.bundled or "", args.model)
    rep = evaluate_intervention(
        cp,
        stack,
        args.rule,
        args.mode,
        args.value,
        prompts,
        benign,
        max_new_tokens=args.max_new_tokens,
        raw=args.raw,
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    if args.out:
        args.out.write_text(dump_json(rep) + "\n", encoding="utf-8")
    if args.json:
        print(dump_json(rep))
    else:
        print_report(rep, args.width)
    return 0
