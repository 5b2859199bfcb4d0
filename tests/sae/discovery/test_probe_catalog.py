"""Building the training rows of a probe (sae.discovery.probe_catalog)."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.discovery.activations import encode_items, load_stack
from sae.discovery.data import load_items
from sae.discovery.probe import TokenBatch
from sae.discovery.probe_catalog import token_rows


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
