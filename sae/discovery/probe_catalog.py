"""``features train-probe`` end to end: choose features, encode, fit with CV, calibrate, and
write the probe into a catalog as a :class:`~monitor.policy.catalog.ProbeSpec`.

With span ``all`` (the runtime's view) each row starts with the token the runtime scores with
every feature at 0 (position 0, ``ignore_first_token``), so the probe is trained on exactly the
tokens, running means and ``for`` windows the policy evaluator will see.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monitor.policy.catalog import Catalog, ProbeSpec, probe_file_bytes
from monitor.policy.pooling import MIN_HALF_LIFE
from sae.discovery import catalog_io as cio
from sae.discovery.activations import Stack, encode_chunks
from sae.discovery.contrast import pooled_features, rank_features
from sae.discovery.data import SOURCE_FILE, Item, items_sha256, with_raw_renderings
from sae.discovery.probe import (
    DEFAULT_LAMBDAS,
    ProbeFit,
    SparseRows,
    TokenBatch,
    batch_folds,
    fit_cv,
    greedy_select,
    logistic_threshold,
)
from sae.errors import FeatureguardError

SELECTIONS = ("auc", "greedy")
CV_BY = ("item", "source")
INLINE_MAX = 256  # a probe over more features stores them in a weights file


def resolve_features(spec: str, cat: Catalog, d_sae: int | None = None) -> list[int]:
    """``"12,407,scam_email,probe:scam_probe"``: indices, names of features in the catalog,
    ``probe:NAME`` for every feature of a probe already in the catalog (in its order), or
    ``all`` for the whole dictionary (``d_sae`` features)."""
    by_name = {f.name: f.index for f in cat.features}
    out = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        if tok.isdigit():
            out.append(int(tok))
        elif tok == "all":
            width = d_sae or cat.sae.d_sae
            if width is None:
                raise FeatureguardError("--features all: the SAE's width is not known")
            out += range(width)
        elif tok.startswith("probe:"):
            out += [i for _, i, _, _ in probe_inputs(cat, tok[len("probe:") :])]
        elif tok in by_name:
            out.append(by_name[tok])
        else:
            raise FeatureguardError(f"--features: '{tok}' is neither an index nor in the catalog")
    return list(dict.fromkeys(out))


def probe_inputs(cat: Catalog, name: str) -> list[tuple[str, int, float, str]]:
    """``(name, index, weight, label)`` of every input of probe ``name`` in ``cat``: the
    catalog's name and description when it lists the index, else ``#index`` and ``""``."""
    probe = cat.probes.get(name)
    if probe is None:
        have = ", ".join(sorted(cat.probes)) or "none"
        raise FeatureguardError(f"the catalog has no probe '{name}' (it has: {have})")
    by_index = {f.index: f for f in cat.features}
    by_name = {f.name: f for f in cat.features}
    if probe.is_file:
        idx, w = probe.file_inputs()
        return [
            (by_index[i].name, i, v, by_index[i].description)
            if i in by_index
            else (f"#{i}", i, v, "")
            for i, v in zip(idx, w, strict=True)
        ]
    return [
        (n, by_name[n].index, v, by_name[n].description)
        for n, v in zip(probe.features, probe.weights, strict=True)
    ]


def top_inputs(
    inputs: Sequence[tuple[str, int, float, str]], k: int, scale: Sequence[float] | None = None
) -> tuple[list[tuple[str, int, float, str]], list[tuple[str, int, float, str]]]:
    """The ``k`` most positive and ``k`` most negative inputs (each side only its sign), by
    weight, or by weight × ``scale[index]`` (e.g. each feature's max activation) when given."""
    ranked = sorted(inputs, key=lambda t: -t[2] * (scale[t[1]] if scale is not None else 1.0))
    return [t for t in ranked[:k] if t[2] > 0], [t for t in ranked[::-1][:k] if t[2] < 0]


def _lead(values: torch.Tensor, span: str) -> torch.Tensor:
    """Prepend the runtime's first token (all features 0) to a span that starts there."""
    if span != "all":
        return values
    return torch.cat([torch.zeros(1, values.shape[1]), values])  # (S + 1, F)


