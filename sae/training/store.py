"""Activation store: collect a model's activations at a hook to disk, then read them shuffled.

Layout of a store directory::

    manifest.json            d_in, hook, model, dtype, shards [{file, rows}],
                             inputs {corpus: documents done}
    shard_00000.safetensors  tensor "acts" (rows, d_in) in fp16

Collection streams documents through the model, stops the forward pass right after the hooked
module, drops padding and position 0 of every row (the massive-activation outlier of the bundled
model; see REFERENCE.md), and writes a shard every ``shard_rows`` activations. The manifest is
rewritten atomically after each shard, recording how many documents of each input are done, so
an interrupted collection resumes where it stopped and never stores a document twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae.errors import FeatureguardError
from sae.hooks import capture

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    d_in: int
    hook: str
    model: str
    dtype: str = "float16"
    max_len: int = 256
    shards: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)  # corpus name -> documents done
    tokens_per_source: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    @classmethod
    def load(cls, store: Path) -> Manifest:
        path = store / MANIFEST
        if not path.exists():
            raise FeatureguardError(f"{store} is not an activation store (no {MANIFEST})")
        return cls(**json.loads(path.read_text()))

    def save(self, store: Path) -> None:
        tmp = store / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, store / MANIFEST)


def tokenize_document(tokenizer: Any, doc: dict[str, Any], max_len: int) -> list[list[int]]:
    """Token ids of one corpus document, chunked to rows of at most ``max_len`` tokens.

    Chat documents (``messages``) go through the chat template, as the monitor sees them.
    """
    if "messages" in doc:
        ids = tokenizer.apply_chat_template(doc["messages"], tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
    return [
        ids[i : i + max_len] for i in range(0, len(ids), max_len) if len(ids[i : i + max_len]) > 1
    ]


def _batches(rows: list[tuple[str, list[int]]], tokens_per_batch: int) -> Iterator[list]:
    """Group rows of similar length (sorted) into batches of about ``tokens_per_batch`` tokens."""
    rows = sorted(rows, key=lambda r: len(r[1]))
    batch: list[tuple[str, list[int]]] = []
    for row in rows:
        if batch and (len(batch) + 1) * len(row[1]) > tokens_per_batch:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


@torch.no_grad()
def activations_for_rows(
    model: Any, hook: str, rows: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run right-padded ``rows`` up to the hook. Returns ``(acts (N, d), row_index (N,))``.

    Padding and position 0 of every row are dropped.
    """
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    acts = capture(model, hook, ids, mask)  # (B, T, d), the forward stops after the hook
    keep = mask.bool()
    keep[:, 0] = False
    row_index = torch.arange(len(rows)).unsqueeze(1).expand_as(keep)[keep]  # (N,)
    return acts[keep], row_index


