"""A negative clamp in the runtime: the feature is set to the cap on every active token, also
where it was 0, from the matching token on; tokens whose features are not read (a row's
ignored first token, massive-activation outliers) are left alone, as ablate leaves them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import monitor
from monitor.policy.compiled import CompiledPolicy
from sae.hooks import resolve_hook
from tests.monitor.runtime.helpers import World, hidden, make_policy

CAP = -2.0
HELD = (
    "- {id: neg, severity: high, condition: {feature: f2, above: 0.0}, hold: 1000, "
    f"actions: [{{type: clamp, features: [f2], value: {CAP}}}]}}"
)
ALWAYS = (
    "- {id: neg, severity: high, condition: {not: {feature: f0, above: 1.0e+30}}, "
    f"actions: [{{type: clamp, features: [f2], value: {CAP}}}]}}"
)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(request.param, tmp_path_factory.mktemp(request.param))


def run(world: World, p: CompiledPolicy, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Monitored greedy ids ``(B, L0 + NEW)`` and the hooked layer's output after the monitor's
    edit ``(B, L, d)`` over every column it ran on (prefill, then one per decode step)."""
    seen: list[torch.Tensor] = []
    with monitor.attach(world.model, p, **kw) as g:
        handle = resolve_hook(world.model, world.hook).register(lambda t: seen.append(t.clone()))
        try:
            out = world.generate(g, min_new_tokens=world.NEW)  # no EOS: every column is valid
        finally:
            handle.remove()
    return out, torch.cat(seen, dim=1)


def before_edit(world: World, out: torch.Tensor, L: int) -> torch.Tensor:
    """``(B, L, d)``: the hooked layer's output on ``out`` without a monitor. An edit at the hook
    changes only later layers, so this is what the monitor read before editing."""
    B = out.shape[0]
    mask = torch.cat([world.enc["attention_mask"], torch.ones(B, world.NEW, dtype=torch.long)], 1)
    return hidden(world.model, world.hook, out[:, :L], mask[:, :L])


def clamp_delta(world: World, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``((B, L, d) delta (CAP - f2) · W_dec[2], (B, L) f2)`` at every token."""
    with torch.no_grad():
        f2 = world.sae.encode(pre)[..., 2]  # (B, L)
        return (CAP - f2).unsqueeze(-1) * world.sae.W_dec[2], f2


def test_negative_clamp_sets_the_feature_from_the_match_on_even_where_it_is_zero(
    world: World,
) -> None:
    out, post = run(world, world.policy(HELD, "held"))
    L = post.shape[1]
    assert L > world.L0  # decode steps were edited too, not only the prefill
    pre = before_edit(world, out, L)
    delta, f2 = clamp_delta(world, pre)
    b, col = world.cols[2]  # f2 > 0 only here: the rule matches here and is held to the end
    expected = torch.zeros_like(pre)
    expected[b, col:] = delta[b, col:]
    assert torch.allclose(post - pre, expected, atol=1e-4)
    assert bool((f2[b, col + 1 :] == 0).any())  # the edit acted where f2 was 0
    assert delta[b, col:].norm(dim=-1).min() > 0.1  # and moved the layer visibly there


def expected_edit(
    world: World, out: torch.Tensor, post: torch.Tensor, skip: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(post - pre, expected)`` for ALWAYS: the clamp delta on every valid token (no padding
    column) but where ``skip (B, L)``."""
    L = post.shape[1]
    pre = before_edit(world, out, L)
    delta, _ = clamp_delta(world, pre)
    edited = torch.arange(L) >= torch.tensor(world.pads).unsqueeze(1)  # (B, L) valid
    if skip is not None:
        edited &= ~skip
    return post - pre, torch.where(edited.unsqueeze(-1), delta, 0.0)


def first_tokens(world: World, L: int) -> torch.Tensor:
    """(B, L) bool: each row's first (unpadded) token."""
    return torch.arange(L) == torch.tensor(world.pads).unsqueeze(1)


@pytest.mark.parametrize("ignore_first", [True, False])
def test_negative_clamp_skips_an_ignored_first_token(world: World, ignore_first: bool) -> None:
    out, post = run(world, world.policy(ALWAYS, "always"), ignore_first_token=ignore_first)
    first = first_tokens(world, post.shape[1])
    diff, expected = expected_edit(world, out, post, first if ignore_first else None)
    assert torch.allclose(diff, expected, atol=1e-4)
    assert bool(expected[first].any()) != ignore_first  # the first tokens are the difference


def test_negative_clamp_skips_outlier_tokens_with_and_without_kv_cache(
    world: World, tmp_path: Path
) -> None:
    L0 = world.L0
    later = world.enc["attention_mask"].bool()  # (B, L0)
    later[first_tokens(world, L0)] = False
    norms = world.h[:, :L0].norm(dim=-1)[later].sort(descending=True).values
    cutoff = float(norms[:2].mean())  # one prompt token past the first ones is an outlier
    sae = copy.deepcopy(world.sae)
    sae.cfg.metadata["input_norm_cutoff"] = cutoff
    p = make_policy(tmp_path, sae, ALWAYS)

    out, post = run(world, p, ignore_first_token=False)
    L = post.shape[1]
    pre_norm = before_edit(world, out, L).norm(dim=-1)  # (B, L)
    assert (pre_norm - cutoff).abs().min() > 1e-3  # no token is borderline
    outlier = pre_norm > cutoff
    assert bool((outlier & ~first_tokens(world, L)).any())
    diff, expected = expected_edit(world, out, post, outlier)
    assert torch.allclose(diff, expected, atol=1e-4)

    # without a KV cache, every forward replays the earlier columns' edits: the same tokens
    with monitor.attach(world.model, p, ignore_first_token=False) as g:
        assert torch.equal(world.generate(g, min_new_tokens=world.NEW, use_cache=False), out)