def token_rows(
    stack: Stack, items: Sequence[Item], idx: list[int] | None, span: str, chunk: int = 64
) -> list[torch.Tensor]:
    """Per-token values ``(S, K)`` of the chosen features (all ``d_sae`` when ``idx`` is None),
    as the runtime scores them (module doc), one row per item; ``chunk`` items are encoded at
    a time, so the encoder's output and the rows built from it are never both whole-set."""
    parts = encode_chunks(stack, items, chunk=chunk, span=span, features=idx)
    rows = [_lead(sc.values, span) for part in parts for sc in part]
    empty = [it.id for it, r in zip(items, rows, strict=True) if not r.shape[0]]
    if empty:
        raise FeatureguardError(
            f"{len(empty)} item(s) have no token to score in span {span!r} (first: {empty[0]})",
            hint="drop them, or use span 'all'",
        )
    return rows


def sparse_rows(stack: Stack, items: Sequence[Item], span: str, chunk: int = 64) -> SparseRows:
    """Every feature of every item (for :func:`greedy_select`), ``chunk`` items at a time."""
    parts = [
        SparseRows.from_dense(token_rows(stack, items[i : i + chunk], None, span))
        for i in range(0, len(items), chunk)
    ]
    offs = torch.cumsum(torch.tensor([0] + [p.lengths.numel() for p in parts[:-1]]), 0)
    return SparseRows(
        torch.cat([p.row + o for p, o in zip(parts, offs, strict=True)]),
        torch.cat([p.pos for p in parts]),
        torch.cat([p.feat for p in parts]),
        torch.cat([p.val for p in parts]),
        torch.cat([p.lengths for p in parts]),
        parts[0].n_features,
    )


def probe_spec(
    fit: ProbeFit,
    names: list[str] | None,
    sha256: str,
    description: str,
    weights_file: tuple[str, str] | None = None,
) -> ProbeSpec:
    """The catalog entry: inline ``names`` + weights, or ``weights_file`` = (relative path,
    sha256) of the file :func:`write_probe_file` wrote."""
    link, thr = logistic_threshold(fit.threshold)
    inputs: dict[str, Any] = (
        {"weights_file": weights_file[0], "weights_sha256": weights_file[1]}
        if weights_file is not None
        else {"features": names, "weights": [float(v) for v in fit.w.tolist()]}
    )
    return ProbeSpec(
        **inputs,
        bias=float(fit.b),
        pooling=fit.spec_pooling,  # type: ignore[arg-type]
        half_life=fit.half_life,
        link=link,  # type: ignore[arg-type]
        threshold=thr,
        sae_sha256=sha256,
        description=description,
    )


def write_probe_file(
    catalog: Path, name: str, idx: Sequence[int], w: torch.Tensor
) -> tuple[str, str]:
    """Write a probe's ``(indices, weights)`` next to the catalog, in ``<stem>.probes/``;
    returns (path relative to the catalog, sha256). Written to a temporary file and renamed."""
    raw = probe_file_bytes(idx, [float(v) for v in w.tolist()])
    folder = catalog.parent / f"{catalog.stem}.probes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return f"{folder.name}/{path.name}", hashlib.sha256(raw).hexdigest()


def _select(
    stack: Stack,
    positive: Sequence[Item],
    negative: Sequence[Item],
    *,
    how: str,
    top: int,
    pool: str,
    span: str,
    sustain: int,
) -> list[int]:
    if how == "greedy":
        if pool == "ema":
            raise FeatureguardError("--select greedy works with --pool max or mean, not ema")
        rows = sparse_rows(stack, [*positive, *negative], span)
        y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).long()
        return greedy_select(rows, y, top, pool=pool, sustain=sustain)
    # top features by contrast AUC on the training texts themselves
    p = pooled_features(stack, positive, how=pool, span=span)
    n = pooled_features(stack, negative, how=pool, span=span)
    return [r.index for r in rank_features(p.values, n.values, top=top)]


def source_batches(items: Sequence[Item]) -> torch.Tensor:
    """One batch id ``(N,)`` per item: the index of its source file (``extra[SOURCE_FILE]``),
    in order of first appearance."""
    missing = [it.id for it in items if SOURCE_FILE not in it.extra]
    if missing:
        raise FeatureguardError(
            f"--cv-by source needs items read from JSONL files; {len(missing)} have no source "
            f"file (first: {missing[0]!r})"
        )
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(it.extra[SOURCE_FILE], len(ids)) for it in items])


