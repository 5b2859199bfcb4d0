"""Massive-activation outliers (input norm above the SAE's recorded cutoff) score all-zero."""

from __future__ import annotations

from pathlib import Path

import torch

import monitor
from monitor.runtime import CollectingDispatcher
from sae.encode import outlier_cutoff, zero_outliers
from tests.monitor.runtime.helpers import LOG_RULES, World, events_of


def test_zero_outliers_masks_only_tokens_above_the_cutoff() -> None:
    x = torch.tensor([[3.0, 4.0], [30.0, 40.0]])  # norms 5 and 50
    f = torch.ones(2, 3)
    assert torch.equal(zero_outliers(x, f, 10.0), torch.tensor([[1.0] * 3, [0.0] * 3]))
    assert zero_outliers(x, f, None) is f


def test_runtime_scores_outlier_tokens_as_zero(tmp_path: Path) -> None:
    world = World("llama", tmp_path)

    def events(cutoff: float | None) -> list[tuple[int, str, int]]:
        if cutoff is None:
            world.sae.cfg.metadata.pop("input_norm_cutoff", None)
        else:
            world.sae.cfg.metadata["input_norm_cutoff"] = cutoff
        assert outlier_cutoff(world.sae) == cutoff
        d = CollectingDispatcher()
        with monitor.attach(
            world.model,
            world.policy(LOG_RULES, name=f"p{cutoff}"),
            saes={"main": world.sae},
            dispatcher=d,
        ) as g:
            world.generate(g)
        return events_of(d)

    base = events(None)
    assert base, "the planted features fire without a cutoff"
    assert events(1e9) == base  # a cutoff no token reaches changes nothing
    assert events(0.0) == []  # every token an outlier: nothing is scored above 0
