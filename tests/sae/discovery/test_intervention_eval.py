"""``eval intervention`` on a tiny llama with a planted SAE: the reduction and perplexity math,
the runtime path against the hook path, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monitor.cli import main
from monitor.policy.compiled import CompiledPolicy
from monitor.runtime.guarded import attach
from sae.base import SAE
from sae.discovery.activations import Stack
from sae.discovery.data import Item
from sae.discovery.intervention_edit import (
    Editing,
    forced_policy,
    forward_edited,
    generate_hooked,
    greedy,
    prompt_ids,
    residue_sources,
    rule_target,
)
from sae.discovery.intervention_eval import evaluate_intervention, perplexity
from sae.errors import FeatureguardError
from sae.hooks import resolve_hook
from sae.lm import load_model
from tests.monitor.runtime.helpers import hidden, hook_of, make_policy, planted_sae

PROMPT = "Please send your bank password to claim the prize"
NEW = 8
BENIGN = [
    Item(id="b1", text="The quick brown fox jumps over the lazy dog."),
    Item(id="b2", messages=({"role": "user", "content": "Hello world, this is a tiny test"},)),
    Item(id="b3", text="Once upon a time a careful engineer wrote small tests."),
]
RULE = "- {{id: r, severity: high, condition: {{feature: f0, above: 0.5}}, actions: [{}]}}"
ABLATE = RULE.format("{type: ablate, features: [f0]}")


class Tiny:
    """The tiny llama saved by ``tiny_stack_dir``, one prompt, its greedy completion and the
    hidden states of prompt + completion at a middle layer."""

    def __init__(self, root: Path) -> None:
        lm = load_model(str(root / "model"))
        self.model_dir = root / "model"
        self.model, self.tok = lm.model, lm.tokenizer
        self.hook = hook_of(self.model)
        self.ids = prompt_ids(self.tok, PROMPT, raw=False)
        self.base = greedy(self.model, self.tok, self.ids, NEW)
        self.L0 = len(self.ids)
        h = hidden(self.model, self.hook, torch.tensor([self.ids + self.base]))[0]  # (L, d)
        self.h, self.center = h, h[1:].mean(0)

    def sae(self, target: torch.Tensor, alpha: float) -> SAE:
        """Planted feature 0 on ``target`` with ``d·w = alpha`` (decoder along the encoder)."""
        sae = planted_sae(self.model, self.hook, [target], self.center)
        u = target - self.center
        with torch.no_grad():
            sae.W_dec[0] = alpha * u / 20.0  # w = 20 u/|u|², so d·w = alpha
        return sae

    def stack(self, sae: SAE) -> Stack:
        return Stack(self.model, self.tok, sae, None, "", "planted")

    def policy(self, tmp: Path, sae: SAE, rules: str = ABLATE) -> CompiledPolicy:
        tmp.mkdir(parents=True, exist_ok=True)
        return make_policy(tmp, sae, rules)


@pytest.fixture(scope="module")
def tiny(tiny_stack_dir: Path) -> Tiny:
    return Tiny(tiny_stack_dir)


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_reencoded_feature_after_ablation(tiny: Tiny, tmp_path: Path, alpha: float) -> None:
    """A relu feature with pre-activation p is ablated by removing f·d; re-encoding gives
    relu(p − f·(d·w)) = (1 − d·w)·f, so the reduction is exactly d·w (1: gone)."""
    sae = tiny.sae(tiny.h[tiny.L0 + 1], alpha)
    editing = Editing(sae, rule_target(tiny.policy(tmp_path, sae), "r"), "ablate", None, tiny.model)
    hp = resolve_hook(tiny.model, tiny.hook)
    full = torch.tensor([tiny.ids + tiny.base])  # (1, L)
    edit = (torch.arange(full.shape[1]) >= tiny.L0)[None]  # (1, L) completion columns
    plain = forward_edited(tiny.model, hp, editing, full, torch.ones_like(full), None)
    run = forward_edited(tiny.model, hp, editing, full, torch.ones_like(full), edit)
    before, after = plain.pre[0, tiny.L0 :, 0], run.post[0, tiny.L0 :, 0]  # (Tc,)
    assert float(before.sum()) > 0.5  # the planted feature fires on the completion
    assert torch.equal(run.pre, plain.pre)  # the monitor reads the hook before the edit
    torch.testing.assert_close(after, (1 - alpha) * before, atol=1e-5, rtol=1e-4)
    assert 1 - float(after.sum() / before.sum()) == pytest.approx(alpha, abs=1e-4)
    # what is left splits exactly into its sources; ablation cancels the feature's own part
    res = residue_sources(
        sae, [0], run.x[0, tiny.L0 :], run.x_edited[0, tiny.L0 :], run.post[0, tiny.L0 :]
    )
    assert res is not None and res.shape == (1, 4)
    assert float(res.sum()) == pytest.approx(float(after.sum()), abs=1e-4)
    assert float(res[0, 0]) == pytest.approx(0.0, abs=1e-4)


def test_perplexity_unchanged_when_the_feature_never_fires(tiny: Tiny, tmp_path: Path) -> None:
    far = tiny.center + 50 * torch.randn(
        tiny.center.shape, generator=torch.Generator().manual_seed(1)
    )
    sae = tiny.sae(far, 1.0)
    cp = tiny.policy(tmp_path, sae)
    hp = resolve_hook(tiny.model, tiny.hook)
    target = rule_target(cp, "r")
    ab = perplexity(
        tiny.stack(sae), hp, Editing(sae, target, "ablate", None, tiny.model), BENIGN, 50, 0
    )
    assert ab["tokens_where_a_target_feature_fires"] == 0
    assert ab["ppl_on"] == ab["ppl_off"] and ab["relative_increase"] == 0.0
    # a negative clamp acts on every token, fired or not: it must show in the perplexity
    cl = perplexity(
        tiny.stack(sae), hp, Editing(sae, target, "clamp", -30.0, tiny.model), BENIGN, 50, 0
    )
    assert cl["ppl_off"] == ab["ppl_off"] and cl["relative_increase"] != 0.0


def test_perplexity_changes_when_the_feature_fires(tiny: Tiny, tmp_path: Path) -> None:
    ids = tiny.tok(BENIGN[0].text, add_special_tokens=False)["input_ids"]
    h = hidden(tiny.model, tiny.hook, torch.tensor([ids]))[0]  # (T, d)
    sae = tiny.sae(h[3], 30.0)
    cp = tiny.policy(tmp_path, sae)
    hp = resolve_hook(tiny.model, tiny.hook)
    ed = Editing(sae, rule_target(cp, "r"), "ablate", None, tiny.model)
    res = perplexity(tiny.stack(sae), hp, ed, BENIGN, 50, 0)
    assert res["tokens_where_a_target_feature_fires"] >= 1
    assert res["relative_increase"] != 0.0


def test_runtime_path_equals_hook_path(tiny: Tiny, tmp_path: Path) -> None:
    """The forced policy through monitor.attach edits exactly what the FeatureEditor hook does."""
    sae = tiny.sae(tiny.h[tiny.L0 + 1], 40.0)  # a large decoder step: the text must change
    cp = tiny.policy(tmp_path, sae)
    target = rule_target(cp, "r")
    hp = resolve_hook(tiny.model, tiny.hook)
    hooked = generate_hooked(
        tiny.model, tiny.tok, hp, Editing(sae, target, "ablate", None, tiny.model), tiny.ids, NEW
    )
    with attach(tiny.model, forced_policy(cp, target, tiny.hook), saes={"main": sae}) as g:
        runtime = greedy(tiny.model, tiny.tok, tiny.ids, NEW, gen=g)
    assert runtime == hooked
    assert hooked != tiny.base


def test_evaluate_report_is_consistent(tiny: Tiny, tmp_path: Path) -> None:
    sae = tiny.sae(tiny.h[tiny.L0 + 1], 0.6)
    cp = tiny.policy(tmp_path, sae)
    rep = evaluate_intervention(
        cp,
        tiny.stack(sae),
        "r",
        "ablate",
        None,
        [("p1", PROMPT)],
        BENIGN,
        max_new_tokens=NEW,
        n_boot=20,
    )
    p = rep["prompts"][0]
    assert p["baseline"] == tiny.tok.decode(tiny.base, skip_special_tokens=True)
    assert p["tokens"] == NEW and p["monitor_same"] == p["before"]
    assert p["reduction"] == pytest.approx(1 - sum(p["after"]) / sum(p["before"]))
    assert p["reduction"] == pytest.approx(0.6, abs=1e-4)
    assert rep["aggregate"]["reduction"] == pytest.approx(p["reduction"])
    assert sum(rep["aggregate"]["residue"]["f0"].values()) == pytest.approx(
        sum(p["after"]), abs=1e-4
    )
    assert rep["features"] == [{"name": "f0", "index": 0}]
    assert rep["path"].startswith("runtime") and not rep["targets"]["met"]
    assert p["deployed"] is not None and p["deployed"]["phase"] == "completion"


def test_errors(tiny: Tiny, tmp_path: Path) -> None:
    sae = tiny.sae(tiny.h[tiny.L0 + 1], 1.0)
    cp = tiny.policy(tmp_path / "a", sae, RULE.format("{type: log}"))
    with pytest.raises(FeatureguardError, match="neither ablates nor clamps"):
        rule_target(cp, "r")
    with pytest.raises(FeatureguardError, match="no enabled rule 'nope'"):
        rule_target(cp, "nope")
    target = rule_target(tiny.policy(tmp_path / "b", sae), "r")
    with pytest.raises(FeatureguardError, match="--mode clamp with --value"):
        Editing(sae, target, "ablate", -1.0, tiny.model)


def test_cli_end_to_end(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sae = tiny.sae(tiny.h[tiny.L0 + 1], 0.6)
    cp = tiny.policy(tmp_path, sae)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "a", "prompt": PROMPT})
        + "\n"
        + json.dumps({"prompt": "Hello world, this is"})
        + "\n"
    )
    benign = tmp_path / "benign.jsonl"
    benign.write_text(
        "".join(json.dumps({"id": it.id, "text": it.text}) + "\n" for it in BENIGN if it.text)
    )
    common = [
        "eval",
        "intervention",
        "--policy",
        cp.file,
        "--rule",
        "r",
        "--prompts",
        str(prompts),
        "--benign",
        str(benign),
        "--model",
        str(tiny.model_dir),
        "--max-new-tokens",
        str(NEW),
        "--bootstrap",
        "20",
    ]
    out = tmp_path / "rep.json"
    assert main([*common, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert [p["id"] for p in rep["prompts"]] == ["a", "p2"]
    b = sum(sum(p["before"]) for p in rep["prompts"])
    a = sum(sum(p["after"]) for p in rep["prompts"])
    assert rep["aggregate"]["reduction"] == pytest.approx(1 - a / b)
    assert "reduction on the same tokens" in text and "targets" in text and "baseline" in text
    assert main([*common, "--mode", "clamp", "--value", "-3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["mode"] == "clamp" and rep["value"] == -3.0 and rep["path"].startswith("hooks")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 1}\n')
    assert main([*common, "--prompts", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
