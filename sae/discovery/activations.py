"""The one place the discovery tools turn text into per-token SAE feature values.

:func:`encode_items` tokenizes each item as the runtime does (chat template for ``messages``,
plain tokens for ``text``), runs the model up to the SAE's hook (:func:`sae.hooks.capture`) and
encodes the scored tokens. ``features find/show`` and ``train-probe`` call it (they need the
full dictionary or hidden states, which the runtime does not compute), and so does the raw-
activation baseline of ``eval detection``; the rules of ``eval detection`` are judged by the
runtime itself (:func:`sae.discovery.detection.scan_items`).

Scored span (``span``), always without position 0 (a massive-activation outlier on the bundled
model, see REFERENCE.md). This matches the runtime, which scores each row's first token with
every feature at 0 (``attach(ignore_first_token=True)``, the default), as follows: for
non-negative features (every supported architecture) a max over the span is the same with or
without that 0, so ``max`` pooling and the catalog scales agree with the values rules see.
``mean`` pooling (feature ranking in ``features find``, ``pool: mean`` probes of
``train-probe``) divides by the tokens scored here. The runtime's running mean also counts the
first token (features 0), so on a span that starts there (``all``, or ``text`` items) a mean
here is ``(S + 1) / S`` times the runtime's; and it counts every token before the span too
(system prompt, template, earlier turns), a larger difference for ``user``/``completion``. Train
``pool: mean`` probes with span ``all`` to average (almost exactly) what the runtime averages.

- ``all``: every token of the sequence (system prompt and template tokens included).
- ``user``: the content tokens of the last user turn (``messages``), or the whole ``text``.
- ``completion``: the content tokens of a final assistant turn, or the whole ``text``.

Each result says which tokens it scored (``positions`` and ``tokens``), and the ``phase`` the
runtime would give them: ``prompt`` for chat turns up to the last user turn, ``completion`` for
``text`` items and final assistant turns (the scan JSONL contract).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.base import SAE
from sae.discovery.data import DEFAULT_SAE, SPANS, Item
from sae.encode import SubsetEncoder, outlier_cutoff, zero_outliers
from sae.errors import FeatureguardError
from sae.hooks import capture, resolve_hook

__all__ = ["DEFAULT_SAE", "SPANS", "Scored", "Stack", "encode_items", "load_stack", "pool"]


@dataclass
class Scored:
    """Feature values of one item's scored tokens."""

    item: Item
    positions: torch.Tensor  # (S,) long: 0-based positions in the full sequence (never 0)
    tokens: list[str]  # (S,) the scored tokens, decoded
    values: torch.Tensor  # (S, F) float32 on CPU: F = K chosen features, or d_sae
    hidden: torch.Tensor | None  # (S, d_in) float32 hooked activations, if asked for
    phase: str  # prompt | completion
    length: int  # tokens in the full sequence


@dataclass
class Stack:
    """A language model, its tokenizer and an SAE on one of its hooks."""

    model: Any
    tokenizer: Any
    sae: SAE
    sae_path: Path | None
    sha256: str
    name: str  # the SAE's name as given (bundled name or path)


def load_stack(
    sae_name: str = DEFAULT_SAE, model_name: str | None = None, *, with_model: bool = True
) -> Stack:
    """Load the SAE (bundled name or path, float32) and the model it reads (``model_name``,
    else the SAE's ``model_name``); the SAE goes to the model's device. ``with_model=False``
    loads the SAE alone (model and tokenizer None: for decoder-only tools)."""
    from sae.lm import load_model
    from sae.loading import load_sae, resolve_sae_path, sae_sha256

    path = resolve_sae_path(sae_name)
    sae = load_sae(path, dtype=torch.float32)
    sha = sae_sha256(path)
    if not with_model:
        return Stack(None, None, sae, path, sha, sae_name)
    lm = load_model(model_name or sae.cfg.model_name or "smollm2-135m")
    device = next(lm.model.parameters()).device
    return Stack(lm.model, lm.tokenizer, sae.to(device), path, sha, sae_name)


def _content_span(tokenizer: Any, msgs: list[dict[str, str]], i: int, full: str) -> tuple[int, int]:
    """Character span of message ``i``'s content inside the rendered chat ``full``."""
    prefix = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
    content = msgs[i]["content"]
    start = prefix.rfind(content)
    if start < 0 or not full.startswith(prefix[: start + len(content)]):
        raise FeatureguardError("cannot locate a message's content in the chat template output")
    return start, start + len(content)


