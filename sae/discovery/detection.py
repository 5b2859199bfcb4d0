"""``eval detection``: how well a policy's rules (and a raw-activation baseline) detect each
harm category of the labelled detection set, with Wilson 95% intervals.

Rules are judged by the runtime itself (CONTRACTS "One code path for feature values"): each item
goes through ``monitor.attach(model, policy)`` and
:func:`monitor.runtime.textscan.scan_batch`, split as ``scan`` splits it (``text`` items are a
completion with an empty prompt; for ``messages`` every turn before the last assistant turn,
chat-templated, is the prompt and that turn is the completion). So every token the deployed
monitor would score is scored (system prompt and template tokens included), each row's first
token counts with all features at 0 (``ignore_first_token``), and ``scope``, windows, ``for``,
cooldowns and exceptions act exactly as at runtime. A rule *detects* an item when the runtime
reports a match for it (one entry of ``fired``).

For AUC and recall-at-FPR each rule also gets a continuous score from its condition's *margin*
per token, computed from the runtime's per-token feature values and probe scores (literal
``value − threshold``, probe ``logit − threshold``; ``any`` → max, ``all`` → min, ``not`` →
negation, ``count ≥ N`` → N-th largest), so margin > 0 exactly where the condition holds; a
window takes the ``at_least``-th largest margin of its last ``of_last`` tokens and ``for: F`` the
lowest of the last F, over the rule's tokens in scope (prompt, then completion); the score is the
maximum of that over the row (exceptions, cooldown and hold are not in it). Per harm category
with more than one enforce rule labelled ``category: <name>``, a ``(<name> rules)`` detector is
their union (fired when any fired; score the highest).

Baseline (the research caution in REFERENCE.md): per category, an L2 logistic regression on the
hooked activations mean-pooled over the scored ``span`` (:mod:`sae.discovery.activations`; the
span applies to the baseline only), trained on the train split plus the retired test splits
(``RETIRED_TEST_SPLITS``) other than the evaluated one (category vs all benign, penalty by
5-fold CV) and thresholded at ``baseline_fpr`` on the dev split's benign items (on out-of-fold
train scores when dev itself is evaluated).

``rendering="raw"`` sends each chat item of the evaluated split as its bare last user turn
(:func:`sae.discovery.data.raw_rendering`), as callers that pass plain prompt strings do: the
same labels, no chat template, no system prompt.

Recall at FPR 1%/5% reads the threshold off the evaluated split's own benign scores: it
describes the score's ROC, it is not a deployable threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from monitor.policy import schema as s
from monitor.policy.compiled import CompiledPolicy
from sae.discovery.activations import Scored, Stack, encode_items
from sae.discovery.data import (
    HARMFUL,
    RETIRED_TEST_SPLITS,
    Item,
    load_detection,
    raw_rendering,
)
from sae.discovery.metrics import auc, recall_at_fpr, wilson
from sae.discovery.probe import TokenBatch, fit_cv, row_scores, sustained_peak

if TYPE_CHECKING:
    from monitor.runtime.textscan import ScannedRow


@dataclass
class Detector:
    name: str
    kind: str  # feature | probe | compound (rules), any-rule, baseline
    fired: torch.Tensor  # (N,) bool over the evaluated items
    score: torch.Tensor | None  # (N,) float, None when there is no continuous score
    category: str | None = None  # baselines are trained for one category


def _margin(cond: Any, cp: CompiledPolicy, x: torch.Tensor, ps: torch.Tensor) -> torch.Tensor:
    """Condition margin per token ``(B, T)`` from acts ``x (B, T, K)`` and probe scores
    ``ps (B, T, P)`` (see module doc)."""
    if isinstance(cond, s.FeatureCond):
        col = cp.feature_columns[cond.feature]
        scale = cp.feature_scale[col]
        if cond.above is not None:
            thr = cond.above
        else:
            assert cond.above_scale is not None and scale is not None
            thr = cond.above_scale * scale
        return x[..., col] - thr
    if isinstance(cond, s.ProbeCond):
        probe = next(p for p in cp.probes if p.name == cond.probe)
        thr = probe.threshold if cond.above is None else cond.above
        if probe.link == "logistic":
            thr = math.log(thr / (1.0 - thr))
        return ps[..., probe.index] - thr
    if isinstance(cond, s.AnyCond | s.AllCond):
        kids = [
            _margin(c, cp, x, ps) for c in (cond.any if isinstance(cond, s.AnyCond) else cond.all)
        ]
        st = torch.stack(kids, -1)
        return st.amax(-1) if isinstance(cond, s.AnyCond) else st.amin(-1)
    if isinstance(cond, s.NotCond):
        return -_margin(cond.not_, cp, x, ps)
    if isinstance(cond, s.CountCond):
        c = cond.count
        names = list(cp.spec.lists[c.list_]) if c.list_ else list(c.features or [])
        lits = [s.FeatureCond(feature=n, above=c.above, above_scale=c.above_scale) for n in names]
        st = torch.stack([_margin(lit, cp, x, ps) for lit in lits], -1)
        return st.topk(c.at_least, dim=-1).values[..., -1]
    if isinstance(cond, s.MacroCond):
        return _margin(cp.spec.macros[cond.macro], cp, x, ps)
    raise TypeError(f"unknown condition {cond!r}")  # pragma: no cover


def _kind(cond: Any) -> str:
    if isinstance(cond, s.FeatureCond):
        return "feature"
    return "probe" if isinstance(cond, s.ProbeCond) else "compound"


def item_pair(tokenizer: Any, item: Item) -> tuple[list[int], list[int]]:
    """``(prompt ids, completion ids)`` of an item, split as ``scan`` splits a JSONL line."""
    from monitor.runtime.texts import messages_pair, text_pair

    if item.text is not None and item.extra.get("rendering") == "raw":
        return text_pair(tokenizer, item.text, "")  # a bare prompt: prompt phase
    if item.text is not None:
        return text_pair(tokenizer, "", item.text)
    return messages_pair(tokenizer, [dict(m) for m in item.messages or ()])


def scan_items(
    cp: CompiledPolicy,
    stack: Stack,
    items: Sequence[Item],
    *,
    batch_size: int = 8,
    max_tokens: int = 512,
) -> list[ScannedRow]:
    """Each item through the runtime (``monitor.attach`` + ``scan_batch``), in input order.

    The stack's SAE stands in for the policy's first SAE (others load as the policy says).
    Items longer than ``max_tokens`` keep their first ``max_tokens`` tokens (prompt first).
    Health sampling is off; events go nowhere (the rows' reports carry the firings).
    """
    from monitor.runtime.guarded import GuardedModel
    from monitor.runtime.textscan import scan_batch

    pairs = []
    for it in items:
        p, c = item_pair(stack.tokenizer, it)
        p = p[:max_tokens]
        pairs.append((p, c[: max_tokens - len(p)]))
    out: list[ScannedRow | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    saes = {cp.saes[0].name: stack.sae}
    with GuardedModel(
        stack.model, cp, saes=saes, tokenizer=stack.tokenizer, health_every=0
    ) as guarded:
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            got = scan_batch(guarded, [pairs[i][0] for i in rows], [pairs[i][1] for i in rows])
            for i, row in zip(rows, got, strict=True):
                out[i] = row
    return [r for r in out if r is not None]


def _windowed(m: torch.Tensor, mask: torch.Tensor, rule: s.Rule) -> torch.Tensor:
    """``(N,)``: the rule's score from its per-token margins ``m (N, T)`` over its own tokens
    (right-padded ``mask``): a window takes the ``at_least``-th largest margin of the last
    ``of_last`` tokens, ``for: F`` the lowest of the last F (the evaluator's temporal logic
    before exceptions, cooldown and hold); then the maximum over the row."""
    m = m.masked_fill(~mask, -math.inf)
    if rule.window is not None and rule.window.of_last > 1:
        M, n = rule.window.of_last, rule.window.at_least
        padded = torch.nn.functional.pad(m, (M - 1, 0), value=-math.inf)  # (N, T + M - 1)
        win = padded.unfold(1, M, 1)  # (N, T, M): the last M tokens at each token
        m = win.topk(min(n, M), dim=-1).values[..., -1].masked_fill(~mask, -math.inf)
    return sustained_peak(m, mask, rule.for_)[0]


def rule_detectors(cp: CompiledPolicy, rows: Sequence[ScannedRow]) -> list[Detector]:
    """Every rule (plus "any rule", and per harm category the union of its enforce rules) as
    a detector over items scanned by the runtime (:func:`scan_items`): fired = the runtime
    reported a match; score = the condition's margin (module doc) through the rule's window
    and ``for``, maximised over the rule's tokens (prompt, then completion, as scoped)."""
    N, R = len(rows), cp.R
    index = {rule.id: r for r, rule in enumerate(cp.rules)}
    fired = torch.zeros(N, R, dtype=torch.bool)
    for i, row in enumerate(rows):
        for f in row.report.fired:
            fired[i, index[f.rule]] = True
    t = cp.tensors
    phases = {}
    for phase in ("prompt", "completion"):
        acts = [r.prompt_acts if phase == "prompt" else r.completion_acts for r in rows]
        probes = [r.prompt_probes if phase == "prompt" else r.completion_probes for r in rows]
        lengths = torch.tensor([a.shape[0] for a in acts])  # (N,)
        T = max(int(lengths.max()) if N else 0, 1)
        x = torch.zeros(N, T, cp.K)  # (N, T, K)
        ps = torch.zeros(N, T, cp.P)  # (N, T, P)
        for i, a in enumerate(acts):
            x[i, : a.shape[0]] = a
            p = probes[i]
            if p is not None and p.shape[0]:
                ps[i, : p.shape[0]] = p
        phases[phase] = (x, ps, lengths)
    score = torch.full((N, R), -math.inf)
    for r, rule in enumerate(cp.rules):
        parts = []
        for phase, on in (("prompt", t.in_prompt[r]), ("completion", t.in_completion[r])):
            if bool(on):
                x, ps, lengths = phases[phase]
                parts.append((_margin(rule.spec.condition, cp, x, ps), lengths))  # (N, T)
        seqs = [torch.cat([m[i, : int(n[i])] for m, n in parts]) for i in range(N)]
        keep = [i for i, q in enumerate(seqs) if q.numel()]
        if keep:
            b = TokenBatch.from_rows([seqs[i].unsqueeze(-1) for i in keep])
            score[keep, r] = _windowed(b.x[..., 0], b.mask, rule.spec)
    dets = [
        Detector(rule.id, _kind(rule.spec.condition), fired[:, r], score[:, r])
        for r, rule in enumerate(cp.rules)
    ]
    dets.append(Detector("(any rule)", "any-rule", fired.any(dim=1), None))
    for c in HARMFUL:
        cols = [
            r
            for r, rule in enumerate(cp.rules)
            if rule.mode == "enforce" and rule.spec.labels.get("category") == c
        ]
        if len(cols) > 1:  # one rule is already in the table
            dets.append(
                Detector(
                    f"({c} rules)",
                    "category",
                    fired[:, cols].any(dim=1),
                    score[:, cols].amax(dim=1),
                    c,
                )
            )
    return dets


def _mean_hidden(scored: Sequence[Scored]) -> TokenBatch:
    rows = [sc.hidden.mean(0, keepdim=True) for sc in scored if sc.hidden is not None]  # (1, d)
    return TokenBatch.from_rows(rows)


def baseline_detectors(
    train: Sequence[Scored],
    calib: Sequence[Scored] | None,
    evaluated: Sequence[Scored],
    *,
    target_fpr: float = 0.05,
) -> list[Detector]:
    """Per harm category, a mean-pooled raw-activation logistic probe (module doc)."""
    xb, xe = _mean_hidden(train), _mean_hidden(evaluated)
    cats = [sc.item.category for sc in train]
    out = []
    for cat in HARMFUL:
        keep = [i for i, c in enumerate(cats) if c in (cat, "benign")]
        if not any(cats[i] == cat for i in keep):
            continue
        y = torch.tensor([int(cats[i] == cat) for i in keep])
        cal = None
        if calib is not None:
            cal = _mean_hidden([sc for sc in calib if sc.item.category == "benign"])
        f = fit_cv(xb.take(torch.tensor(keep)), y, pool="mean", target_fpr=target_fpr, calib=cal)
        sc = row_scores(xe, f.w, f.b, "mean")
        out.append(Detector(f"baseline-{cat}", "baseline", sc > f.threshold, sc, cat))
    return out


def _rate(hits: torch.Tensor) -> dict[str, Any]:
    k, n = int(hits.sum()), int(hits.numel())
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def summarize(dets: Sequence[Detector], items: Sequence[Item]) -> dict[str, Any]:
    """Per category × detector: recall, FPR on plain benign and on hard negatives (Wilson
    95%), AUC of the score (category vs all benign), recall at FPR 1% and 5%."""
    cat = [it.category for it in items]
    benign = torch.tensor([c == "benign" for c in cat])
    hard = torch.tensor([it.hard_negative for it in items]) & benign
    plain = benign & ~hard
    report: dict[str, Any] = {}
    for c in HARMFUL:
        pos = torch.tensor([x == c for x in cat])
        if not bool(pos.any()):
            continue
        rows = []
        for d in dets:
            if d.category not in (None, c):
                continue
            row: dict[str, Any] = {
                "detector": d.name,
                "kind": d.kind,
                "recall": _rate(d.fired[pos]),
                "fpr_benign": _rate(d.fired[plain]),
                "fpr_hard_negative": _rate(d.fired[hard]),
            }
            if d.score is not None and bool(benign.any()):
                row["auc"] = float(auc(d.score[pos], d.score[benign]))
                row["recall_at_fpr_1pct"] = recall_at_fpr(d.score[pos], d.score[benign], 0.01)
                row["recall_at_fpr_5pct"] = recall_at_fpr(d.score[pos], d.score[benign], 0.05)
            rows.append(row)
        report[c] = {
            "positives": int(pos.sum()),
            "benign": int(plain.sum()),
            "hard_negatives": int(hard.sum()),
            "detectors": rows,
        }
    return report


def baseline_fit_splits(split: str) -> list[str]:
    """The splits the raw-activation baseline is fitted on when ``split`` is evaluated: train
    plus the retired test splits (``RETIRED_TEST_SPLITS``) other than the evaluated one, as
    the default policy's probes were, so the comparison stays fair."""
    if split == "train":
        return ["train"]
    return ["train", *(s for s in RETIRED_TEST_SPLITS if s != split)]


def evaluate_detection(
    cp: CompiledPolicy,
    stack: Stack,
    root: Path,
    split: str = "test",
    *,
    span: str = "user",
    baseline: bool = True,
    baseline_fpr: float = 0.05,
    rendering: str = "as-is",
) -> dict[str, Any]:
    """The whole evaluation (module doc) → a JSON-able report. ``span`` selects the tokens
    the baseline pools; rules always see what the runtime sees."""
    items = load_detection(root, ["*"], [split])
    if rendering == "raw":
        items = [raw_rendering(it) for it in items]
    elif rendering != "as-is":
        raise ValueError(f"rendering must be 'as-is' or 'raw', not {rendering!r}")
    dets: list[Detector] = []
    runtime_tokens = 0
    if any(sae.indices for sae in cp.saes):
        rows = scan_items(cp, stack, items)
        dets = rule_detectors(cp, rows)
        runtime_tokens = sum(r.report.tokens_seen for r in rows)
    baseline_tokens = None
    if baseline:
        idx = [0]  # the baseline reads hidden states only

        def enc(sp: list[str] | None) -> list[Scored]:
            # the evaluated items (rendered as asked); fitting and calibration sets as they are
            items_sp = items if sp is None else load_detection(root, ["*"], sp)
            return encode_items(stack, items_sp, span=span, features=idx, with_hidden=True)

        scored = enc(None)
        baseline_tokens = int(sum(sc.values.shape[0] for sc in scored))
        calib = enc(["dev"]) if split != "dev" else None
        dets += baseline_detectors(
            enc(baseline_fit_splits(split)), calib, scored, target_fpr=baseline_fpr
        )
    return {
        "policy": cp.name,
        "policy_sha256": cp.sha256,
        "sae_sha256": stack.sha256,
        "split": split,
        "rendering": rendering,
        "span": span,  # the baseline's scored span
        "items": len(items),
        "scored_tokens": runtime_tokens,  # tokens the runtime scored for the rules
        "baseline_tokens": baseline_tokens,
        "categories": summarize(dets, items),
    }
