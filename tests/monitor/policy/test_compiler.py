"""Compilation: the features the runtime must encode, shared sub-circuits, rule tables."""

from __future__ import annotations

from monitor.policy.loader import load_policy_text
from tests.monitor.policy.helpers import policy

TWO_SAES = """version: 1
policy: {name: two}
saes:
  early: {bundled: sae-a, d_sae: 100}
  late: {bundled: sae-b, d_sae: 50}
features:
  z: {sae: late, index: 40}
  y: {sae: early, index: 90, export: true}
  x: {sae: early, index: 10}
  x_alias: {sae: early, index: 10}
  w: {sae: late, index: 5}
  unused: {sae: late, index: 7}
rules:
  - {id: r, severity: low, condition: {any: [{feature: z, above: 1}, {feature: x, above: 1},
     {feature: x_alias, above: 2}]}, actions: [{type: ablate, features: [w]}]}
  - {id: disabled-rule, severity: low, enabled: false, condition: {feature: unused, above: 1},
     actions: [{type: log}]}
"""


def test_features_grouped_by_sae_sorted_and_deduplicated() -> None:
    p = load_policy_text(TWO_SAES, d_sae={"early": 100, "late": 50})
    early, late = p.saes
    assert (early.name, early.indices, early.offset) == ("early", (10, 90), 0)
    assert (late.name, late.indices, late.offset) == ("late", (5, 40), 2)
    assert p.K == 4 and "unused" not in p.feature_columns  # disabled rules cost nothing
    assert p.feature_columns["x"] == p.feature_columns["x_alias"] == 0
    assert p.feature_columns["y"] == 1 and p.export_columns == (1,)  # exported, unused by rules
    assert p.feature_columns["w"] == 2  # only an ablate target: still encoded
    assert late.columns == slice(2, 4)
    assert p.on_error == "fail_open"  # no enforce rule stops or replaces


def test_shared_macros_compile_once() -> None:
    rules = "".join(
        f"- {{id: r{i}, severity: low, condition: {{all: [{{macro: m}}, "
        f"{{feature: b, above: {i}}}]}}, actions: [{{type: log}}]}}\n"
        for i in range(10)
    )
    p = policy(rules, extra="macros:\n  m: {not: {feature: a, above: 1}}\n")
    t = p.tensors
    assert t.lit_src.numel() == 11  # a > 1 once, b > i ten times
    assert [lvl[0].shape[0] for lvl in t.levels] == [1, 10]  # one `not`, ten `all`
    assert p.rules[3].features == ("a", "b")


def test_rule_tables_and_default_fail_closed() -> None:
    p = policy("""
        - {id: s, severity: critical, scope: completion, window: {at_least: 2, of_last: 5},
           for: 3, cooldown: 4, hold: 1, condition: {feature: a, above: 1},
           actions: [{type: stop}, {type: alert, channel: ops}]}
        - {id: sh, severity: info, mode: shadow, scope: prompt,
           condition: {feature: b, above_scale: 0.5}, actions: [{type: clamp, features: [c],
           scale: 0.5}]}
    """)
    t = p.tensors
    assert p.on_error == "fail_closed"
    assert t.at_least.tolist() == [2, 1] and t.of_last.tolist() == [5, 1] and t.max_window == 5
    assert t.for_.tolist() == [3, 1] and t.cooldown.tolist() == [4, 0] and t.hold.tolist() == [1, 0]
    assert t.in_prompt.tolist() == [False, True] and t.in_completion.tolist() == [True, False]
    assert t.enforce.tolist() == [True, False] and t.severity.tolist() == [4, 0]
    assert t.clamp_val.tolist() == [0.5] and t.clamp_col.tolist() == [p.feature_columns["c"]]
    assert 2.0 in t.lit_thr.tolist()  # above_scale 0.5 x scale 4.0
    assert p.rules[0].action_kinds == ("stop", "alert")
