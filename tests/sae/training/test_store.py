"""Activation store: collection drops pads and position 0, resumes, and the reader is exact."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sae.training.store import ActivationReader, Manifest, activations_for_rows, collect
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer

HOOK = "blocks.1.hook_resid_post"


def _docs(n: int) -> list[dict]:
    words = ["scam", "bank", "fox", "engineer", "tests", "world", "careful", "prize"]
    return [
        {
            "source": "a" if i % 2 else "b",
            "text": " ".join(words[(i + j) % 8] for j in range(3 + i % 9)),
        }
        for i in range(n)
    ]


def test_rows_drop_padding_and_position_zero() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    rows = [[5, 6, 7, 8], [9, 10]]
    acts, row_index = activations_for_rows(model, HOOK, rows, tok.pad_token_id)
    assert acts.shape == (3 + 1, 64)
    assert row_index.tolist() == [0, 0, 0, 1]
    # equal to the unpadded single-row hidden states at positions 1..
    out = model(torch.tensor([rows[0]]), output_hidden_states=True)
    torch.testing.assert_close(acts[:3], out.hidden_states[2][0, 1:], rtol=1e-4, atol=1e-5)


def test_collect_counts_resumes_and_never_duplicates(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    docs = _docs(40)
    full = collect(
        model,
        tok,
        HOOK,
        "tiny",
        docs,
        tmp_path / "full",
        corpus_name="c",
        shard_rows=50,
        docs_per_group=8,
        progress=False,
    )
    expected_rows = sum(len(tok(d["text"])["input_ids"]) - 1 for d in docs)
    assert full.rows == expected_rows
    assert full.inputs == {"c": 40}
    assert sum(full.tokens_per_source.values()) == expected_rows
    # an interrupted run (token cap) resumes to the same total
    part = collect(
        model,
        tok,
        HOOK,
        "tiny",
        docs,
        tmp_path / "part",
        corpus_name="c",
        shard_rows=50,
        docs_per_group=8,
        max_tokens=60,
        progress=False,
    )
    assert part.inputs["c"] < 40
    resumed = collect(
        model,
        tok,
        HOOK,
        "tiny",
        docs,
        tmp_path / "part",
        corpus_name="c",
        shard_rows=50,
        docs_per_group=8,
        progress=False,
    )
    assert resumed.rows == expected_rows and resumed.inputs == {"c": 40}
    a = torch.cat(list(ActivationReader(tmp_path / "full", batch_size=1000).epoch(0)))
    b = torch.cat(list(ActivationReader(tmp_path / "part", batch_size=1000).epoch(0)))
    assert a.shape == b.shape
    torch.testing.assert_close(a.sum(0), b.sum(0), rtol=1e-3, atol=1e-2)


def test_refuses_to_mix_hooks(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    collect(model, tok, HOOK, "tiny", _docs(4), tmp_path, corpus_name="c", progress=False)
    try:
        collect(
            model,
            tok,
            "blocks.0.hook_resid_post",
            "tiny",
            _docs(4),
            tmp_path,
            corpus_name="c",
            progress=False,
        )
    except Exception as exc:
        assert "refusing" in str(exc)
    else:
        raise AssertionError("mixing hooks in one store must fail")


def test_reader_yields_every_row_exactly_once_per_epoch(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tmp_path.mkdir(exist_ok=True)
    shards = []
    start = 0
    for i, n in enumerate([7, 13, 5, 11]):
        rows = torch.arange(start, start + n, dtype=torch.float16).unsqueeze(1).repeat(1, 3)
        save_file({"acts": rows}, str(tmp_path / f"s{i}.safetensors"))
        shards.append({"file": f"s{i}.safetensors", "rows": n})
        start += n
    Manifest(d_in=3, hook="h", model="m", shards=shards).save(tmp_path)
    reader = ActivationReader(tmp_path, batch_size=4, buffer_shards=2, seed=3)
    for epoch in range(2):
        seen = torch.cat(list(reader.epoch(epoch)))[:, 0]
        assert sorted(seen.tolist()) == list(range(36))
    # shuffled, and deterministic per (seed, epoch)
    e0 = torch.cat(list(reader.epoch(0)))[:, 0].tolist()
    assert e0 != sorted(e0)
    assert e0 == torch.cat(list(reader.epoch(0)))[:, 0].tolist()
    assert json.loads((tmp_path / "manifest.json").read_text())["d_in"] == 3
