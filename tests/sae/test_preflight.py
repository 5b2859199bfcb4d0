"""Preflight passes for an SAE on the layer it was trained on and fails readably elsewhere."""

from __future__ import annotations

import warnings

import pytest
import torch

from sae.base import SAE
from sae.errors import PreflightError
from sae.hooks import capture
from sae.preflight import EVAL_KEY, check_attachment, declared_metrics
from sae.registry import create_sae
from tests.helpers.tiny_models import _TRAIN_TEXT, tiny_model, tiny_tokenizer

TEXTS = [
    *sorted(set(_TRAIN_TEXT)),
    "A monitor reads sparse features at one layer and acts on rules.",
    "Bank codes, prize money and lazy dogs appear in these tiny tests.",
]


def _train_sae(model: torch.nn.Module, layer: int, steps: int = 200) -> SAE:
    """A standard SAE trained (Adam, L1) on the tiny llama's layer activations, position 0 out."""
    tok = tiny_tokenizer()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    x = capture(model, f"blocks.{layer}.hook_resid_post", enc["input_ids"], enc["attention_mask"])
    keep = enc["attention_mask"].bool()
    keep[:, 0] = False
    data = x[keep]  # (N, 64)
    torch.manual_seed(0)
    sae = create_sae(
        d_in=64,
        d_sae=256,
        architecture="standard",
        init="random",
        seed=0,
        hook_name=f"blocks.{layer}.hook_resid_post",
        model_name="tiny-llama",
    )
    with torch.no_grad():
        sae.b_dec.copy_(data.mean(0))
        sae.W_dec.mul_(0.1)
        sae.W_enc.copy_(sae.W_dec.T * 100)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(steps):
        f = sae.encode(data)
        l1 = (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = (sae.decode(f) - data).pow(2).sum(-1).mean() + 1e-3 * l1
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sae.requires_grad_(False).eval()


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, SAE]:
    model = tiny_model("llama")
    sae = _train_sae(model, layer=1)
    report = check_attachment(model, tiny_tokenizer(), sae, TEXTS)  # sanity checks only
    sae.cfg.metadata[EVAL_KEY] = {
        "l0": report.l0,
        "explained_variance": report.explained_variance,
        "ce_loss_recovered": report.ce_loss_recovered,
    }
    return model, sae


def test_passes_on_the_trained_layer(trained: tuple[torch.nn.Module, SAE]) -> None:
    model, sae = trained
    report = check_attachment(model, tiny_tokenizer(), sae, TEXTS)
    assert report.ok and report.explained_variance > 0.7 and report.l0 > 1
    assert set(declared_metrics(sae)) >= {"l0", "explained_variance"}
    assert report.n_tokens > 100


@pytest.mark.parametrize("layer", [2, 3])
def test_fails_readably_on_another_layer(trained: tuple[torch.nn.Module, SAE], layer: int) -> None:
    model, sae = trained
    with pytest.raises(PreflightError, match=r"does not fit 'blocks\.\d\.hook_resid_post'") as exc:
        check_attachment(
            model, tiny_tokenizer(), sae, TEXTS, hook_name=f"blocks.{layer}.hook_resid_post"
        )
    msg = str(exc.value)
    assert "problem:" in msg and ("explained variance" in msg or "L0" in msg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check_attachment(
            model,
            tiny_tokenizer(),
            sae,
            TEXTS,
            strict=False,
            hook_name=f"blocks.{layer}.hook_resid_post",
        )
    assert not report.ok and any("does not fit" in str(w.message) for w in caught)


def test_ce_loss_recovered_when_the_model_depends_on_the_hook() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.norm.weight.mul_(30)  # peaky logits: the random model now uses its residual
    sae = _train_sae(model, layer=1)
    report = check_attachment(model, tiny_tokenizer(), sae, TEXTS)
    assert report.ce_zero_ablated - report.ce_clean > 0.5
    assert report.ce_loss_recovered is not None and report.ce_loss_recovered > 0.7
    assert report.ce_clean <= report.ce_with_sae < report.ce_zero_ablated


def test_ce_check_is_skipped_when_the_model_ignores_the_hook(
    trained: tuple[torch.nn.Module, SAE],
) -> None:
    model, sae = trained  # random tiny llama: logits barely depend on the residual stream
    report = check_attachment(model, tiny_tokenizer(), sae, TEXTS)
    assert report.ce_loss_recovered is None and "n/a" in report.summary()


def test_sanity_floor_without_declared_metrics() -> None:
    model = tiny_model("llama")
    sae = create_sae(
        d_in=64,
        d_sae=128,
        architecture="jumprelu",
        init="random",
        seed=1,
        hook_name="blocks.1.hook_resid_post",
    )
    with torch.no_grad():
        sae.threshold.fill_(1e3)  # every feature is zero: the "wrong tensor" symptom
    with pytest.raises(PreflightError, match=r"L0 0\.00 < 0\.5: features are \(almost\) all zero"):
        check_attachment(model, tiny_tokenizer(), sae, TEXTS)


def test_width_mismatch_is_reported() -> None:
    model = tiny_model("llama")
    sae = create_sae(d_in=32, d_sae=64, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(PreflightError, match="width 64 but the SAE reads d_in=32"):
        check_attachment(model, tiny_tokenizer(), sae, TEXTS)


def test_model_is_left_clean(trained: tuple[torch.nn.Module, SAE]) -> None:
    model, sae = trained
    check_attachment(model, tiny_tokenizer(), sae, TEXTS)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_non_finite_metrics_never_pass() -> None:
    from sae.preflight import TOLERANCES, PreflightReport, _compare

    rep = PreflightReport(
        hook_name="h",
        n_tokens=100,
        l0=30.0,
        explained_variance=float("nan"),
        ce_clean=1.0,
        ce_with_sae=1.1,
        ce_zero_ablated=5.0,
        ce_loss_recovered=0.97,
        declared={"explained_variance": 0.85},
    )
    problems = _compare(rep, TOLERANCES)
    assert problems and "non-finite" in problems[0]
