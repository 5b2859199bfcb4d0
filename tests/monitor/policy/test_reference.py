"""The vectorised evaluator against a plain-Python reference of the documented semantics, on
random policies and traces; and prefill-as-one-call against one call per token."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from monitor.policy import schema as s
from monitor.policy.evaluator import Evaluator, context_matches
from tests.monitor.policy.helpers import policy

NAMES = ["a", "b", "c"]
THRESHOLDS = [0.4, 1.0, 2.0]
VALUES = [0.0, 0.5, 1.5, 3.0]


def rand_cond(rng: random.Random, depth: int = 0) -> str:
    kind = rng.choice(["feature"] * 3 + (["any", "all", "not", "count"] if depth < 3 else []))
    if kind == "feature":
        return f"{{feature: {rng.choice(NAMES)}, above: {rng.choice(THRESHOLDS)}}}"
    if kind == "not":
        return f"{{not: {rand_cond(rng, depth + 1)}}}"
    if kind == "count":
        feats = rng.sample(NAMES, rng.randint(1, 3))
        return (
            f"{{count: {{features: [{', '.join(feats)}], above: {rng.choice(THRESHOLDS)},"
            f" at_least: {rng.randint(1, len(feats))}}}}}"
        )
    kids = ", ".join(rand_cond(rng, depth + 1) for _ in range(rng.randint(1, 3)))
    return f"{{{kind}: [{kids}]}}"


def rand_rule(rng: random.Random, i: int) -> str:
    lines = [
        f"- id: r{i}",
        f"  severity: {rng.choice(list(s.SEVERITY_LEVEL))}",
        f"  scope: {rng.choice(['prompt', 'completion', 'both', 'both'])}",
        f"  condition: {rand_cond(rng)}",
    ]
    if rng.random() < 0.5:
        m = rng.randint(1, 5)
        lines.append(f"  window: {{at_least: {rng.randint(1, m)}, of_last: {m}}}")
    for key in ("for", "cooldown", "hold"):
        if rng.random() < 0.4:
            lines.append(f"  {key}: {rng.randint(1 if key == 'for' else 0, 3)}")
    if rng.random() < 0.4:
        lines.append("  exceptions:")
        if rng.random() < 0.5:
            lines.append(f"    - when: {rand_cond(rng, 2)}")
        lines.append("    - context: {tenant: [t1]}")
    lines.append("  actions: [{type: log}]")
    return "\n".join(lines) + "\n"


def ref_cond(cond: Any, vals: dict[str, float]) -> bool:
    if isinstance(cond, s.FeatureCond):
        return vals[cond.feature] > (cond.above or 0.0)
    if isinstance(cond, s.AnyCond):
        return any(ref_cond(c, vals) for c in cond.any)
    if isinstance(cond, s.AllCond):
        return all(ref_cond(c, vals) for c in cond.all)
    if isinstance(cond, s.NotCond):
        return not ref_cond(cond.not_, vals)
    assert isinstance(cond, s.CountCond)
    c = cond.count
    return sum(vals[f] > (c.above or 0.0) for f in c.features or []) >= c.at_least


def ref_rule(
    rule: s.Rule, tokens: list[tuple[dict[str, float], str, bool]], ctx: dict[str, str] | None
) -> tuple[list[bool], list[bool]]:
    """The README semantics, one token at a time, for one rule and one row."""
    window = rule.window or s.Window(at_least=1, of_last=1)
    hist: list[bool] = []
    run = hold_left = n = 0
    last: int | None = None
    active = False
    match_out, active_out = [], []
    for vals, phase, valid in tokens:
        if not valid or (rule.scope != "both" and rule.scope != phase):
            match_out.append(False)
            active_out.append(False)
            continue
        n += 1
        hist.append(ref_cond(rule.condition, vals))
        run = run + 1 if sum(hist[-window.of_last :]) >= window.at_least else 0
        exc = any(
            (
                x.context is None
                or context_matches(
                    {k: [v] if isinstance(v, str) else v for k, v in x.context.items()}, ctx
                )
            )
            and (x.when is None or ref_cond(x.when, vals))
            for x in rule.exceptions
        )
        e = run >= rule.for_ and not exc
        m = e and not active and (last is None or n - last > rule.cooldown)
        if m:
            active, hold_left, last = True, rule.hold, n
        elif active and exc:  # an exception suppresses the rule at once, hold included
            active, hold_left = False, 0
        elif active:
            if e:
                hold_left = rule.hold
            elif hold_left > 0:
                hold_left -= 1
            else:
                active = False
        match_out.append(m)
        active_out.append(active)
    return match_out, active_out


@pytest.mark.parametrize("seed", range(24))
def test_random_policies_match_reference_and_chunking(seed: int) -> None:
    rng = random.Random(seed)
    p = policy("".join(rand_rule(rng, i) for i in range(8)))
    B, Tp, Tc = 3, rng.randint(1, 8), rng.randint(1, 10)
    gen = torch.Generator().manual_seed(seed)
    vals = torch.tensor(VALUES)[torch.randint(0, len(VALUES), (B, Tp + Tc, 3), generator=gen)]
    cols = [p.feature_columns.get(n) for n in NAMES]
    acts = torch.zeros(B, Tp + Tc, p.K)
    for j, col in enumerate(cols):
        if col is not None:
            acts[..., col] = vals[..., j]
    valid = torch.ones(B, Tp + Tc, dtype=torch.bool)
    valid[1, : rng.randint(0, Tp)] = False  # left padding
    valid[2, Tp + rng.randint(0, Tc) :] = False  # finished early
    ctx = [{"tenant": "t1"}, {"tenant": "t2"}, None]

    ev = Evaluator(p)
    runs = {}
    for name, chunks in {
        "prefill": [Tp, Tc],
        "per-token": [1] * (Tp + Tc),
        "mixed": [Tp] + [1] * Tc,
    }.items():
        st = ev.new_state(B, contexts=ctx)
        out, t0 = [], 0
        for size in chunks:
            phase = "prompt" if t0 < Tp else "completion"
            size = min(size, Tp - t0) if t0 < Tp else size
            out.append(ev.step(acts[:, t0 : t0 + size], valid[:, t0 : t0 + size], phase, st))
            t0 += size
        runs[name] = [
            torch.cat([getattr(r, f) for r in out], 1)
            for f in ("match", "active", "decision", "token_index")
        ]
    for name in ("per-token", "mixed"):
        for a, b in zip(runs["prefill"], runs[name], strict=True):
            assert torch.equal(a, b), name

    for b in range(B):
        tokens = [
            (
                {n: float(vals[b, t, j]) for j, n in enumerate(NAMES)},
                "prompt" if t < Tp else "completion",
                bool(valid[b, t]),
            )
            for t in range(Tp + Tc)
        ]
        for r, rule in enumerate(p.rules):
            want_m, want_a = ref_rule(rule.spec, tokens, ctx[b])
            assert runs["prefill"][0][b, :, r].tolist() == want_m, (b, rule.id)
            assert runs["prefill"][1][b, :, r].tolist() == want_a, (b, rule.id)
