"""Export folds the input scale exactly; eval metrics are right; the whole job runs and saves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sae.loading import load_sae
from sae.preflight import check_attachment
from sae.training.evaluate import evaluate_sae, export_sae
from sae.training.pipeline import Job, load_feature_stats, run_job
from sae.training.trainer import TrainableSAE, TrainConfig
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer

HOOK = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("recipe", ["topk", "relu_l1", "batchtopk"])
def test_export_reads_raw_units(recipe: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = TrainableSAE(16, 40, recipe, 4)
    with torch.no_grad():
        trained.b_enc.normal_()
        trained.b_dec.normal_()
        trained.threshold.fill_(0.3)
    s = 7.5
    sae = export_sae(trained, s, hook_name=HOOK, model_name="tiny")
    x = torch.randn(30, 16) * s
    pre = trained.pre_acts(x / s)
    # batchtopk is exported as jumprelu with the learnt threshold
    expected = pre * (pre > 0.3) if recipe == "batchtopk" else trained.select(pre)
    torch.testing.assert_close(sae.encode(x), expected * s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        sae.decode(sae.encode(x)), trained.decode(expected) * s, rtol=1e-5, atol=1e-4
    )
    # and the saved folder loads back to the same encode
    sae.cfg.metadata["note"] = "x"
    from sae.loading import save_sae

    save_sae(sae, tmp_path / "s")
    torch.testing.assert_close(load_sae(tmp_path / "s").encode(x), sae.encode(x))


def test_identity_sae_metrics() -> None:
    """An SAE that reconstructs perfectly has EV 1 and CE recovered 1."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    d = model.config.hidden_size
    trained = TrainableSAE(d, 2 * d, "relu_l1", 0)
    with torch.no_grad():  # f = [relu(x), relu(-x)], decoder [I; -I]: exact reconstruction
        trained.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
        trained.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], dim=0))
        trained.b_enc.zero_()
        trained.b_dec.zero_()
    sae = export_sae(trained, 1.0, hook_name=HOOK, model_name="tiny")
    docs = [{"text": "Please send your bank password to claim the prize money now!"}] * 6
    r = evaluate_sae(model, tok, sae, docs, max_tokens=200, progress=False)
    assert r["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert r["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert r["n_tokens"] == 6 * (len(tok(docs[0]["text"])["input_ids"]) - 1)
    assert 0 < r["l0"] <= d


def test_job_end_to_end_saves_a_loadable_sae_that_passes_preflight(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "scam",
        "bank",
        "engineer",
        "careful",
        "prize",
        "world",
        "tests",
        "money",
    ]
    g = torch.Generator().manual_seed(0)
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as fh:
        for i in range(400):
            n = int(torch.randint(6, 30, (1,), generator=g))
            text = " ".join(words[int(j)] for j in torch.randint(0, len(words), (n,), generator=g))
            fh.write(
                json.dumps(
                    {"source": "syn", "split": "heldout" if i % 10 == 0 else "train", "text": text}
                )
                + "\n"
            )
    job = Job(
        model="tiny",
        hook=HOOK,
        work=tmp_path / "work",
        out=tmp_path / "sae",
        corpora=[corpus],
        eval_tokens=500,
        progress=False,
        train=TrainConfig(
            d_sae=256, k=8, batch_size=512, epochs=12, lr=3e-3, warmup_steps=10, checkpoint_every=20
        ),
    )
    lm = SimpleNamespace(model=model, tokenizer=tok)
    summary = run_job(job, lm, src_dir=tmp_path)
    ev = summary["eval"]["eval"]
    assert ev["explained_variance"] > 0.6
    assert 2 < ev["l0"] < 32
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.hook_name == HOOK
    assert sae.cfg.metadata["eval"]["l0"] == pytest.approx(ev["l0"])
    assert sae.cfg.metadata["provenance"]["collection"]["tokens"] > 3000
    stats = load_feature_stats(tmp_path / "sae")
    assert stats is not None and stats["max"].shape == (256,)
    texts = ["the quick brown fox scam bank engineer careful prize world"] * 8
    # a random model's CE barely depends on one layer, so CE recovered is noise here: check the rest
    report = check_attachment(model, tok, sae, texts, tolerances={"ce_loss_recovered": 100.0})
    assert report.ok
    assert report.explained_variance > 0.6
