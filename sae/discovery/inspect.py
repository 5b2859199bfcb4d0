"""What one feature does: top-activating contexts, an activation histogram, its density, and the
tokens its decoder direction promotes or suppresses (logit lens).

Logit lens choice: the direction ``d = W_dec[i]`` is multiplied elementwise by the final norm's
gain (``model.norm.weight``; ``1 + weight`` for Gemma's RMSNorm) and then by the unembedding,
``logits = (d ⊙ g) @ W_U.T``. The norm's per-token scale, its bias and (for LayerNorm) the mean
subtraction are ignored: they depend on the token, not on the direction. This is the usual
approximation; it is meaningful for residual-stream hooks and only roughly so for early layers.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae.base import SAE
from sae.discovery.activations import Stack, encode_items
from sae.discovery.data import Item

_FINAL_NORMS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
)


@dataclass(frozen=True)
class Context:
    """One text's tokens with the feature's value on each scored token."""

    item_id: str
    tokens: list[str]  # (S,)
    values: list[float]  # (S,)

    @property
    def peak(self) -> float:
        return max(self.values, default=0.0)


@dataclass(frozen=True)
class FeatureReport:
    index: int
    contexts: list[Context]  # top contexts, peak descending
    values: torch.Tensor  # (N_tokens,) every scored token's value (histogram, density)
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]

    @property
    def density(self) -> float:
        """Fraction of scored tokens where the feature is active (> 0)."""
        return float((self.values > 0).double().mean()) if self.values.numel() else 0.0


def top_contexts(
    stack: Stack, items: Sequence[Item], index: int, *, span: str = "all", top: int = 10
) -> tuple[list[Context], torch.Tensor]:
    """The ``top`` items by peak activation of feature ``index`` and all token values ``(N,)``."""
    scored = encode_items(stack, items, span=span, features=[index])
    ctx = [Context(s.item.id, s.tokens, s.values[:, 0].tolist()) for s in scored]
    every = torch.cat([s.values[:, 0] for s in scored]) if scored else torch.zeros(0)
    ctx.sort(key=lambda c: -c.peak)
    return [c for c in ctx[:top] if c.peak > 0], every


def final_norm_gain(model: Any) -> torch.Tensor | None:
    """The final norm's elementwise gain ``(d,)`` (Gemma: ``1 + weight``), or None."""
    for path in _FINAL_NORMS:
        try:
            norm = model.get_submodule(path)
        except AttributeError:
            continue
        w = getattr(norm, "weight", None)
        if isinstance(w, torch.Tensor):
            family = str(getattr(model.config, "model_type", ""))
            return (1.0 + w.float()) if family.startswith("gemma") else w.float()
    return None


def logit_lens(
    model: Any, tokenizer: Any, sae: SAE, index: int, k: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Tokens most promoted and most suppressed by feature ``index``'s decoder direction."""
    with torch.no_grad():
        W_U = model.get_output_embeddings().weight.float()  # (V, d)
        d = sae.decoder_directions()[index].float().to(W_U.device)  # (d,)
        gain = final_norm_gain(model)
        if gain is not None:
            d = d * gain.to(W_U.device)
        logits = W_U @ d  # (V,)
        hi, lo = logits.topk(k), (-logits).topk(k)
    fmt = lambda ids, vals: [  # noqa: E731
        (tokenizer.decode([int(i)]), float(v)) for i, v in zip(ids, vals, strict=True)
    ]
    return fmt(hi.indices, hi.values), fmt(lo.indices, -lo.values)


def inspect_feature(
    stack: Stack, items: Sequence[Item], index: int, *, span: str = "all", top: int = 10
) -> FeatureReport:
    """Everything ``features show`` prints for one feature."""
    if not 0 <= index < stack.sae.cfg.d_sae:
        raise IndexError(f"feature {index} is outside 0..{stack.sae.cfg.d_sae - 1}")
    ctx, every = top_contexts(stack, items, index, span=span, top=top)
    up, down = logit_lens(stack.model, stack.tokenizer, stack.sae, index)
    return FeatureReport(index, ctx, every, up, down)


def highlight(ctx: Context, *, rel: float = 0.0) -> str:
    """Text with active tokens marked ``[[token|value]]`` (those above ``rel × peak``)."""
    cut = rel * ctx.peak
    return "".join(
        f"[[{t}|{v:.2f}]]" if v > 0 and v >= cut else t
        for t, v in zip(ctx.tokens, ctx.values, strict=True)
    )


def histogram(values: torch.Tensor, bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram of the non-zero values, one line per bin."""
    nz = values[values > 0].double()
    if nz.numel() == 0:
        return ["(never active on the scored tokens)"]
    hi = float(nz.max())
    counts = torch.histc(nz, bins=bins, min=0.0, max=hi)
    top = float(counts.max()) or 1.0
    lines = []
    for b in range(bins):
        lo_edge, hi_edge = hi * b / bins, hi * (b + 1) / bins
        bar = "#" * round(width * float(counts[b]) / top)
        lines.append(f"{lo_edge:8.3f}–{hi_edge:<8.3f} {int(counts[b]):6d} {bar}")
    return lines


def html_report(rep: FeatureReport, title: str = "") -> str:
    """A self-contained HTML page: contexts with tokens shaded by activation (all text
    escaped), the logit lens and the density."""
    peak = max((c.peak for c in rep.contexts), default=0.0) or 1.0
    rows = []
    for c in rep.contexts:
        spans = "".join(
            f'<span title="{v:.3f}" style="background: rgba(255,120,0,{min(1.0, v / peak):.3f})">'
            f"{html.escape(t)}</span>"
            if v > 0
            else html.escape(t)
            for t, v in zip(c.tokens, c.values, strict=True)
        )
        rows.append(
            f"<tr><td>{c.peak:.3f}</td><td>{html.escape(c.item_id)}</td><td><pre>{spans}</pre>"
            "</td></tr>"
        )
    lens = lambda xs: ", ".join(f"{html.escape(t)!s} ({v:+.2f})" for t, v in xs)  # noqa: E731
    name = html.escape(title or f"feature {rep.index}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title>"
        "<style>body{font-family:sans-serif} pre{white-space:pre-wrap;margin:0}"
        "td{vertical-align:top;padding:4px;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>{name}</h1><p>density {rep.density:.4%} of {rep.values.numel()} scored tokens</p>"
        f"<p>promotes: {lens(rep.promoted)}</p><p>suppresses: {lens(rep.suppressed)}</p>"
        "<table><tr><th>peak</th><th>item</th><th>context</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )
