"""Windows of every length against the plain-Python reference: short ones are kept as bits of an
int64, longer ones (> 62 tokens) in a ring buffer; both must give the documented semantics."""

from __future__ import annotations

import random

import pytest
import torch

from monitor.policy.evaluator import WINDOW_BITS, Evaluator
from tests.monitor.policy.helpers import policy
from tests.monitor.policy.test_reference import NAMES, VALUES, rand_cond, ref_rule


@pytest.mark.parametrize("longest", [3, WINDOW_BITS, WINDOW_BITS + 1, 90])
def test_windows_match_reference(longest: int) -> None:
    rng = random.Random(longest)
    lengths = [1, 2, longest // 2 or 1, longest]
    rules = "".join(
        f"- id: w{i}\n  severity: low\n  condition: {rand_cond(rng, 2)}\n"
        f"  window: {{at_least: {rng.randint(1, m)}, of_last: {m}}}\n"
        f"  cooldown: {rng.randint(0, 3)}\n  actions: [{{type: log}}]\n"
        for i, m in enumerate(lengths)
    )
    p = policy(rules)
    assert p.tensors.max_window == longest
    B, T = 2, longest * 2 + 7
    gen = torch.Generator().manual_seed(longest)
    vals = torch.tensor(VALUES)[torch.randint(0, len(VALUES), (B, T, 3), generator=gen)]
    acts = torch.zeros(B, T, p.K)
    for j, n in enumerate(NAMES):
        if n in p.feature_columns:
            acts[..., p.feature_columns[n]] = vals[..., j]
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, ::5] = False  # gaps do not enter a window
    ev = Evaluator(p)
    st = ev.new_state(B)
    prefill = ev.step(acts[:, :5], valid[:, :5], "prompt", st)
    steps = [
        ev.step(acts[:, t : t + 1], valid[:, t : t + 1], "completion", st) for t in range(5, T)
    ]
    match = torch.cat([prefill.match] + [r.match for r in steps], 1)
    active = torch.cat([prefill.active] + [r.active for r in steps], 1)
    for b in range(B):
        tokens = [
            (
                {n: float(vals[b, t, j]) for j, n in enumerate(NAMES)},
                "prompt" if t < 5 else "completion",
                bool(valid[b, t]),
            )
            for t in range(T)
        ]
        for r, rule in enumerate(p.rules):
            want_m, want_a = ref_rule(rule.spec, tokens, None)
            assert match[b, :, r].tolist() == want_m, (b, rule.id)
            assert active[b, :, r].tolist() == want_a, (b, rule.id)
    assert match.any()  # not vacuous
