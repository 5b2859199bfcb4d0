"""Evaluator semantics on synthetic activations: exact expected firings per token."""

from __future__ import annotations

import math

import pytest
import torch

from monitor.policy.evaluator import Evaluator
from tests.monitor.policy.helpers import acts_of, fired, matches, policy, step_all

ON, OFF = 2.0, 0.0


def bits(*xs: int) -> list[float]:
    return [ON if x else OFF for x in xs]


def test_threshold_is_strict_and_match_is_first_token_of_each_episode() -> None:
    p = policy("""
        - id: r
          severity: low
          condition: {feature: a, above: 1.0}
          actions: [{type: log}]
    """)
    res = step_all(p, acts_of(p, 6, a=[0.0, 1.0, 1.5, 3.0, 0.0, 2.0])[None])
    assert matches(res) == [(2, 0), (5, 0)]
    assert res.active[0, :, 0].tolist() == [False, False, True, True, False, True]
    assert res.log[0, :, 0].tolist() == [False, False, True, False, False, True]


def test_above_scale_is_a_fraction_of_the_feature_scale() -> None:
    p = policy("""
        - id: r
          severity: low
          condition: {feature: b, above_scale: 0.5}   # b's scale is 4.0: threshold 2.0
          actions: [{type: log}]
    """)
    assert fired(p, {"b": [2.0, 2.1]}) == [("r", 1)]


@pytest.mark.parametrize(
    "cond, expect",
    [
        ("{any: [{feature: a, above: 1}, {feature: b, above: 1}]}", [1, 2, 3]),
        ("{all: [{feature: a, above: 1}, {feature: b, above: 1}]}", [3]),
        ("{not: {feature: a, above: 1}}", [0, 2]),
        ("{count: {list: ab, above: 1, at_least: 2}}", [3]),
        ("{count: {features: [a, b, c], above: 1, at_least: 1}}", [1, 2, 3]),
        ("{all: [{macro: m}, {not: {feature: b, above: 1}}]}", [1]),
    ],
)
def test_condition_tree(cond: str, expect: list[int]) -> None:
    p = policy(
        f"""
        - id: r
          severity: low
          condition: {cond}
          actions: [{{type: log}}]
    """,
        extra="macros:\n  m: {feature: a, above: 1}\n",
    )
    res = step_all(p, acts_of(p, 4, a=bits(0, 1, 0, 1), b=bits(0, 0, 1, 1))[None])
    assert torch.nonzero(res.active[0, :, 0]).flatten().tolist() == expect


def rule(extra: str, cond: str = "{feature: a, above: 1}") -> str:
    return f"""
        - id: r
          severity: low
          condition: {cond}
          {extra}
          actions: [{{type: log}}]
    """


@pytest.mark.parametrize(
    "extra, trace, expect_match, expect_active",
    [
        # at least 2 of the last 3 tokens
        ("window: {at_least: 2, of_last: 3}", (1, 0, 1, 0, 0, 1, 1), [2, 6], [2, 6]),
        # sustained for 3 tokens
        ("for: 3", (1, 1, 1, 1, 0, 1, 1, 1), [2, 7], [2, 3, 7]),
        # cooldown 3: no new match within 3 tokens of the last one
        ("cooldown: 3", (1, 0, 1, 0, 1, 0, 1), [0, 4], [0, 4]),
        # hold 2: stays active 2 tokens after the condition ends
        ("hold: 2", (1, 0, 0, 0, 1, 0), [0, 4], [0, 1, 2, 4, 5]),
        # window + for: the windowed condition must hold 2 tokens running
        (
            "window: {at_least: 2, of_last: 3}\n          for: 2",
            (1, 1, 1, 0, 0, 0, 1, 1),
            [2],
            [2, 3],
        ),
        # cooldown does not cut an active episode short, and a condition still true when the
        # cooldown ends matches then
        ("cooldown: 2", (1, 1, 1, 0, 1, 1, 1), [0, 4], [0, 1, 2, 4, 5, 6]),
        ("cooldown: 5", (1, 0, 1, 1, 1, 1, 1, 1), [0, 6], [0, 6, 7]),
    ],
)
def test_temporal(
    extra: str, trace: tuple[int, ...], expect_match: list[int], expect_active: list[int]
) -> None:
    p = policy(rule(extra))
    res = step_all(p, acts_of(p, len(trace), a=bits(*trace))[None])
    assert [t for t, _ in matches(res)] == expect_match
    assert torch.nonzero(res.active[0, :, 0]).flatten().tolist() == expect_active


