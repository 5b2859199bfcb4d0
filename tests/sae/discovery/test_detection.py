"""Rule margins agree with the evaluator's conditions; the summary counts what it should."""

from __future__ import annotations

import torch

from monitor.policy.evaluator import Evaluator
from monitor.policy.loader import load_policy_text
from sae.discovery.data import Item
from sae.discovery.detection import Detector, _margin, summarize

POLICY = """
version: 1
policy: {name: m}
saes:
  main: {bundled: test-sae, d_sae: 64}
features:
  a: {index: 3, scale: 2.0}
  b: {index: 7}
  c: {index: 9}
macros:
  ab: {all: [{feature: a, above_scale: 0.5}, {not: {feature: b, above: 0.3}}]}
rules:
  - id: r1
    severity: high
    condition: {any: [{macro: ab}, {count: {features: [a, b, c], above: 0.8, at_least: 2}}]}
    actions: [{type: log}]
"""


def test_margin_is_positive_exactly_where_the_condition_holds() -> None:
    cp = load_policy_text(POLICY, d_sae={"main": 64})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 50, cp.K, generator=g) * 2  # (B, T, K)
    valid = torch.ones(4, 50, dtype=torch.bool)
    ev = Evaluator(cp)
    cond, _, scores = ev.conditions(x, valid, ev.new_state(4))
    m = _margin(cp.rules[0].spec.condition, cp, x, scores)  # (B, T)
    assert torch.equal(m > 0, cond[..., 0]) and 0 < int(cond.sum()) < cond.numel()


def test_summary_separates_plain_benign_and_hard_negatives() -> None:
    items = [
        Item("s1", text="x", category="scam"),
        Item("s2", text="x", category="scam"),
        Item("b1", text="x", category="benign"),
        Item("h1", text="x", category="benign", hard_negative=True),
    ]
    d = Detector(
        "r", "feature", torch.tensor([True, False, False, True]), torch.tensor([3.0, 1.0, 0.0, 2.0])
    )
    row = summarize([d], items)["scam"]["detectors"][0]
    assert row["recall"]["k"] == 1 and row["recall"]["n"] == 2
    assert row["fpr_benign"]["k"] == 0 and row["fpr_hard_negative"]["k"] == 1
    assert row["auc"] == 0.75
