"""Text sets for the discovery tools: JSONL files or the labelled detection set, by spec.

A *source spec* names a list of items:

- ``path/to/file.jsonl``: every line with ``text`` or ``messages`` (other keys kept as is).
- ``DIR:CATEGORIES[:SPLITS]`` for a detection-set folder (``items/*.jsonl`` + ``splits.json``),
  e.g. ``data/detection:scam:train``, ``data/detection:benign:train,dev``. CATEGORIES is a
  comma list of ``scam``, ``deception``, ``dangerous``, ``benign`` (all harmless items),
  ``plain_benign`` (harmless, not hard negatives), ``hard_negative``, ``harmful`` (the three
  harm categories) or ``*`` (everything). SPLITS defaults to every split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sae.errors import FeatureguardError

HARMFUL = ("scam", "deception", "dangerous")
SPANS = ("all", "user", "completion")  # see sae.discovery.activations
DEFAULT_SAE = "smollm2-135m-res-l15"
# "test_v1", "test_v3" … "test_v11": earlier test splits, each reported once and then retired
# (usable for training; data/detection/README.md)
RETIRED_TEST_SPLITS = (
    "test_v1",
    "test_v3",
    "test_v4",
    "test_v5",
    "test_v7",
    "test_v8",
    "test_v10",
    "test_v11",
)
SPLITS = ("train", "dev", *RETIRED_TEST_SPLITS, "test")
SOURCE_FILE = "source_file"  # Item.extra key: the JSONL file an item was read from


@dataclass(frozen=True)
class Item:
    """One text to score: exactly one of ``text`` / ``messages``, plus its labels."""

    id: str
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    category: str | None = None
    hard_negative: bool = False
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def body(self) -> str:
        """The content as canonical JSON (what :func:`items_sha256` hashes)."""
        if self.text is not None:
            return json.dumps({"text": self.text}, sort_keys=True, ensure_ascii=False)
        return json.dumps({"messages": list(self.messages or ())}, sort_keys=True)


def item_from_row(row: dict[str, Any], default_id: str) -> Item:
    """A JSONL row → :class:`Item`; raises :class:`FeatureguardError` on a bad row."""
    has_text, has_msgs = isinstance(row.get("text"), str), isinstance(row.get("messages"), list)
    if has_text == has_msgs:
        raise FeatureguardError(f"item {row.get('id', default_id)}: needs 'text' or 'messages'")
    msgs = tuple(dict(m) for m in row["messages"]) if has_msgs else None
    if msgs is not None and not all(
        isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
    ):
        raise FeatureguardError(f"item {row.get('id', default_id)}: malformed messages")
    known = {"id", "text", "messages", "category", "hard_negative", "split"}
    return Item(
        id=str(row.get("id", default_id)),
        text=row["text"] if has_text else None,
        messages=msgs,
        category=row.get("category"),
        hard_negative=bool(row.get("hard_negative", False)),
        split=row.get("split"),
        extra={k: v for k, v in row.items() if k not in known},
    )


def read_jsonl(path: Path) -> list[Item]:
    """Every item of a JSONL file (blank lines skipped; a bad line is an error with its number),
    each with the file it came from in ``extra[SOURCE_FILE]`` (its authoring batch, for
    cross-validation folds that hold out whole batches)."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FeatureguardError(f"{path}:{n}: not JSON ({exc.msg})") from None
            item = item_from_row(row, f"{path.name}:{n}")
            items.append(replace(item, extra={**item.extra, SOURCE_FILE: str(path)}))
    return items


def _category_ok(item: Item, cats: set[str]) -> bool:
    if "*" in cats or item.category in cats:
        return True
    harmless = item.category == "benign"
    return (
        ("harmful" in cats and item.category in HARMFUL)
        or ("hard_negative" in cats and harmless and item.hard_negative)
        or ("plain_benign" in cats and harmless and not item.hard_negative)
    )


def load_detection(root: Path, categories: Iterable[str], splits: Iterable[str]) -> list[Item]:
    """Items of a detection-set folder filtered by category words and splits (see module doc)."""
    split_file = root / "splits.json"
    if not split_file.is_file() or not (root / "items").is_dir():
        raise FeatureguardError(f"{root} is not a detection set (items/*.jsonl + splits.json)")
    assignment = json.loads(split_file.read_text(encoding="utf-8"))
    cats, wanted = set(categories), set(splits)
    out = []
    for path in sorted((root / "items").glob("*.jsonl")):
        for it in read_jsonl(path):
            split = assignment.get(it.id)
            if _category_ok(it, cats) and split in wanted:
                out.append(Item(**{**it.__dict__, "split": split}))
    return out


def load_items(spec: str) -> list[Item]:
    """Items named by a source spec (module docstring); never empty."""
    path = Path(spec)
    if path.is_file():
        items = read_jsonl(path)
    else:
        parts = spec.split(":")
        root = Path(parts[0])
        if len(parts) < 2 or not root.is_dir():
            raise FeatureguardError(
                f"no JSONL file or detection set at {spec!r}",
                hint="use FILE.jsonl or DIR:CATEGORY[,..][:SPLIT[,..]], "
                "e.g. data/detection:scam:train",
            )
        splits = parts[2].split(",") if len(parts) > 2 and parts[2] else list(SPLITS)
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise FeatureguardError(f"unknown split(s) {bad} in {spec!r}; use {SPLITS}")
        items = load_detection(root, parts[1].split(","), splits)
    if not items:
        raise FeatureguardError(f"{spec!r} selects no items")
    return items


def raw_rendering(item: Item) -> Item:
    """A chat item as a raw prompt: its last user turn as plain ``text`` (no chat template, no
    system prompt, no earlier turns), labels and id kept; a ``text`` item unchanged. Callers
    that send bare prompt strings to the model produce this rendering."""
    if item.messages is None:
        return item
    users = [m["content"] for m in item.messages if m.get("role") == "user"]
    if not users:
        return item
    return replace(item, text=users[-1], messages=None, extra={**item.extra, "rendering": "raw"})


def with_raw_renderings(items: Sequence[Item]) -> tuple[list[Item], list[int]]:
    """``items`` followed by the raw rendering of each chat item with a user turn, and each
    row's group: the index of the item it renders (for cross-validation folds that keep twins
    together)."""
    twins = [(i, r) for i, it in enumerate(items) if (r := raw_rendering(it)) is not it]
    rows = [*items, *(t for _, t in twins)]
    return rows, [*range(len(items)), *(i for i, _ in twins)]


def refuse_test_split(items: Sequence[Item], spec: str, allow: bool = False) -> None:
    """Tuning tools (find, train-probe) never see the test split unless told to."""
    if not allow and any(it.split == "test" for it in items):
        raise FeatureguardError(
            f"{spec!r} includes test-split items; choose features and thresholds on train/dev",
            hint="report test once with `featureguard eval detection`; --allow-test overrides",
        )


def items_sha256(items: Sequence[Item]) -> str:
    """Order-independent sha256 of a set of items' contents (the data hash catalogs record)."""
    digest = hashlib.sha256()
    for body in sorted(hashlib.sha256(it.body().encode()).hexdigest() for it in items):
        digest.update(body.encode())
    return digest.hexdigest()
