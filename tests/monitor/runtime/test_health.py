"""Runtime SAE health: a sampled dense encode reports L0 and explained variance."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from prometheus_client import CollectorRegistry

import monitor
from monitor.metrics import Metrics
from monitor.runtime import CollectingDispatcher
from monitor.runtime.dispatch import MonitorDispatcher
from monitor.runtime.health import HealthSampler, sae_health
from monitor.runtime.textscan import scan_batch
from tests.monitor.runtime.helpers import LOG_RULES, World, hidden


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World("llama", tmp_path_factory.mktemp("health"))


def reference(sae: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """L0 and explained variance written out independently of the runtime."""
    with torch.no_grad():
        f = sae.encode(x)  # type: ignore[operator]
        x_hat = sae.decode(f)  # type: ignore[operator]
    l0 = float((f > 0).sum(-1).float().mean())
    ev = 1 - float(((x - x_hat) ** 2).sum()) / float(((x - x.mean(0)) ** 2).sum())
    return l0, ev


def gauges(reg: CollectorRegistry) -> tuple[float, float]:
    l0 = reg.get_sample_value("featureguard_sae_l0", {"sae": "main"})
    ev = reg.get_sample_value("featureguard_sae_explained_variance", {"sae": "main"})
    assert l0 is not None and ev is not None
    return l0, ev


def prompt_rows(world: World) -> tuple[list[list[int]], list[list[int]]]:
    return [world.enc["input_ids"][b, world.pads[b] :].tolist() for b in range(3)], [[]] * 3


def test_scan_health_equals_a_reference_on_the_same_activations(world: World) -> None:
    reg = CollectorRegistry()
    d = MonitorDispatcher(Metrics(reg))
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d, health_every=1) as g:
        scan_batch(g, *prompt_rows(world))
    # The same batch, unpadded per row: every valid token but each row's first (< 32 of them).
    ids, mask = world.enc["input_ids"], world.enc["attention_mask"]
    h = hidden(world.model, world.hook, ids, mask)  # (B, L0, d)
    keep = mask.bool().clone()
    for b in range(3):
        keep[b, world.pads[b]] = False
    x = h[keep]  # (n, d) in row then column order
    assert 8 <= x.shape[0] <= 32
    l0, ev = gauges(reg)
    want_l0, want_ev = reference(world.sae, x)
    assert math.isfinite(l0) and math.isfinite(ev)
    assert l0 == pytest.approx(want_l0, abs=1e-6)
    assert ev == pytest.approx(want_ev, abs=1e-4)


def test_generate_reports_health_and_stays_bit_identical(world: World) -> None:
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d, health_every=1) as g:
        out = world.generate(g)
    assert torch.equal(out, world.ref)
    assert len(d.health) >= 2  # prefill, then decode steps (3 rows each) pooled to >= 8
    for sae, l0, ev, n in d.health:
        assert sae == "main" and math.isfinite(l0) and math.isfinite(ev) and 8 <= n <= 32
    # The first sample is the prefill: every valid prompt token but each row's first.
    keep = world.enc["attention_mask"].bool().clone()
    for b in range(3):
        keep[b, world.pads[b]] = False
    x = world.h[:, : world.L0][keep]
    want_l0, want_ev = reference(world.sae, x)
    assert d.health[0][1] == pytest.approx(want_l0, abs=1e-6)
    assert d.health[0][2] == pytest.approx(want_ev, abs=1e-3)


def test_disabled_health_leaves_the_gauges_nan(world: World) -> None:
    reg = CollectorRegistry()
    d = MonitorDispatcher(Metrics(reg))
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d, health_every=0) as g:
        out = world.generate(g)
        scan_batch(g, *prompt_rows(world))
    assert torch.equal(out, world.ref)
    assert all(math.isnan(v) for v in gauges(reg))


def test_dead_sae_shows_l0_zero_on_the_gauge(world: World) -> None:
    dead = copy.deepcopy(world.sae)
    with torch.no_grad():
        dead.b_enc.fill_(-1e4)  # every feature off on every token
    reg = CollectorRegistry()
    d = MonitorDispatcher(Metrics(reg))
    pol = world.policy(LOG_RULES, "dead")
    with monitor.attach(world.model, pol, saes={"main": dead}, dispatcher=d) as g:
        world.generate(g)  # default health_every: the first forward is sampled
    l0, ev = gauges(reg)
    assert l0 == 0.0 and ev <= 0.0  # the reconstruction is the constant b_dec


def test_sampler_counts_tokens_and_carries_small_samples() -> None:
    s = HealthSampler(10, sample=4, min_tokens=3)
    assert s.due()  # the first forward
    assert s.collect("h", torch.ones(2, 5)) is None  # too few: kept for the next forward
    got = s.collect("h", torch.arange(20.0).reshape(4, 5))
    assert got is not None and got.shape == (4, 5) and bool((got[0] == 1).all())
    s.done()
    assert not s.due()
    s.tick(9)
    assert not s.due()
    s.tick(1)
    assert s.due()
    assert not HealthSampler(0).due()


def test_sae_health_of_a_perfect_sae_is_one() -> None:
    from sae.registry import create_sae

    sae = create_sae(d_in=4, d_sae=8, architecture="standard", hook_name="h")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_enc.fill_(-1.0)
        for i in range(4):  # +e_i and -e_i through two ReLU features: exact reconstruction
            sae.W_enc[i, i], sae.W_enc[i, i + 4] = 1.0, -1.0
            sae.W_dec[i, i], sae.W_dec[i + 4, i] = 1.0, -1.0
        sae.b_enc.zero_()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    l0, ev = sae_health(sae, x)
    assert ev == pytest.approx(1.0, abs=1e-6) and 0 < l0 <= 4
    assert math.isnan(sae_health(sae, x[:1])[1])  # one token: no variance to explain
