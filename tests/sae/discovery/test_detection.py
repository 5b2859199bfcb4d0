"""Rule margins agree with the evaluator's conditions; the summary counts what it should; rules
are judged by the runtime, exactly as ``featureguard scan`` judges the same items."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from monitor.policy.evaluator import Evaluator
from monitor.policy.loader import load_policy_text
from sae.discovery.data import Item
from sae.discovery.detection import Detector, _margin, _windowed, summarize

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


TEMPORAL = """
version: 1
policy: {name: t}
saes:
  main: {bundled: test-sae, d_sae: 64}
features:
  a: {index: 3}
rules:
  - {id: plain, severity: high, condition: {feature: a, above: 0.7}, actions: [{type: log}]}
  - {id: held, severity: high, for: 3, condition: {feature: a, above: 0.5},
     actions: [{type: log}]}
  - {id: windowed, severity: high, window: {at_least: 2, of_last: 4},
     condition: {feature: a, above: 0.75}, actions: [{type: log}]}
"""


def test_windowed_score_is_positive_exactly_where_the_temporal_rule_matches() -> None:
    cp = load_policy_text(TEMPORAL, d_sae={"main": 64})
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 12, cp.K, generator=g)  # (B, T, K)
    lengths = torch.randint(1, 13, (64,), generator=g)
    valid = torch.arange(12)[None, :] < lengths[:, None]  # (B, T) right-padded rows
    ev = Evaluator(cp)
    res = ev.step(x * valid[..., None], valid, "prompt", ev.new_state(64))
    matched = res.match.any(dim=1)  # (B, R)
    for r, rule in enumerate(cp.rules):
        m = _margin(rule.spec.condition, cp, x, torch.zeros(64, 12, 0))  # (B, T)
        fires = _windowed(m, valid, rule.spec) > 0
        assert torch.equal(fires, matched[:, r]), rule.id
        assert 0 < int(fires.sum()) < 64, rule.id  # the comparison is not vacuous


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


def _policy(sae_dir: Path, features: dict[str, int], rules: str) -> str:
    feats = "".join(f"  {n}: {{index: {i}}}\n" for n, i in features.items())
    return (
        f"version: 1\npolicy: {{name: d}}\nsaes:\n  main: {{path: {sae_dir}}}\n"
        f"features:\n{feats}rules:\n{rules}"
    )


def test_rules_are_judged_by_the_runtime_exactly_as_scan(
    tiny_stack_dir: Path, tmp_path: Path
) -> None:
    import argparse
    import json

    from monitor.cli import scan_cmd
    from monitor.policy.loader import load_policy
    from sae.discovery.activations import load_stack
    from sae.discovery.data import load_detection
    from sae.discovery.detection import rule_detectors, scan_items

    sae_dir = tiny_stack_dir / "sae"
    stack = load_stack(str(sae_dir))
    items = load_detection(tiny_stack_dir / "det", ["*"], ["train"])
    survey = load_policy_text(
        _policy(
            sae_dir,
            {f"f{i}": i for i in range(64)},
            "  - {id: x, severity: low, actions: [{type: log}], condition: {count: "
            f"{{features: [{', '.join(f'f{i}' for i in range(64))}], above: 1.0e9, "
            "at_least: 1}}}\n",
        ),
        d_sae={"main": 64},
    )
    assert survey.K == 64
    rows = scan_items(survey, stack, items)
    for r in rows:  # each row's first token is scored with every feature at 0, as deployed
        first = r.prompt_acts if r.prompt_acts.shape[0] else r.completion_acts
        assert torch.equal(first[0], torch.zeros(64))
    maxima = torch.stack([torch.cat([r.prompt_acts, r.completion_acts]).amax(0) for r in rows])
    j = int(maxima.std(0).argmax())
    thr = float(maxima[:, j].median())
    path = tmp_path / "policy.yaml"
    path.write_text(
        _policy(
            sae_dir,
            {"hit": j},
            f"  - {{id: any, severity: high, condition: {{feature: hit, above: {thr}}}, "
            "actions: [{type: log}]}\n"
            f"  - {{id: late, severity: low, scope: completion, "
            f"condition: {{feature: hit, above: {thr}}}, actions: [{{type: log}}]}}\n",
        )
    )
    cp = load_policy(path)
    dets = {d.name: d for d in rule_detectors(cp, scan_items(cp, stack, items))}
    hit, late = dets["any"], dets["late"]
    assert 0 < int(hit.fired.sum()) < len(items)
    assert torch.equal(hit.fired, hit.score > 0)  # margin > 0 exactly where it matched
    is_text = torch.tensor([it.text is not None for it in items])
    assert torch.equal(late.fired, hit.fired & is_text)  # chats here are prompt-only
    assert bool((late.score[~is_text] == -math.inf).all())

    # `featureguard scan` on the same items reports the same firings.
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {"id": it.id, "text": it.text}
                if it.text is not None
                else {"id": it.id, "messages": list(it.messages or ())}
            )
            + "\n"
            for it in items
        )
    )
    args = argparse.Namespace(
        input=str(src),
        policy=str(path),
        model=str(tiny_stack_dir / "model"),
        output=str(out),
        batch_size=5,
        max_tokens=512,
    )
    assert scan_cmd.run(args) == 0
    scanned = {r["id"]: {f["rule"] for f in r["fired"]} for r in map(json.loads, out.open())}
    for i, it in enumerate(items):
        want = {n for n, d in dets.items() if d.kind != "any-rule" and bool(d.fired[i])}
        assert scanned[it.id] == want, it.id