def test_feature_exception_suppresses_and_ends_the_episode() -> None:
    p = policy("""
        - id: r
          severity: low
          condition: {feature: a, above: 1}
          exceptions:
            - {name: fiction, when: {feature: c, above: 0.5}}
          actions: [{type: log}]
    """)
    assert fired(p, {"a": bits(1, 1, 1, 1), "c": [0, 1, 0, 0]}) == [("r", 0), ("r", 2)]


def test_context_exception_per_row_with_globs() -> None:
    p = policy("""
        - id: r
          severity: low
          condition: {feature: a, above: 1}
          exceptions:
            - context: {tenant: [redteam, "eval-*"], route: "/v1/*"}
          actions: [{type: log}]
    """)
    x = acts_of(p, 2, a=bits(0, 1))[None].repeat(4, 1, 1)
    ctx = [
        {"tenant": "redteam", "route": "/v1/chat"},
        {"tenant": "eval-7", "route": "/v1/x"},
        {"tenant": "redteam", "route": "/v2/chat"},
        None,
    ]
    res = step_all(p, x, contexts=ctx)
    assert res.match[:, 1, 0].tolist() == [False, False, True, True]
    assert fired(p, {"a": bits(1)}, context={"tenant": "redteam", "route": "/v1/a"}) == []


def test_context_and_condition_in_one_exception_must_both_hold() -> None:
    p = policy("""
        - id: r
          severity: low
          condition: {feature: a, above: 1}
          exceptions:
            - {context: {tenant: lab}, when: {feature: c, above: 0.5}}
          actions: [{type: log}]
    """)
    assert fired(p, {"a": bits(1, 1), "c": [1, 0]}, context={"tenant": "lab"}) == [("r", 1)]
    assert fired(p, {"a": bits(1, 1), "c": [1, 0]}, context={"tenant": "x"}) == [("r", 0)]


def test_shadow_rules_match_but_never_act() -> None:
    p = policy("""
        - id: shadow-stop
          severity: critical
          mode: shadow
          condition: {feature: a, above: 1}
          actions: [{type: stop}, {type: ablate, features: [a]}, {type: alert, channel: ops}]
    """)
    res = step_all(p, acts_of(p, 2, a=bits(0, 1))[None])
    assert matches(res) == [(1, 0)]
    assert res.active[0, 1, 0]
    assert not res.stop.any() and not res.alert.any() and not res.intervene.any()
    assert res.decision.eq(0).all() and res.decision_rule.eq(-1).all()
    assert torch.equal(res.new_acts, res.acts)


def test_scope_prompt_and_completion() -> None:
    p = policy("""
        - id: in-prompt
          severity: low
          scope: prompt
          condition: {feature: a, above: 1}
          window: {at_least: 2, of_last: 2}
          actions: [{type: log}]
        - id: in-completion
          severity: low
          scope: completion
          condition: {feature: a, above: 1}
          window: {at_least: 2, of_last: 2}
          actions: [{type: log}]
        - id: everywhere
          severity: low
          condition: {feature: a, above: 1}
          window: {at_least: 2, of_last: 2}
          actions: [{type: log}]
    """)
    # one hot token at the end of the prompt, one at the start of the completion: only the
    # rule that sees both phases has two hot tokens in a row
    got = fired(p, {"a": bits(0, 1)}, {"a": bits(1, 0, 1, 1)})
    assert got == [("everywhere", 2), ("everywhere", 5), ("in-completion", 5)]


