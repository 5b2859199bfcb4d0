"""Fail modes, exceptions inside the SAE, the final step, replace, and ``use_cache=False``
with interventions (llama only: the mechanics do not depend on the family)."""

from __future__ import annotations

import pytest
import torch

import monitor
from monitor.runtime import CollectingDispatcher
from tests.monitor.runtime.helpers import LOG_RULES, World, events_of


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World("llama", tmp_path_factory.mktemp("llama"))


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Boom(KeyboardInterrupt):
    """Escapes every ``except Exception``, as a Ctrl-C inside the SAE encode would."""


def test_exception_inside_the_sae_leaves_the_model_clean(world: World) -> None:
    def explode(x: torch.Tensor) -> torch.Tensor:
        raise Boom

    with pytest.raises(Boom), monitor.attach(world.model, world.policy(LOG_RULES)) as g:
        g.binding().groups[0].saes[0].encoder = explode  # type: ignore[assignment]
        world.generate(g)
    assert hook_count(world.model) == 0
    assert torch.equal(world.generate(world.model), world.ref)


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
def test_sae_error_follows_on_error(world: World, on_error: str) -> None:
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        raise RuntimeError("sae exploded")

    d = CollectingDispatcher()
    pol = world.policy(LOG_RULES, on_error, extra=f"on_error: {on_error}\n")
    with monitor.attach(world.model, pol, dispatcher=d) as g:
        g.binding().groups[0].saes[0].encoder = flaky  # type: ignore[assignment]
        out = world.generate(g)
        report = g.last_report
    assert d.events == [] and calls["n"] > 0
    assert all(not r.clean for r in report.rows)
    assert sum(s.degraded for s in d.steps) == report.degraded_tokens > 0
    assert sum(e.tokens for e in d.degraded) == report.degraded_tokens
    if on_error == "fail_open":
        assert torch.equal(out, world.ref)
        assert report.rows[0].degraded_tokens == report.rows[0].tokens_seen  # every token
    else:
        assert all(r.stopped and r.halt_reason == "error" for r in report.rows)
        assert (out[:, world.L0 :] == world.model.generation_config.pad_token_id).all()


def test_nan_features_are_degraded_not_clean(world: World) -> None:
    import copy

    sae = copy.deepcopy(world.sae)
    with torch.no_grad():
        sae.b_enc[1] = float("nan")
    d = CollectingDispatcher()
    with monitor.attach(
        world.model, world.policy(LOG_RULES, "nan"), saes={"main": sae}, dispatcher=d
    ) as g:
        out = world.generate(g)
    assert torch.equal(out, world.ref)  # fail_open default for a log-only policy
    assert g.last_report.degraded_tokens > 0 and d.degraded


def test_replace_substitutes_the_message(world: World) -> None:
    rules = (
        "- {id: rep, severity: high, condition: {feature: f0, above: 0.0}, "
        'actions: [{type: replace, message: "I cannot help with that."}]}'
    )
    with monitor.attach(world.model, world.policy(rules, "rep"), tokenizer=world.tok) as g:
        out = world.generate(g)
        row = g.last_report.rows[0]
    assert row.replaced and not row.stopped and row.replacement == "I cannot help with that."
    text = world.tok.decode(out[0, world.L0 :], skip_special_tokens=True)
    assert text == "I cannot help with that."
    assert torch.equal(out[1:, : world.ref.shape[1]], world.ref[1:])


def test_final_step_checks_the_last_token_with_stop(world: World) -> None:
    rules = (
        "- {id: s1, severity: high, condition: {feature: f1, above: 0.0}, actions: [{type: stop}]}"
    )
    with monitor.attach(world.model, world.policy(rules, "last")) as g:
        out = world.generate(g)
        row = g.last_report.rows[world.cols[1][0]]
    assert torch.equal(out, world.ref)  # the last token stays: it was emitted, then checked
    assert row.stopped and row.halt_token == world.token(1)


def test_ablation_with_and_without_cache_agree(world: World) -> None:
    rules = (
        "- {id: a0, severity: high, condition: {feature: f2, above: 0.0}, hold: 100, "
        "actions: [{type: ablate, features: [f2, f0]}]}\n" + LOG_RULES.strip()
    )
    outs, evs = [], []
    for use_cache in (True, False):
        d = CollectingDispatcher()
        with monitor.attach(world.model, world.policy(rules, "abl"), dispatcher=d) as g:
            outs.append(world.generate(g, use_cache=use_cache))
        evs.append(events_of(d))
    assert torch.equal(outs[0], outs[1])
    assert evs[0] == evs[1]


def test_chunked_prefill_gives_the_same_events(world: World) -> None:
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(LOG_RULES, "chunk"), dispatcher=d) as g:
        out = world.generate(g, prefill_chunk_size=3)
    assert torch.equal(out, world.generate(world.model, prefill_chunk_size=3))
    want = sorted((b, f"r{i}", world.token(i)) for i, (b, _) in enumerate(world.cols))
    assert events_of(d) == want


def test_beam_search_is_refused_and_the_model_is_untouched(world: World) -> None:
    with monitor.attach(world.model, world.policy(LOG_RULES, "beam")) as g:
        with pytest.raises(ValueError, match="beam search"):
            world.generate(g, num_beams=2)
        assert torch.equal(world.generate(g), world.ref)
    assert hook_count(world.model) == 0