def _check_batches(positive: Sequence[Item], negative: Sequence[Item], k: int) -> None:
    """Refuse, before any encoding, source files too few to give every fold both classes."""
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).long()  # (N,)
    try:
        batch_folds(y, source_batches([*positive, *negative]), k)
    except ValueError:
        n_pos = len({it.extra[SOURCE_FILE] for it in positive})
        n_neg = len({it.extra[SOURCE_FILE] for it in negative})
        raise FeatureguardError(
            f"--cv-by source with {k} folds needs at least {k} source files of positives and of "
            f"negatives; the positives come from {n_pos}, the negatives from {n_neg}",
            hint="split the items into more files (one per authoring batch), lower --folds, "
            "or use --cv-by item",
        ) from None


def _calibration(
    calibration: Sequence[Item] | None, training: Sequence[Item], n_pos: int
) -> tuple[list[Item], torch.Tensor | None]:
    """Split calibration items into held-out ones and (row indices of) training negatives,
    which are scored out of fold."""
    if not calibration:
        return [], None
    key = {(it.id, it.body()): i for i, it in enumerate(training)}
    inside = [key[(it.id, it.body())] for it in calibration if (it.id, it.body()) in key]
    held = [it for it in calibration if (it.id, it.body()) not in key]
    return held, torch.tensor([n_pos + i for i in inside], dtype=torch.long)