def test_probe_logistic_token_and_mean_pooling(tmp_path) -> None:
    sha = "ab" * 32
    (tmp_path / "cat.yaml").write_text(f"""
catalog_version: 1
sae: {{name: test-sae, sha256: "{sha}", d_sae: 64}}
features:
  - {{name: a, index: 3, scale: 2.0}}
  - {{name: b, index: 7, scale: 4.0}}
probes:
  tok: {{features: [a, b], weights: [2.0, -1.0], bias: -1.0, threshold: 0.5,
        sae_sha256: "{sha}"}}
  avg: {{features: [a], weights: [1.0], bias: -1.5, pooling: mean, link: linear,
        threshold: 0.0, sae_sha256: "{sha}"}}
""")
    text = f"""
version: 1
policy: {{name: probes}}
saes: {{main: {{bundled: test-sae, sha256: "{sha}"}}}}
imports: [{{catalog: cat.yaml, sae: main, prefix: "x."}}]
rules:
  - {{id: tok, severity: low, condition: {{probe: x.tok}}, actions: [{{type: log}}]}}
  - {{id: tok-high, severity: low, condition: {{probe: x.tok, above: 0.9}},
      actions: [{{type: log}}]}}
  - {{id: avg, severity: low, condition: {{probe: x.avg}}, actions: [{{type: log}}]}}
"""
    from monitor.policy.loader import load_policy_text

    p = load_policy_text(text, "p.yaml", base_dir=tmp_path, d_sae={"main": 64}, resolver=None)
    assert p.P == 2 and p.tensors.probe_w.shape == (p.K, 2)
    a = [1.0, 0.0, 3.0, 2.0, 2.0]
    b = [0.0, 0.0, 0.0, 5.0, 0.0]
    # tok logit = 2a - b - 1: [1, -1, 5, -2, 3]; > 0 (p > .5) at 0, 2, 4; > logit(.9)=2.197
    # at 2, 4. avg = running mean(a) - 1.5: [-.5, -1, -.17, .0, .1] > 0 at 4 only.
    res = step_all(p, acts_of(p, 5, **{"x.a": a, "x.b": b})[None])
    assert matches(res) == [(0, 0), (2, 0), (2, 1), (4, 0), (4, 1), (4, 2)]
    assert res.probe_scores[0, :, 0].tolist() == pytest.approx([1, -1, 5, -2, 3])
    assert res.probe_scores[0, 4, 1].item() == pytest.approx(8 / 5 - 1.5)
    assert math.isclose(1 / (1 + math.exp(-2.197)), 0.9, abs_tol=1e-3)


def test_precedence_stop_replace_intervene_alert_log() -> None:
    p = policy("""
        - {id: logger, severity: critical, condition: {feature: a, above: 1},
           actions: [{type: log}]}
        - {id: alerter, severity: info, condition: {feature: a, above: 1},
           actions: [{type: alert, channel: ops}]}
        - {id: ablater, severity: low, condition: {feature: a, above: 1},
           actions: [{type: ablate, features: [a]}]}
        - {id: clamper, severity: high, condition: {feature: a, above: 1},
           actions: [{type: clamp, features: [a, b], value: 1.5}]}
        - {id: clamper2, severity: low, condition: {feature: a, above: 1},
           actions: [{type: clamp, list: ab, scale: 0.25}]}
        - {id: replace-med, severity: medium, condition: {feature: b, above: 5},
           actions: [{type: replace, message: medium}]}
        - {id: replace-high, severity: high, condition: {feature: b, above: 5},
           actions: [{type: replace, message: high}]}
        - {id: replace-high2, severity: high, condition: {feature: b, above: 5},
           actions: [{type: replace, message: later}]}
        - {id: stopper, severity: info, condition: {feature: c, above: 0.5},
           actions: [{type: stop}]}
    """)
    x = acts_of(p, 4, a=[0, 3, 3, 3], b=[3, 3, 6, 6], c=[0, 0, 0, 1])[None]
    res = step_all(p, x)
    ids = p.rule_ids
    # token 0: nothing; 1: interventions win (ablate/clamp), by severity the high clamp;
    # 2: replace by the high-severity, earlier rule; 3: stop beats replace
    assert res.decision[0].tolist() == [0, 3, 4, 5]
    assert [ids[i] if i >= 0 else None for i in res.decision_rule[0].tolist()] == [
        None,
        "clamper",
        "replace-high",
        "stopper",
    ]
    assert res.replace[0].tolist() == [False, False, True, False]
    assert ids[res.replace_rule[0, 2]] == "replace-high"
    assert res.stop[0].tolist() == [False, False, False, True]
    # ablate beats clamp on a; b is capped by the lower cap: min(1.5, 0.25 * 4.0) = 1.0
    a, b = p.feature_columns["a"], p.feature_columns["b"]
    assert res.new_acts[0, 1, a] == 0 and res.new_acts[0, 1, b] == 1.0
    assert res.new_acts[0, 0, b] == 3.0  # rules not active yet: untouched
    assert res.intervene[0, 1, a] and res.intervene[0, 1, b] and not res.intervene[0, 0].any()
    assert torch.equal(res.delta[0, 1, [a, b]], torch.tensor([-3.0, -2.0]))
    assert res.alert[0, 1].tolist() == [r == "alerter" for r in ids]
    assert res.log[0, 1].tolist() == [r == "logger" for r in ids]


def test_clamp_only_lowers() -> None:
    p = policy("""
        - {id: r, severity: low, condition: {feature: a, above: 1},
           actions: [{type: clamp, features: [b], value: 2.0}]}
    """)
    res = step_all(p, acts_of(p, 2, a=[2, 2], b=[1.0, 5.0])[None])
    assert res.new_acts[0, :, p.feature_columns["b"]].tolist() == [1.0, 2.0]


