"""A tiny llama + tokenizer saved to disk, a random jumprelu SAE on its layer 1, and a tiny
detection set: everything the CLI smoke tests load, built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae.loading import save_sae
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer
from tests.sae.helpers import random_sae

WORDS = {
    "scam": "send your bank password now to claim the prize",
    "benign": "the quick brown fox jumps over the lazy dog",
}


@pytest.fixture(scope="session")
def tiny_stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("discovery")
    tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    sae = random_sae(
        "jumprelu",
        d_in=64,
        d_sae=64,
        hook_name="blocks.1.hook_resid_post",
        model_name=str(root / "model"),
    )
    save_sae(sae, root / "sae")
    det = root / "det"
    (det / "items").mkdir(parents=True)
    rows, splits = [], {}
    for cat, words in WORDS.items():
        for i in range(12):
            rid = f"{cat}-{i:04d}"
            row: dict[str, object] = {
                "id": rid,
                "category": cat,
                "hard_negative": cat == "benign" and i % 3 == 0,
            }
            if i % 2:
                row["text"] = f"{words} {i}"
            else:
                row["messages"] = [{"role": "user", "content": f"{words} number {i}"}]
            rows.append(row)
            splits[rid] = ["train", "train", "dev", "test"][i % 4]
    (det / "items" / "all.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (det / "splits.json").write_text(json.dumps(splits))
    return root
