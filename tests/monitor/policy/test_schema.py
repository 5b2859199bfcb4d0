"""Clamp actions in the schema: negative caps ("clamping negatively") are allowed, absolute or
as a multiple of the feature's scale; bad clamps still fail at their file position."""

from __future__ import annotations

import pytest

from monitor.policy.diagnostics import PolicyError
from monitor.policy.loader import load_policy_text
from monitor.policy.schema import ClampAction, json_schema
from tests.monitor.policy.helpers import HEADER, policy

LINE = HEADER.count("\n") + 2  # the rule's line: after the header and "rules:"


def rule(action: str) -> str:
    return f"- {{id: r, severity: high, condition: {{feature: a, above: 1}}, actions: [{action}]}}"


@pytest.mark.parametrize(
    "action, caps",
    [
        ("{type: clamp, features: [a, b], value: -5}", {"a": -5.0, "b": -5.0}),
        ("{type: clamp, features: [a], value: -0.25}", {"a": -0.25}),
        ("{type: clamp, list: ab, scale: -0.5}", {"a": -1.0, "b": -2.0}),  # × 2.0, × 4.0
        ("{type: clamp, features: [b], value: 0}", {"b": 0.0}),
        ("{type: clamp, features: [b], scale: 0.25}", {"b": 1.0}),
    ],
)
def test_clamp_caps_may_be_negative(action: str, caps: dict[str, float]) -> None:
    p = policy(rule(action))
    t = p.tensors
    cols, vals = t.clamp_col.tolist(), t.clamp_val.tolist()
    got = {p.feature_names[c]: v for c, v in zip(cols, vals, strict=True)}
    assert got == pytest.approx(caps)


def test_clamp_model_and_json_schema_have_no_lower_bound() -> None:
    act = ClampAction.model_validate({"type": "clamp", "features": ["a"], "value": -3.5})
    assert act.value == -3.5
    props = json_schema()["$defs"]["ClampAction"]["properties"]
    for field in ("value", "scale"):
        assert "minimum" not in str(props[field]), props[field]


@pytest.mark.parametrize(
    "action, code, field",
    [
        ("{type: clamp, features: [a], value: -1, scale: -0.5}", "FG209", None),  # both
        ("{type: clamp, features: [a], value: -.inf}", "FG205", "value"),
        ("{type: clamp, features: [a], scale: .nan}", "FG205", "scale"),
        ("{type: clamp, features: [a], value: '-5'}", "FG203", "value"),  # text, not a number
    ],
)
def test_bad_clamps_are_reported_at_their_position(
    action: str, code: str, field: str | None
) -> None:
    text = HEADER + "rules:\n  " + rule(action) + "\n"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", d_sae={"main": 64})
    (d,) = info.value.errors
    assert (d.code, d.file, d.line) == (code, "p.yaml", LINE), str(d)
    # the field's value, or the action's mapping for a bad combination (1-based, after "  ")
    at = (
        rule(action).index(f"{field}: ") + len(f"{field}: ")
        if field
        else rule(action).index("{type: clamp")
    )
    assert d.col == at + 3, str(d)
    assert field is None or f"'{field}'" in d.message