def test_rows_of_different_lengths_and_left_padding() -> None:
    p = policy(rule("window: {at_least: 2, of_last: 3}\n          hold: 1"))
    row = bits(1, 0, 1, 0, 0)
    x = torch.stack(
        [acts_of(p, 5, a=row), torch.cat([acts_of(p, 2, a=bits(1, 1)), acts_of(p, 3, a=row[:3])])]
    )
    valid = torch.tensor([[True] * 5, [False, False, True, True, True]])
    res = step_all(p, x, valid)
    assert res.token_index.tolist() == [[0, 1, 2, 3, 4], [-1, -1, 0, 1, 2]]
    # pads (hot, but invalid) neither match nor fill the window
    assert matches(res, 0) == [(2, 0)] and matches(res, 1) == [(4, 0)]
    assert res.active[0, :, 0].tolist() == [False, False, True, True, False]
    assert not res.active[1, :2].any()


def test_finished_rows_are_frozen() -> None:
    p = policy(rule("for: 2"))
    ev = Evaluator(p)
    st = ev.new_state(2)
    one = acts_of(p, 1, a=bits(1))[None].repeat(2, 1, 1)
    ev.step(one, torch.tensor([[True], [True]]), "completion", st)
    ev.step(one, torch.tensor([[True], [False]]), "completion", st)  # row 1 finished
    r = ev.step(one, torch.tensor([[True], [True]]), "completion", st)
    assert st.pos.tolist() == [3, 2]
    assert r.match[:, 0, 0].tolist() == [False, True]  # row 1 reaches 2 running tokens only now


def test_nan_marks_degraded_tokens() -> None:
    p = policy(rule(""))
    x = acts_of(p, 3, a=[0.0, float("nan"), 2.0])[None]
    res = step_all(p, x, torch.tensor([[True, True, False]]))
    assert res.degraded[0].tolist() == [False, True, False]


def test_state_from_another_policy_is_refused() -> None:
    p1, p2 = policy(rule("")), policy(rule(""))
    with pytest.raises(ValueError, match="another policy"):
        Evaluator(p1).step(
            torch.zeros(1, 1, p1.K),
            torch.ones(1, 1, dtype=torch.bool),
            "prompt",
            Evaluator(p2).new_state(1),
        )


def test_shape_and_phase_errors() -> None:
    p = policy(rule(""))
    ev = Evaluator(p)
    st = ev.new_state(1)
    with pytest.raises(ValueError, match="phase"):
        ev.step(torch.zeros(1, 1, p.K), torch.ones(1, 1, dtype=torch.bool), "decode", st)
    with pytest.raises(ValueError, match="expected acts"):
        ev.step(torch.zeros(1, 1, p.K + 1), torch.ones(1, 1, dtype=torch.bool), "prompt", st)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_never_syncs_with_the_host_on_cuda() -> None:
    from monitor.policy.synthetic import synthetic_policy

    p = synthetic_policy(n_rules=50, n_probes=3)
    ev = Evaluator(p)
    state = ev.new_state(4, "cuda", contexts={"tenant": "redteam"})
    acts = torch.rand(4, 7, p.K, device="cuda") * 4
    valid = torch.ones(4, 7, dtype=torch.bool, device="cuda")
    ev.step(acts, valid, "prompt", state)  # first call may copy the compiled tensors
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(3):
            r = ev.step(acts[:, i : i + 1], valid[:, :1], "completion", state)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert r.match.device.type == "cuda"


def test_exception_cuts_a_hold_short_and_step_context_overrides() -> None:
    p = policy("""
        - id: r
          severity: low
          condition: {feature: a, above: 1}
          hold: 3
          exceptions:
            - {when: {feature: c, above: 0.5}}
            - {context: {user: alice}}
          actions: [{type: log}]
    """)
    res = step_all(p, acts_of(p, 5, a=bits(1, 0, 0, 0, 0), c=[0, 0, 1, 0, 0])[None])
    assert res.active[0, :, 0].tolist() == [True, True, False, False, False]
    ev = Evaluator(p)
    st = ev.new_state(2)
    x = acts_of(p, 1, a=bits(1))[None].repeat(2, 1, 1)
    r = ev.step(
        x,
        torch.ones(2, 1, dtype=torch.bool),
        "prompt",
        st,
        context=[{"user": "alice"}, {"user": "bob"}],
    )
    assert r.match[:, 0, 0].tolist() == [False, True]
