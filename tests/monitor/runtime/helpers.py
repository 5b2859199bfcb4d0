"""Builders for the runtime tests: tiny models, SAEs with planted features, small policies."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch

from monitor.policy.compiled import CompiledPolicy
from monitor.policy.loader import load_policy_text
from sae.base import SAE
from sae.hooks import capture, decoder_layers
from sae.registry import create_sae
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer

D_SAE = 32
PROMPTS = ["The quick brown fox jumps", "Hello world, this is", "Never share a one-time"]


def hook_of(model: Any) -> str:
    """The residual stream after a middle decoder layer (never the last one)."""
    _, layers = decoder_layers(model)
    return f"blocks.{(len(layers) - 1) // 2}.hook_resid_post"


def setup(family: str = "llama", seed: int = 0) -> tuple[Any, Any, str]:
    return tiny_model(family, seed), tiny_tokenizer(), ""


def batch(tok: Any, prompts: list[str] = PROMPTS) -> dict[str, torch.Tensor]:
    tok.padding_side = "left"
    return dict(tok(prompts, return_tensors="pt", padding=True))


def hidden(model: Any, hook: str, ids: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
    """(B, T, d) at the hook, with generate's position ids for left padding."""
    mask = torch.ones_like(ids) if mask is None else mask
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    return capture(model, hook, ids, attention_mask=mask, position_ids=pos)


def planted_sae(
    model: Any, hook: str, targets: list[torch.Tensor], center: torch.Tensor, seed: int = 0
) -> SAE:
    """A standard SAE whose feature i (i < len(targets)) is positive only near ``targets[i]``
    (a ``(d,)`` hidden state); other features are random. Feature i peaks at 1.0."""
    d = center.shape[-1]
    sae = create_sae(d_in=d, d_sae=D_SAE, architecture="standard", hook_name=hook)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(D_SAE, d, generator=gen) * 0.1)
        sae.W_enc.copy_(torch.randn(d, D_SAE, generator=gen) * 0.01)
        sae.b_enc.fill_(-10.0)  # random features stay off
        sae.b_dec.copy_(center)
        for i, h in enumerate(targets):
            u = h - center
            k = 20.0
            sae.W_enc[:, i] = k * u / u.dot(u)  # (x - c)·u/|u|² is 1 at the target
            sae.b_enc[i] = -k * 0.95  # value k·(proj − 0.95): 1.0 at the target
    return sae.eval()


def policy_text(sae_dir: Path | str, rules: str, features: str = "", extra: str = "") -> str:
    feats = features or "  f0: {index: 0}\n  f1: {index: 1}\n  f2: {index: 2}\n"
    return (
        "version: 1\npolicy: {name: t, revision: r1}\n"
        f"saes:\n  main: {{path: {sae_dir}}}\n"
        f"features:\n{feats}"
        + textwrap.dedent(extra)
        + "rules:\n"
        + textwrap.indent(textwrap.dedent(rules), "  ")
    )


def make_policy(tmp: Path, sae: SAE, rules: str, **kw: Any) -> CompiledPolicy:
    from sae.loading import save_sae

    save_sae(sae, tmp / "sae")
    text = policy_text(tmp / "sae", rules, **kw)
    (tmp / "policy.yaml").write_text(text)
    return load_policy_text(text, str(tmp / "policy.yaml"), base_dir=tmp)


class World:
    """A tiny model, a left-padded batch, its unmonitored greedy output, and an SAE with
    feature 0 planted on a completion token of row 0, feature 1 on the last generated token of
    a row and feature 2 on a prompt token of row 2 (``cols``: (row, padded column) each, chosen
    so that no other token comes close)."""

    NEW = 8

    def __init__(self, family: str, tmp: Path) -> None:
        self.family, self.tmp = family, tmp
        self.model, self.tok = tiny_model(family), tiny_tokenizer()
        self.hook = hook_of(self.model)
        self.enc = batch(self.tok)
        self.L0 = self.enc["input_ids"].shape[1]
        self.ref = self.generate(self.model)
        B = self.ref.shape[0]
        self.mask = torch.cat(
            [self.enc["attention_mask"], torch.ones(B, self.NEW, dtype=torch.long)], 1
        )
        h = hidden(self.model, self.hook, self.ref, self.mask)  # (B, L, d)
        self.h = h
        valid = self.mask.bool().clone()
        valid[:, 0] = False  # each row's first token is scored with features at 0
        center = h[valid].mean(0)
        last = self.L0 + self.NEW - 1
        self.cols = [
            self._selective(h, valid, center, [(0, c) for c in range(self.L0 + 1, last)]),
            self._selective(h, valid, center, [(1, last), (2, last), (0, last)]),
            self._selective(h, valid, center, [(2, c) for c in range(1, self.L0)]),
        ]
        self.sae = planted_sae(self.model, self.hook, [h[b, c] for b, c in self.cols], center)
        self.pads = (self.enc["attention_mask"] == 0).sum(1).tolist()

    @staticmethod
    def _selective(
        h: torch.Tensor, valid: torch.Tensor, center: torch.Tensor, cands: list[tuple[int, int]]
    ) -> tuple[int, int]:
        """The candidate (row, column) whose hidden state no other token comes close to."""
        best, where = float("inf"), cands[0]
        for b, c in cands:
            if not valid[b, c]:
                continue
            u = h[b, c] - center
            proj = ((h - center) @ u) / u.dot(u)  # (B, L), 1.0 at the target
            proj[b, c] = -1.0
            worst = float(proj[valid].max())
            if worst < best:
                best, where = worst, (b, c)
        assert best < 0.9, f"no selective token among {cands} (closest {best:.3f})"
        return where

    def token(self, i: int) -> int:
        """Token index (unpadded) of planted feature i."""
        b, c = self.cols[i]
        return c - self.pads[b]

    def generate(self, model: Any, **kw: Any) -> Any:
        kw.setdefault("max_new_tokens", self.NEW)
        kw.setdefault("do_sample", False)
        kw.setdefault("no_repeat_ngram_size", 1)  # tiny random models love to repeat a token
        with torch.no_grad():
            return model.generate(**self.enc, **kw)

    def policy(self, rules: str, name: str = "p", **kw: Any) -> CompiledPolicy:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        return make_policy(d, self.sae, rules, **kw)


LOG_RULES = """
- {id: r0, severity: high, condition: {feature: f0, above: 0.0}, actions: [{type: log}]}
- {id: r1, severity: medium, condition: {feature: f1, above: 0.0}, actions: [{type: log}]}
- {id: r2, severity: low, condition: {feature: f2, above: 0.0}, actions: [{type: log}]}
"""


def events_of(dispatcher: Any) -> list[tuple[int, str, int]]:
    return sorted((e.row, e.rule, e.token_index) for e in dispatcher.events)
