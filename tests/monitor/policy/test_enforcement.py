"""Negative clamps in enforcement: the cap on every active token (also where the feature is 0),
ablate still beats clamp, two clamps take the lower cap, shadow rules never act."""

from __future__ import annotations

import pytest
import torch

from tests.monitor.policy.helpers import acts_of, policy, step_all


def rules(*actions: str, modes: tuple[str, ...] = ()) -> str:
    lines = []
    for i, act in enumerate(actions):
        mode = modes[i] if i < len(modes) else "enforce"
        lines.append(
            f"- {{id: r{i}, severity: {'low' if i else 'high'}, mode: {mode}, "
            f"condition: {{feature: c, above: 0.5}}, actions: [{act}]}}"
        )
    return "\n".join(lines) + "\n"


# c (the trigger) is on at tokens 1 and 2; a and b are 0 at token 1 and positive at 2
C = [0.0, 1.0, 1.0, 0.0]
A = [3.0, 0.0, 2.0, 3.0]
B = [1.0, 0.0, 5.0, 1.0]


def new_of(text: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """``(new_acts (T, K), intervene (T, K), columns)`` of one row."""
    p = policy(text)
    res = step_all(p, acts_of(p, 4, a=A, b=B, c=C)[None])
    return res.new_acts[0], res.intervene[0], dict(p.feature_columns)


def test_negative_clamp_sets_the_cap_on_every_active_token_even_at_zero() -> None:
    new, hit, col = new_of(rules("{type: clamp, features: [a], value: -2}"))
    a = col["a"]
    assert new[:, a].tolist() == [3.0, -2.0, -2.0, 3.0]  # 0 → -2 at token 1, 2 → -2 at token 2
    assert hit[:, a].tolist() == [False, True, True, False]
    assert new[:, col["c"]].tolist() == C  # other features untouched


def test_negative_scale_is_a_multiple_of_each_features_scale() -> None:
    new, _, col = new_of(rules("{type: clamp, list: ab, scale: -0.5}"))  # scales a 2.0, b 4.0
    assert new[1:3, col["a"]].tolist() == [-1.0, -1.0]
    assert new[1:3, col["b"]].tolist() == [-2.0, -2.0]


@pytest.mark.parametrize("order", ["ablate first", "clamp first"])
def test_ablate_beats_a_negative_clamp(order: str) -> None:
    acts = ["{type: ablate, features: [a]}", "{type: clamp, features: [a, b], value: -4}"]
    new, hit, col = new_of(rules(*(acts if order == "ablate first" else acts[::-1])))
    assert new[1:3, col["a"]].tolist() == [0.0, 0.0]  # not -4: ablate is kept as it was
    assert new[1:3, col["b"]].tolist() == [-4.0, -4.0]
    assert hit[1:3, col["a"]].all()


@pytest.mark.parametrize(
    "first, second, cap",
    [("-1", "-3", -3.0), ("-3", "-1", -3.0), ("1.5", "-1", -1.0), ("-1", "1.5", -1.0)],
)
def test_two_clamps_take_the_lower_cap(first: str, second: str, cap: float) -> None:
    new, _, col = new_of(
        rules(
            f"{{type: clamp, features: [b], value: {first}}}",
            f"{{type: clamp, features: [b], value: {second}}}",
        )
    )
    assert new[1:3, col["b"]].tolist() == [cap, cap]


def test_a_shadow_negative_clamp_never_acts() -> None:
    new, hit, col = new_of(
        rules("{type: clamp, features: [a], value: -2}", "{type: log}", modes=("shadow",))
    )
    assert new[:, col["a"]].tolist() == A
    assert not hit.any()