def train_probe(
    stack: Stack,
    positive: Sequence[Item],
    negative: Sequence[Item],
    *,
    catalog: Path,
    name: str,
    features: str | None = None,
    top: int = 64,
    select: str = "auc",
    pool: str = "max",
    span: str = "user",
    penalty: str = "l2",
    sustain: int = 1,
    k: int = 5,
    target_fpr: float = 0.05,
    calibration: Sequence[Item] | None = None,
    replace: bool = False,
    sources: tuple[str, str, str | None] = ("", "", None),
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    inline_max: int | None = None,
    max_iter: int = 150,
    also_raw: bool = False,
    half_life: float | None = None,
    cv_by: str = "item",
) -> dict[str, Any]:
    """Train, calibrate and catalog a probe; returns a JSON-able summary.

    Calibration items that are also training negatives are scored out of fold, the others by
    the final probe (:func:`~sae.discovery.probe.fit_cv`). ``also_raw``: every chat item is
    also trained on (and calibrated with) as its raw rendering
    (:func:`~sae.discovery.data.raw_rendering`), in the same cross-validation fold as its
    chat-templated twin, so one threshold holds for callers that send bare prompts too.
    ``cv_by``: ``item`` deals items into stratified folds; ``source`` holds out whole source
    files (:func:`~sae.discovery.probe.batch_folds`), so the penalty and the out-of-fold
    threshold are chosen on authoring batches the probe never saw.
    """
    if select not in SELECTIONS:
        raise FeatureguardError(f"--select must be one of {SELECTIONS}, not {select!r}")
    if cv_by not in CV_BY:
        raise FeatureguardError(f"--cv-by must be one of {CV_BY}, not {cv_by!r}")
    if cv_by == "source":
        _check_batches(positive, negative, k)
    if (pool == "ema") != (half_life is not None) or (
        half_life is not None and not half_life >= MIN_HALF_LIFE
    ):
        raise FeatureguardError(
            f"--half-life (>= {MIN_HALF_LIFE} tokens) goes with --pool ema and only with it "
            f"(pool {pool!r}, half-life {half_life!r})"
        )
    cat = cio.open_catalog(catalog, stack)
    cio.check_probe_name(cat, name, replace=replace)  # before training or writing any file
    if features:
        idx = resolve_features(features, cat, stack.sae.cfg.d_sae)
    else:
        idx = _select(
            stack, positive, negative, how=select, top=top, pool=pool, span=span, sustain=sustain
        )
    hashes = (items_sha256(positive), items_sha256(negative))
    hash_cal = items_sha256(calibration) if calibration else ""
    groups = None
    if also_raw:
        positive, g_pos = with_raw_renderings(positive)
        negative, g_neg = with_raw_renderings(negative)
        groups = torch.tensor(g_pos + [len(g_pos) + g for g in g_neg])  # (N,) twin → one fold
        if calibration:
            calibration = with_raw_renderings(calibration)[0]
    rows = token_rows(stack, positive, idx, span)
    n_pos = len(rows)
    rows += token_rows(stack, negative, idx, span)
    n_neg = len(rows) - n_pos
    batch = TokenBatch.pack(rows)  # empties rows: the activations are held once (they are large)
    y = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)]).long()
    held, calib_rows = _calibration(calibration, negative, n_pos)
    strata = None
    if also_raw:  # the threshold holds the target for templated/text and raw rows alike
        # the calibration negatives in fit_cv's order: training rows out of fold, then held-out
        scored = (
            [negative[int(r) - n_pos] for r in calib_rows] + held
            if calib_rows is not None
            else negative  # no calibration set: every training negative, out of fold
        )
        strata = torch.tensor([it.extra.get("rendering") == "raw" for it in scored]).long()
    calib = TokenBatch.pack(token_rows(stack, held, idx, span)) if held else None
    batches = source_batches([*positive, *negative]) if cv_by == "source" else None  # (N,)
    fit = fit_cv(
        batch,
        y,
        pool=pool,
        penalty=penalty,
        k=k,
        target_fpr=target_fpr,
        calib=calib,
        calib_rows=calib_rows,
        sustain=sustain,
        lambdas=lambdas,
        max_iter=max_iter,
        groups=groups,
        half_life=half_life,
        calib_strata=strata,
        batches=batches,
    )
    stored = None
    if len(idx) > (INLINE_MAX if inline_max is None else inline_max):  # too many to review inline
        names = [f"#{i}" for i in idx]
        stored = write_probe_file(catalog, name, idx, fit.w)
    else:
        names = cio.names_for(cat, idx)
    best = fit.cv[fit.lam]
    how = "given" if features else f"the {len(idx)} best by {select} selection"
    desc = (
        f"{penalty.upper()} logistic probe on {len(idx)} features ({how}), {pool}-pooled"
        + (f" (half-life {half_life:g} tokens)" if half_life is not None else "")
        + f" over span {span}"
        + (f", held for {sustain} tokens (use it with `for: {sustain}`)" if sustain > 1 else "")
        + (
            "; chat items also as their raw last user turn (no chat template), twins in one CV "
            "fold, threshold at the target for both renderings"
            if also_raw
            else ""
        )
        + f"; lambda {fit.lam:g} by {k}-fold CV"
        + (" holding out whole source files" if cv_by == "source" else "")
        + f" (AUC {best[0]:.3f} ± {best[1]:.3f}); "
        f"threshold at FPR {target_fpr:g} on {fit.calibration['calibration_source']} "
        f"(observed {float(fit.calibration['calibration_fpr']):.3f}); positives {n_pos} "
        f"sha256:{hashes[0][:16]} ({sources[0]}), negatives {n_neg} "
        f"sha256:{hashes[1][:16]} ({sources[1]})"
        + (f", calibration sha256:{hash_cal[:16]} ({sources[2]})" if calibration else "")
        + f"; command: {cio.command_line()}"
    )
    spec = probe_spec(fit, None if stored else names, stack.sha256, desc, stored)
    cio.upsert_probe(cat, name, spec, replace=replace)
    cio.save(cat, catalog)
    return {
        "probe": name,
        "catalog": str(catalog),
        "features": dict(zip(names, idx, strict=True)) if not stored else len(idx),
        "weights_file": stored[0] if stored else None,
        "weights": spec.weights if not stored else None,
        "bias": spec.bias,
        "pooling": spec.pooling,
        "half_life": spec.half_life,
        "sustain": sustain,
        "link": spec.link,
        "threshold": spec.threshold,
        "threshold_logit": fit.threshold,
        "lambda": fit.lam,
        "cv_auc": {f"{lam:g}": v for lam, v in fit.cv.items()},
        "cv_by": cv_by,
        "calibration": fit.calibration,
        "positives": n_pos,
        "negatives": n_neg,
    }
