"""Building the training rows of a probe (sae.discovery.probe_catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae.discovery.activations import encode_items, load_stack
from sae.discovery.data import SOURCE_FILE, Item, load_items, read_jsonl, with_raw_renderings
from sae.discovery.probe import TokenBatch
from sae.discovery.probe_catalog import source_batches, token_rows
from sae.errors import FeatureguardError


def test_token_rows_in_chunks_match_one_pass_and_pack_in_item_order(tiny_stack_dir: Path) -> None:
    stack = load_stack(str(tiny_stack_dir / "sae"))
    items = load_items(f"{tiny_stack_dir / 'det'}:*:train,dev")  # 18 items: several chunks of 4
    whole = encode_items(stack, items, span="all")
    rows = token_rows(stack, items, None, "all", chunk=4)
    assert len(rows) == len(items)
    for sc, r in zip(whole, rows, strict=True):
        assert r.shape == (sc.values.shape[0] + 1, 64)  # the runtime's first token leads, at 0
        assert not r[0].any()
        assert torch.allclose(r[1:], sc.values, atol=1e-5)
    want = torch.cat(rows)
    batch = TokenBatch.pack(rows)
    assert rows == [] and torch.equal(batch.flat, want)
    assert batch.mask.sum(1).tolist() == [sc.values.shape[0] + 1 for sc in whole]


def test_items_remember_their_source_file_and_twins_share_its_batch(tmp_path: Path) -> None:
    for name, ids in (("a.jsonl", "xy"), ("b.jsonl", "z")):
        lines = [
            f'{{"id": "{i}", "messages": [{{"role": "user", "content": "{i}"}}]}}' for i in ids
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    items = [*read_jsonl(tmp_path / "b.jsonl"), *read_jsonl(tmp_path / "a.jsonl")]
    assert items[0].extra[SOURCE_FILE] == str(tmp_path / "b.jsonl")
    rows, _ = with_raw_renderings(items)  # z, x, y, then their raw twins
    assert source_batches(rows).tolist() == [0, 1, 1, 0, 1, 1]
    with pytest.raises(FeatureguardError, match=r"no source file.*'made-up'"):
        source_batches([*items, Item(id="made-up", text="t")])