def collect(
    model: Any,
    tokenizer: Any,
    hook: str,
    model_name: str,
    docs: Iterable[dict[str, Any]],
    store: Path,
    *,
    corpus_name: str,
    max_tokens: int | None = None,
    max_len: int = 256,
    shard_rows: int = 65536,
    tokens_per_batch: int = 4096,
    docs_per_group: int = 256,
    progress: bool = True,
) -> Manifest:
    """Collect activations of ``docs`` at ``hook`` into ``store`` (resumable, see module doc)."""
    import time

    from tqdm import tqdm

    store.mkdir(parents=True, exist_ok=True)
    d_in = int(model.config.hidden_size)
    if (store / MANIFEST).exists():
        man = Manifest.load(store)
        if (man.d_in, man.hook, man.model) != (d_in, hook, model_name):
            raise FeatureguardError(
                f"store {store} holds {man.model} {man.hook} (d_in {man.d_in}); "
                f"refusing to add {model_name} {hook}"
            )
    else:
        man = Manifest(d_in=d_in, hook=hook, model=model_name, max_len=max_len)
    done = man.inputs.get(corpus_name, 0)
    pending: list[torch.Tensor] = []
    pending_rows, pending_docs = 0, 0
    per_source: dict[str, int] = {}
    bar = tqdm(total=max_tokens, initial=man.rows, unit="tok", disable=not progress, desc="collect")
    start = time.perf_counter()

    def flush() -> None:
        nonlocal pending, pending_rows, pending_docs, per_source, start
        if not pending:
            return
        name = f"shard_{len(man.shards):05d}.safetensors"
        save_file({"acts": torch.cat(pending).to(torch.float16).contiguous()}, str(store / name))
        man.shards.append({"file": name, "rows": pending_rows})
        man.inputs[corpus_name] = man.inputs.get(corpus_name, 0) + pending_docs
        for src, n in per_source.items():
            man.tokens_per_source[src] = man.tokens_per_source.get(src, 0) + n
        man.seconds += time.perf_counter() - start
        start = time.perf_counter()
        man.save(store)
        pending, pending_rows, pending_docs, per_source = [], 0, 0, {}

    group: list[dict[str, Any]] = []
    it = iter(docs)
    for _ in range(done):  # resume: skip documents already stored
        next(it, None)
    exhausted = False
    while not exhausted and (max_tokens is None or man.rows + pending_rows < max_tokens):
        group = [d for _, d in zip(range(docs_per_group), it, strict=False)]
        exhausted = len(group) < docs_per_group
        rows = [(d["source"], r) for d in group for r in tokenize_document(tokenizer, d, max_len)]
        for batch in _batches(rows, tokens_per_batch):
            acts, row_index = activations_for_rows(
                model, hook, [r for _, r in batch], tokenizer.pad_token_id
            )
            pending.append(acts.float())
            pending_rows += acts.shape[0]
            counts = torch.bincount(row_index, minlength=len(batch)).tolist()
            for (src, _), n in zip(batch, counts, strict=True):
                per_source[src] = per_source.get(src, 0) + n
            bar.update(acts.shape[0])
        pending_docs += len(group)
        if pending_rows >= shard_rows:
            flush()
    flush()
    bar.close()
    return man


class ActivationReader:
    """Shuffled batches from a store; every stored activation exactly once per epoch.

    Shards are visited in a random order, ``buffer_shards`` at a time; rows inside that buffer
    are permuted, so memory stays bounded by the buffer, not the store.
    """

    def __init__(
        self,
        store: Path,
        *,
        batch_size: int,
        seed: int = 0,
        buffer_shards: int = 8,
        limit_shards: int | None = None,
    ) -> None:
        self.store = Path(store)
        self.manifest = Manifest.load(self.store)
        self.shards = self.manifest.shards[:limit_shards]
        self.batch_size = batch_size
        self.buffer_shards = buffer_shards
        self.seed = seed

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    def _load(self, shard: dict[str, Any]) -> torch.Tensor:
        return load_file(str(self.store / shard["file"]))["acts"]  # (rows, d_in) fp16

    def epoch(self, index: int = 0) -> Iterator[torch.Tensor]:
        """Pass ``index`` over the store: float32 batches ``(batch_size, d_in)``, the last may be
        short. The order depends only on (seed, index), so a resumed run replays it exactly."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        order = torch.randperm(len(self.shards), generator=gen).tolist()
        for g in range(0, len(order), self.buffer_shards):
            buf = torch.cat([self._load(self.shards[i]) for i in order[g : g + self.buffer_shards]])
            perm = torch.randperm(buf.shape[0], generator=gen)
            for b in range(0, buf.shape[0], self.batch_size):
                yield buf[perm[b : b + self.batch_size]].float()

    def sample(self, n: int) -> torch.Tensor:
        """``n`` rows (fp32) from the first shards, for initialisation and statistics."""
        out, got = [], 0
        for shard in self.shards:
            acts = self._load(shard)
            out.append(acts[: n - got].float())
            got += out[-1].shape[0]
            if got >= n:
                break
        return torch.cat(out)
