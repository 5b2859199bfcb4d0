"""The runtime's own ablate/clamp targets equal the evaluator's ``new_acts``/``intervene``."""

from __future__ import annotations

import pytest
import torch

from monitor.policy.enforcement import enforcement
from monitor.policy.evaluator import Evaluator
from monitor.runtime import edits
from monitor.runtime.edits import EditTables, edit_targets
from tests.monitor.policy.helpers import policy

ABLATE = "{type: ablate, features: [a]}"
CLAMP_A = "{type: clamp, features: [a, b], value: 1.5}"
CLAMP_AB = "{type: clamp, list: ab, scale: 0.25}"
NEGATIVE_A = "{type: clamp, features: [a], value: -1.5}"
NEGATIVE_AB = "{type: clamp, list: ab, scale: -0.25}"
RULES = {
    "ablate only": [ABLATE, "{type: ablate, list: ab}"],
    "clamp only": [CLAMP_A, CLAMP_AB],
    "both": [ABLATE, CLAMP_A, CLAMP_AB, "{type: stop}"],
    "negative clamps": [NEGATIVE_A, NEGATIVE_AB, CLAMP_A],
    "ablate and negative clamps": [NEGATIVE_AB, ABLATE, NEGATIVE_A],
    "none": ["{type: log}"],
}


def make(actions: list[str], shadow: int | None) -> object:
    lines = []
    for i, act in enumerate(actions):
        mode = ", mode: shadow" if i == shadow else ""
        lines.append(
            f"- {{id: r{i}, severity: high{mode}, condition: {{feature: a, above: 1}}, "
            f"actions: [{act}]}}"
        )
    return policy("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", list(RULES))
@pytest.mark.parametrize("shadow", [None, 0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dense", [True, False])  # ablations as a matrix product or a scatter
def test_edit_targets_equal_enforcement(
    kind: str, shadow: int | None, dtype: torch.dtype, dense: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edits, "DENSE_MAX", 1 << 16 if dense else 0)
    p = make(RULES[kind], shadow)
    ev = Evaluator(p)
    gen = torch.Generator().manual_seed(len(kind) + (shadow or 0))
    B, T = 3, 5
    acts = (torch.rand(B, T, p.K, generator=gen) * 4).to(dtype)
    acts[:, 2] = 0  # a token where every feature is 0: only a negative cap moves it
    acts[0, 1, 0] = float("nan")  # NaN propagates the same way
    x = acts.float()
    valid = torch.ones(B, T, dtype=torch.bool)
    active = torch.rand(B, T, p.R, generator=gen) > 0.4
    tok = torch.zeros(B, T, dtype=torch.long)
    t = ev.tensors(torch.device("cpu"))
    ref = enforcement(t, ev._keys[x.device], acts, x, valid, tok, active, active, x[..., :0])
    tables = EditTables.of(p, torch.device("cpu"))
    assert (tables.ablate_dense is not None) == (dense and tables.ablate_rule.numel() > 0)
    new, intervene = edit_targets(tables, active, x, dtype)
    assert new.dtype == ref.new_acts.dtype == dtype
    assert torch.equal(intervene, ref.intervene)
    assert torch.equal(new.float().nan_to_num(-7.0), ref.new_acts.float().nan_to_num(-7.0))
    if kind != "none":
        assert intervene.any()  # the comparison is not vacuous