def tokenize_item(tokenizer: Any, item: Item, span: str) -> tuple[list[int], list[int], str]:
    """``(ids, scored positions, phase)`` for one item; position 0 is never scored."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {SPANS}, not {span!r}")
    if item.text is not None:
        ids = tokenizer(item.text, add_special_tokens=False)["input_ids"]
        return ids, list(range(1, len(ids))), "completion"
    msgs = [dict(m) for m in item.messages or ()]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    last_is_assistant = bool(msgs) and msgs[-1]["role"] == "assistant"
    phase = "completion" if last_is_assistant and span == "completion" else "prompt"
    if span == "all":
        return ids, list(range(1, len(ids))), phase
    role = "user" if span == "user" else "assistant"
    turns = [i for i, m in enumerate(msgs) if m["role"] == role]
    if not turns or (span == "completion" and not last_is_assistant):
        raise FeatureguardError(f"item {item.id} has no {role} turn to score (span {span!r})")
    lo, hi = _content_span(tokenizer, msgs, turns[-1], full)
    pos = [t for t, (s, e) in enumerate(offsets) if t > 0 and e > lo and s < hi]
    return ids, pos, phase


@torch.no_grad()
def encode_items(
    stack: Stack,
    items: Sequence[Item],
    *,
    span: str = "user",
    features: Sequence[int] | None = None,
    with_hidden: bool = False,
    batch_size: int = 8,
    max_tokens: int = 512,
) -> list[Scored]:
    """Per-token feature values of each item's scored span, in input order.

    ``features`` selects K columns (subset encode, exact for standard/jumprelu/gated); None
    gives all ``d_sae``. Sequences are cut to ``max_tokens``. Items whose span is empty after
    that are returned with ``S = 0`` (their pooled values are 0).
    """
    tok, model = stack.tokenizer, stack.model
    hp = resolve_hook(model, stack.sae.cfg.hook_name or "")
    device = next(model.parameters()).device
    encode = (
        SubsetEncoder(stack.sae, list(features), dtype=torch.float32, device=device)
        if features is not None
        else stack.sae.encode
    )
    cutoff = outlier_cutoff(stack.sae)  # massive-activation tokens score 0, as in the runtime
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prepared = []
    for it in items:
        ids, pos, phase = tokenize_item(tok, it, span)
        ids = ids[:max_tokens]
        prepared.append((ids, [p for p in pos if p < len(ids)], phase))
    out: list[Scored | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(prepared[i][0]))
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        T = max(len(prepared[i][0]) for i in rows)
        ids_t = torch.full((len(rows), T), pad, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
        for r, i in enumerate(rows):
            ids_t[r, : len(prepared[i][0])] = torch.tensor(prepared[i][0])
            mask[r, : len(prepared[i][0])] = 1
        h = capture(model, hp, ids_t.to(device), mask.to(device))  # (B, T, d_in)
        for r, i in enumerate(rows):
            ids, pos, phase = prepared[i]
            p = torch.tensor(pos, dtype=torch.long)  # (S,)
            x = h[r, p.to(device)].float()  # (S, d_in)
            out[i] = Scored(
                item=items[i],
                positions=p,
                tokens=[tok.decode([ids[q]]) for q in pos],
                values=zero_outliers(x, encode(x), cutoff).float().cpu(),  # (S, F)
                hidden=x.cpu() if with_hidden else None,
                phase=phase,
                length=len(ids),
            )
    return [s for s in out if s is not None]


def encode_chunks(
    stack: Stack, items: Sequence[Item], *, chunk: int = 64, **kwargs: Any
) -> Iterator[list[Scored]]:
    """:func:`encode_items` over ``chunk`` items at a time, in input order: a caller that keeps
    only what it derives from each chunk holds one chunk's per-token values, not every item's."""
    for lo in range(0, len(items), chunk):
        yield encode_items(stack, items[lo : lo + chunk], **kwargs)


def pool(scored: Sequence[Scored], how: str = "max") -> torch.Tensor:
    """Per-item pooled values ``(N, F)``: max or mean over each item's scored tokens (0 if
    none)."""
    rows = []
    for s in scored:
        v = s.values  # (S, F)
        if v.shape[0] == 0:
            rows.append(torch.zeros(v.shape[1]))
        else:
            rows.append(v.max(0).values if how == "max" else v.mean(0))
    return torch.stack(rows)
