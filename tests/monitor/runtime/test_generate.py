"""Monitored generate on every tiny model family: bit-identity, events, stop, padding, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import monitor
from monitor.runtime import CollectingDispatcher
from tests.helpers.tiny_models import FAMILIES
from tests.monitor.runtime.helpers import LOG_RULES, World, events_of


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(request.param, tmp_path_factory.mktemp(request.param))


def expected(world: World) -> list[tuple[int, str, int]]:
    return sorted((b, f"r{i}", world.token(i)) for i, (b, _) in enumerate(world.cols))


def test_log_only_is_bit_identical_and_reports_every_planted_token(world: World) -> None:
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d) as g:
        out = world.generate(g)
        report = g.last_report
    assert torch.equal(out, world.ref)
    # r1 sits on the last generated token: only the extra final step can see it.
    assert events_of(d) == expected(world)
    assert report is not None and report.finished
    assert [r.completion_tokens for r in report.rows] == [World.NEW] * 3
    assert [r.prompt_tokens for r in report.rows] == world.enc["attention_mask"].sum(1).tolist()
    assert sum(s.tokens for s in d.steps) == sum(r.tokens_seen for r in report.rows)


def test_seeded_sampling_and_dict_output_are_identical(world: World) -> None:
    kw = {"do_sample": True, "top_k": 20, "return_dict_in_generate": True, "output_scores": True}
    torch.manual_seed(7)
    ref = world.generate(world.model, **kw)
    with monitor.attach(world.model, world.policy(LOG_RULES)) as g:
        torch.manual_seed(7)
        out = world.generate(g, **kw)
    assert type(out) is type(ref)
    assert torch.equal(out.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, ref.scores, strict=True))


def test_stop_ends_only_the_flagged_row(world: World) -> None:
    rules = (
        "- {id: s0, severity: high, condition: {feature: f0, above: 0.0}, actions: [{type: stop}]}"
    )
    with monitor.attach(world.model, world.policy(rules, "stop")) as g:
        out = world.generate(g)
        row0 = g.last_report.rows[0]
    _, col = world.cols[0]
    pad = world.model.generation_config.pad_token_id
    assert torch.equal(out[0, : col + 1], world.ref[0, : col + 1])
    assert (out[0, col + 1 :] == pad).all()
    assert torch.equal(out[1:], world.ref[1:])
    assert row0.stopped and row0.halt_rule == "s0" and row0.halt_token == world.token(0)
    assert row0.completion_tokens == col - world.L0 + 1  # nothing after the stop is checked


def test_left_padded_batch_reports_the_same_events_as_single_rows(world: World) -> None:
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d) as g:
        singles = []
        for b in range(3):
            ids = world.enc["input_ids"][b : b + 1, world.pads[b] :]
            d1 = CollectingDispatcher()
            g.dispatcher = d1
            g.generate(
                input_ids=ids, max_new_tokens=World.NEW, do_sample=False, no_repeat_ngram_size=1
            )
            singles += [(b, r, t) for _, r, t in events_of(d1)]
    assert sorted(singles) == expected(world)


def test_use_cache_false_gives_the_same_events(world: World) -> None:
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d) as g:
        out = world.generate(g, use_cache=False)
    assert torch.equal(out, world.generate(world.model, use_cache=False))
    assert events_of(d) == expected(world)


def test_streaming_gives_the_same_events_and_tokens(world: World) -> None:
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.chunks: list[torch.Tensor] = []

        def put(self, value: torch.Tensor) -> None:
            self.chunks.append(value)

        def end(self) -> None:
            pass

    d, s = CollectingDispatcher(), Collect()
    enc = {k: v[:1, world.pads[0] :] for k, v in world.enc.items()}
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d) as g:
        out = g.generate(
            **enc, max_new_tokens=World.NEW, do_sample=False, no_repeat_ngram_size=1, streamer=s
        )
    streamed = torch.cat([c.reshape(-1) for c in s.chunks[1:]])
    assert torch.equal(streamed, out[0, enc["input_ids"].shape[1] :])
    assert events_of(d) == [e for e in expected(world) if e[0] == 0]


def test_ablation_removes_exactly_the_feature_and_changes_logits(world: World) -> None:
    from sae.hooks import resolve_hook

    rules = (
        "- {id: a0, severity: high, condition: {feature: f2, above: 0.0}, "
        "actions: [{type: ablate, features: [f2]}]}"
    )
    seen: list[torch.Tensor] = []
    kw = {"return_dict_in_generate": True, "output_logits": True, "max_new_tokens": 2}
    ref = world.generate(world.model, **kw)
    with monitor.attach(world.model, world.policy(rules, "ablate")) as g:
        handle = resolve_hook(world.model, world.hook).register(lambda t: seen.append(t.clone()))
        try:
            out = world.generate(g, **kw)
        finally:
            handle.remove()
    b, col = world.cols[2]
    edited = seen[0][b]  # (L0, d) prefill output after the monitor's hook
    original = world.h[b, : world.L0]
    diff = edited - original
    f = world.sae.encode(original[col])[2]
    expected_delta = -f * world.sae.W_dec[2]
    assert torch.allclose(diff[col], expected_delta, atol=1e-4)
    others = torch.ones(world.L0, dtype=torch.bool)
    others[col] = False
    assert diff[others].abs().max() < 1e-4  # nothing else moved at the hooked layer
    assert not torch.equal(out.logits[0][b], ref.logits[0][b])
    assert torch.equal(out.logits[0][:b], ref.logits[0][:b])


def test_context_reaches_events_and_exceptions(world: World) -> None:
    rules = """
    - id: r0
      severity: high
      condition: {feature: f0, above: 0.0}
      exceptions: [{context: {tenant: [redteam]}}]
      actions: [{type: log}]
    - {id: r2, severity: low, condition: {feature: f2, above: 0.0}, actions: [{type: log}]}
    """
    d = CollectingDispatcher()
    ctx = [{"tenant": "redteam"}, {"tenant": "acme"}, {"tenant": "acme", "request_id": "q2"}]
    with monitor.attach(world.model, world.policy(rules, "ctx"), dispatcher=d) as g:
        world.generate(g, monitor_context=ctx)
    assert [(e.row, e.rule) for e in d.events] == [(2, "r2")]
    assert d.events[0].context["request_id"] == "q2"


def test_hooks_are_gated_and_removed(world: World, tmp_path: Path) -> None:
    mods = list(world.model.modules())
    g = monitor.attach(world.model, world.policy(LOG_RULES))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods) == 2
    assert torch.equal(world.generate(world.model), world.ref)  # inactive outside generate
    g.detach()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods) == 0
