"""Source specs, and the shared encode path: scored spans, position 0, subset == dense."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae.discovery.activations import encode_items, load_stack, pool, tokenize_item
from sae.discovery.data import (
    Item,
    items_sha256,
    load_items,
    raw_rendering,
    refuse_test_split,
    with_raw_renderings,
)
from sae.errors import FeatureguardError
from tests.helpers.tiny_models import tiny_tokenizer


def test_detection_specs_filter_by_category_and_split(tiny_stack_dir: Path) -> None:
    det = tiny_stack_dir / "det"
    scam = load_items(f"{det}:scam:train")
    assert scam and all(it.category == "scam" and it.split == "train" for it in scam)
    hard = load_items(f"{det}:hard_negative")
    assert hard and all(it.hard_negative for it in hard)
    plain = load_items(f"{det}:plain_benign:train,dev")
    assert not any(it.hard_negative for it in plain)
    assert len(load_items(f"{det}:*")) == 24
    with pytest.raises(FeatureguardError, match="test-split"):
        refuse_test_split(load_items(f"{det}:scam"), "x")
    with pytest.raises(FeatureguardError, match="unknown split"):
        load_items(f"{det}:scam:validation")
    assert items_sha256(scam) == items_sha256(list(reversed(scam)))


def test_user_span_scores_exactly_the_last_user_turn() -> None:
    tok = tiny_tokenizer()
    msgs = (
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "send your bank password"},
    )
    item = Item("x", messages=msgs)
    ids, pos, phase = tokenize_item(tok, item, "user")
    assert phase == "prompt" and tok.decode([ids[p] for p in pos]) == "send your bank password"
    ids, pos, _ = tokenize_item(tok, item, "all")
    assert pos == list(range(1, len(ids)))  # position 0 never scored
    with pytest.raises(FeatureguardError, match="no assistant turn"):
        tokenize_item(tok, item, "completion")
    ids, pos, phase = tokenize_item(tok, Item("t", text="quick brown fox"), "user")
    assert phase == "completion" and pos[0] == 1 and len(pos) == len(ids) - 1


def test_subset_encode_equals_dense_columns(tiny_stack_dir: Path) -> None:
    stack = load_stack(str(tiny_stack_dir / "sae"))
    items = load_items(f"{tiny_stack_dir / 'det'}:*:train")
    dense = encode_items(stack, items, span="all")
    sub = encode_items(stack, items, span="all", features=[5, 40, 2])
    for d, s in zip(dense, sub, strict=True):
        assert torch.equal(d.positions, s.positions) and 0 not in d.positions.tolist()
        assert torch.allclose(d.values[:, [5, 40, 2]], s.values, atol=1e-6)
    assert pool(dense, "max").shape == (len(items), 64)


def test_raw_rendering_is_the_last_user_turn_and_twins_share_a_group() -> None:
    chat = Item(
        "c",
        messages=(
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "send me the code"},
        ),
        category="scam",
        split="train",
    )
    text = Item("t", text="a plain passage", category="benign")
    raw = raw_rendering(chat)
    assert (raw.text, raw.messages, raw.id, raw.category, raw.split) == (
        "send me the code",
        None,
        "c",
        "scam",
        "train",
    )
    assert raw.extra["rendering"] == "raw" and raw.body() != chat.body()
    assert raw_rendering(text) is text
    rows, groups = with_raw_renderings([text, chat, text])
    assert [r.id for r in rows] == ["t", "c", "t", "c"] and rows[3] == raw
    assert groups == [0, 1, 2, 1]


def test_the_retired_test_split_is_trainable_and_the_fresh_one_is_not(tmp_path: Path) -> None:
    det = tmp_path / "det"
    (det / "items").mkdir(parents=True)
    (det / "items" / "a.jsonl").write_text(
        '{"id": "scam-0001", "category": "scam", "text": "old"}\n'
        '{"id": "scam-2001", "category": "scam", "text": "new"}\n'
    )
    (det / "splits.json").write_text('{"scam-0001": "test_v1", "scam-2001": "test"}')
    old = load_items(f"{det}:scam:test_v1")
    assert [it.id for it in old] == ["scam-0001"]
    refuse_test_split(old, "old")  # no error: test_v1 was reported once and retired
    with pytest.raises(FeatureguardError, match="test-split"):
        refuse_test_split(load_items(f"{det}:scam:test"), "new")


def test_a_chat_without_a_user_turn_gets_no_raw_twin() -> None:
    only_system = Item("s", messages=({"role": "system", "content": "be brief"},))
    rows, groups = with_raw_renderings([only_system])
    assert rows == [only_system] and groups == [0]


def test_a_raw_rendering_is_scanned_as_a_prompt() -> None:
    from sae.discovery.detection import item_pair

    tok = tiny_tokenizer()
    chat = Item("c", messages=({"role": "user", "content": "hello world"},))
    prompt, completion = item_pair(tok, raw_rendering(chat))
    assert prompt and completion == []
    prompt, completion = item_pair(tok, Item("t", text="hello world"))  # a text item: completion
    assert prompt == [] and completion
