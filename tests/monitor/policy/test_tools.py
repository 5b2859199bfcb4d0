"""policy diff / explain / schema / test: classification, text and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.policy.diff import policy_diff
from monitor.policy.explain import explain
from tests.monitor.policy.helpers import HEADER, policy

BASE = """
- {id: r, severity: medium, condition: {feature: a, above: 1.0}, actions: [{type: log}]}
- {id: n, severity: low, condition: {not: {feature: b, above: 2.0}}, actions: [{type: log}]}
- {id: c, severity: low, mode: shadow, condition: {count: {list: ab, above: 1, at_least: 2}},
   window: {at_least: 2, of_last: 4}, actions: [{type: stop}]}
"""


def kinds(old: str, new: str) -> list[tuple[str | None, str]]:
    return [(c.rule, c.kind) for c in policy_diff(policy(old), policy(new))]


@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("above: 1.0", "above: 0.5", [("r", "matches more")]),
        ("b, above: 2.0", "b, above: 1.0", [("n", "matches less")]),  # under `not`
        ("severity: medium", "severity: high", [("r", "severity raised")]),
        # enforcing a stop also changes the default on_error to fail_closed
        ("mode: shadow", "mode: enforce", [("c", "enforcement"), (None, "changed")]),
        ("at_least: 2}}", "at_least: 1}}", [("c", "matches more")]),
        ("of_last: 4", "of_last: 8", [("c", "matches more")]),
        ("actions: [{type: stop}]", "actions: [{type: log}]", [("c", "actions")]),
        (
            "{id: r, severity: medium,",
            "{id: r, severity: medium, enabled: false,",
            [("r", "matches less")],
        ),
        (
            "{id: r, severity: medium,",
            "{id: r, severity: medium, exceptions: [{context: {user: x}}],",
            [("r", "matches less")],
        ),
        ("{id: n,", "{id: n2,", [("n2", "matches more"), ("n", "matches less")]),
        ("{feature: a, above: 1.0}", "{any: [{feature: a, above: 1.0}]}", []),  # same circuit
    ],
)
def test_diff_classification(old: str, new: str, expect: list[tuple[str, str]]) -> None:
    assert old in BASE
    assert kinds(BASE, BASE.replace(old, new, 1)) == expect


def test_explain_mentions_everything() -> None:
    text = explain(
        policy(
            BASE
            + """
- {id: x, severity: high, condition: {feature: a, above_scale: 0.5}, for: 3, cooldown: 5,
   exceptions: [{name: lab, context: {tenant: lab}}], actions: [{type: replace, message: "no"}]}
"""
        )
    )
    for needle in (
        "r — medium, enforce",
        "SHADOW",
        "at least 2 of list ab",
        "above 1 (0.5 × scale 2)",
        "for 3 tokens in a row",
        "Except [lab]: when the request's tenant is lab",
        'substitute "no"',
        "K=2 features, R=4 rules",
    ):
        assert needle in text, needle


def write(tmp_path: Path, name: str, rules: str) -> Path:
    path = tmp_path / name
    path.write_text(
        HEADER + "rules:\n" + "".join("  " + ln + "\n" for ln in rules.strip().splitlines())
    )
    return path


def test_cli_diff_explain_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = (
        write(tmp_path, "old.yaml", BASE),
        write(tmp_path, "new.yaml", BASE.replace("above: 1.0", "above: .5")),
    )
    assert main(["policy", "diff", str(old), str(new)]) == 0
    assert "[matches more] condition: threshold of a lowered 1 → 0.5" in capsys.readouterr().out
    assert main(["policy", "diff", str(old), str(new), "--fail-on", "matches more"]) == 3
    capsys.readouterr()
    assert main(["policy", "explain", str(old), "--allow-missing-sae"]) == 0
    assert 'Policy "test"' in capsys.readouterr().out
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"version", "rules", "saes", "channels", "audit"} <= set(schema["properties"])
    assert main(["policy", "check", str(old)]) == 1  # the SAE is not on disk: FG310
    assert "FG310" in capsys.readouterr().out
    assert main(["policy", "check", str(old), "--d-sae", "main=64"]) == 0
    assert f"{old}: OK" in capsys.readouterr().out


def test_cli_policy_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "p.yaml", BASE)
    (tmp_path / "t.yaml").write_text("""policy: p.yaml
d_sae: {main: 64}
tests:
  - name: good
    prompt: {features: {a: [0, 2, 2, 0]}}
    expect:
      - {rule: n, token: 0}
      - {rule: r, token: 1}
  - name: wrong
    prompt: {features: {a: [0, 2]}}
    expect:
      - {rule: r, token: 0}
""")
    assert main(["policy", "test", str(tmp_path / "t.yaml")]) == 1
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" in out
    assert "- missing:    r @ token 0" in out and "+ unexpected: r @ token 1" in out
    assert "1 passed, 1 failed, 0 skipped" in out


def test_explain_and_policy_test_with_a_negative_clamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = """
- {id: neg, severity: high, condition: {feature: a, above: 1.0}, hold: 2,
   actions: [{type: clamp, features: [a], value: -5}, {type: clamp, list: ab, scale: -0.5}]}
- {id: cap, severity: low, condition: {feature: b, above: 1.0},
   actions: [{type: clamp, features: [b], value: 2}]}
"""
    text = explain(policy(rules))
    assert "clamp a negatively: set to -5 on every active token" in text
    assert "clamp list ab negatively: set to -0.5 × scale on every active token" in text
    assert "clamp b to at most 2" in text
    write(tmp_path, "p.yaml", rules)
    (tmp_path / "t.yaml").write_text("""policy: p.yaml
d_sae: {main: 64}
tests:
  - name: negative clamp
    prompt: {features: {a: [0, 2, 0, 0, 0], b: [0, 0, 0, 3, 0]}}
    expect:
      - {rule: neg, token: 1, actions: [clamp, clamp]}
      - {rule: cap, token: 3, actions: [clamp]}
""")
    assert main(["policy", "test", str(tmp_path / "t.yaml")]) == 0
    assert "1 passed, 0 failed, 0 skipped" in capsys.readouterr().out
