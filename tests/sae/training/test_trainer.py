"""Trainers: loss falls, sparsity is as promised, dead latents, resume, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae.training.store import ActivationReader, Manifest
from sae.training.trainer import (
    TrainableSAE,
    TrainConfig,
    _loss,
    geometric_median,
    sparse_codes,
    sparse_decode,
    train_sae,
)

D_IN, N_TRUE = 16, 48


def _planted_store(path: Path, rows: int = 8192, seed: int = 0) -> Path:
    """Activations that are sparse sums of ``N_TRUE`` unit directions (about 3 active each)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(N_TRUE, D_IN, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    active = torch.rand(rows, N_TRUE, generator=g) < 3 / N_TRUE
    coef = active * (1 + 4 * torch.rand(rows, N_TRUE, generator=g))
    x = coef @ dirs * 10 + 2.0  # raw units: a scale and an offset the trainer must handle
    path.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, chunk in enumerate(x.split(2048)):
        save_file({"acts": chunk.half().contiguous()}, str(path / f"shard_{i}.safetensors"))
        shards.append({"file": f"shard_{i}.safetensors", "rows": chunk.shape[0]})
    Manifest(d_in=D_IN, hook="h", model="m", shards=shards).save(path)
    return path


def _cfg(**kw: object) -> TrainConfig:
    base: dict = dict(
        d_sae=64,
        k=4,
        batch_size=256,
        epochs=6,
        warmup_steps=10,
        lr=3e-3,
        checkpoint_every=50,
        dead_tokens=4096,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("recipe", ["batchtopk", "topk", "relu_l1"])
def test_training_lowers_reconstruction_loss(tmp_path: Path, recipe: str) -> None:
    reader = ActivationReader(_planted_store(tmp_path / "store"), batch_size=256)
    model, summary = train_sae(
        reader, _cfg(recipe=recipe, l1_coefficient=0.05), tmp_path / "run", progress=False
    )
    hist = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["history"]
    first, last = hist[0]["fvu"], hist[-1]["fvu"]
    assert last < 0.5 * first, (first, last)
    assert last < 0.25
    if recipe == "topk":
        x = next(iter(reader.epoch(0))) / summary["input_scale"]
        f = model.select(model.pre_acts(x))
        assert ((f > 0).sum(-1) <= 4).all() and (f > 0).sum(-1).float().mean() > 3.5
    if recipe == "batchtopk":
        assert float(model.threshold) > 0


def test_topk_gives_exactly_k_active() -> None:
    torch.manual_seed(0)
    m = TrainableSAE(D_IN, 64, "topk", 5)
    f = m.select(m.pre_acts(torch.randn(100, D_IN) * 3))
    assert ((f > 0).sum(-1) == 5).all()
    b = TrainableSAE(D_IN, 64, "batchtopk", 5)
    fb = b.select(b.pre_acts(torch.randn(100, D_IN) * 3))
    assert int((fb > 0).sum()) == 500  # k × batch in total, free per token


def test_l1_penalty_reduces_l0(tmp_path: Path) -> None:
    reader = ActivationReader(_planted_store(tmp_path / "store"), batch_size=256)
    l0 = []
    for coeff in (0.0, 2.0):
        run = tmp_path / f"run{coeff}"
        train_sae(
            reader, _cfg(recipe="relu_l1", l1_coefficient=coeff, epochs=3), run, progress=False
        )
        l0.append(torch.load(run / "checkpoint.pt", weights_only=True)["history"][-1]["l0"])
    assert l0[1] < 0.5 * l0[0], l0


def test_auxk_loss_applies_only_to_dead_latents() -> None:
    torch.manual_seed(0)
    m = TrainableSAE(D_IN, 64, "topk", 4)
    x = torch.randn(64, D_IN)
    none_dead = torch.zeros(64, dtype=torch.bool)
    _, _, logs = _loss(m, x, none_dead, _cfg())
    assert "auxk" not in logs
    dead = none_dead.clone()
    dead[:10] = True
    loss, _, logs = _loss(m, x, dead, _cfg())
    assert logs["auxk"] > 0
    loss.backward()
    # the aux loss sends gradient into dead latents' encoder columns even though topk skipped them
    assert m.W_enc.grad is not None and m.W_enc.grad[:, :10].abs().sum() > 0


@pytest.mark.parametrize("recipe", ["batchtopk", "topk", "relu_l1"])
def test_sparse_decode_equals_dense_decode(recipe: str) -> None:
    torch.manual_seed(0)
    m = TrainableSAE(D_IN, 64, recipe, 4)
    x = torch.randn(50, D_IN) * 3
    pre = m.pre_acts(x)
    rows, cols, vals = sparse_codes(m, pre)
    dense = m.select(pre) @ m.W_dec  # (N, d_in)
    torch.testing.assert_close(sparse_decode(m.W_dec, rows, cols, vals, 50), dense)


def test_dead_latents_are_counted_and_revived(tmp_path: Path) -> None:
    reader = ActivationReader(_planted_store(tmp_path / "store"), batch_size=256)
    _, with_aux = train_sae(reader, _cfg(recipe="topk", d_sae=128), tmp_path / "a", progress=False)
    _, no_aux = train_sae(
        reader, _cfg(recipe="topk", d_sae=128, auxk_alpha=0.0), tmp_path / "b", progress=False
    )
    assert 0.0 <= with_aux["dead_fraction_train"] <= 1.0
    assert with_aux["dead_fraction_train"] <= no_aux["dead_fraction_train"]


def test_resume_and_determinism(tmp_path: Path) -> None:
    reader = ActivationReader(_planted_store(tmp_path / "store"), batch_size=256)
    full, _ = train_sae(reader, _cfg(epochs=2), tmp_path / "full", progress=False)
    again, _ = train_sae(
        ActivationReader(tmp_path / "store", batch_size=256),
        _cfg(epochs=2),
        tmp_path / "again",
        progress=False,
    )
    assert torch.equal(full.W_dec, again.W_dec)  # deterministic for a seed
    # stop after 37 of 64 steps (mid-epoch), then resume to the end
    part = tmp_path / "part"
    train_sae(reader, _cfg(epochs=2), part, progress=False, stop_after=37)
    resumed, summary = train_sae(reader, _cfg(epochs=2), part, progress=False)
    assert summary["steps"] == 64
    torch.testing.assert_close(resumed.W_dec, full.W_dec, rtol=1e-4, atol=1e-5)


def test_geometric_median_resists_outliers() -> None:
    x = torch.zeros(101, 3)
    x[:5] = 1000.0
    assert geometric_median(x).norm() < 1.0 < x.mean(0).norm()


def test_extending_a_finished_run_adds_a_stage(tmp_path: Path) -> None:
    reader = ActivationReader(_planted_store(tmp_path / "store"), batch_size=256)
    _, first = train_sae(reader, _cfg(epochs=1), tmp_path / "run", progress=False)
    assert first["steps"] == 32 and len(first["stages"]) == 1
    _, second = train_sae(reader, _cfg(epochs=2), tmp_path / "run", progress=False)
    assert second["steps"] == 64
    assert [s["start_step"] for s in second["stages"]] == [0, 32]
