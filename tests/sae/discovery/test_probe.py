"""Probes: recover a planted rule; a serialised probe evaluates exactly as the compiled policy
evaluator does; probes bound to another SAE are refused by the policy loader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from monitor.policy.catalog import Catalog, CatalogFeature, CatalogSAE, load_catalog, save_catalog
from monitor.policy.diagnostics import PolicyError
from monitor.policy.evaluator import Evaluator
from monitor.policy.explain import explain
from monitor.policy.loader import load_policy_text
from monitor.policy.saes import static_resolver
from sae.discovery.data import Item
from sae.discovery.metrics import auc, threshold_at_fpr
from sae.discovery.probe import (
    SparseRows,
    TokenBatch,
    _row_stats,
    batch_folds,
    fit,
    fit_cv,
    folds,
    greedy_select,
    row_scores,
    stratified_threshold,
    sustained_peak,
    token_scores,
)
from sae.discovery.probe_catalog import (
    _calibration,
    probe_spec,
    resolve_features,
    write_probe_file,
)

SHA_A, SHA_B = "a" * 64, "b" * 64


def planted(
    n: int = 240, T: int = 8, K: int = 10, seed: int = 0
) -> tuple[TokenBatch, torch.Tensor]:
    """Sparse non-negative token features; y = 1 when some token has 2·x0 − 1.5·x3 > 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, T, K, generator=g)) * (torch.rand(n, T, K, generator=g) < 0.4)
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (n, T) ragged rows
    z = 2 * x[..., 0] - 1.5 * x[..., 3] - 1.0
    y = z.masked_fill(~mask, -math.inf).amax(1) > 0
    return TokenBatch.from_dense(x, mask), y.long()


def test_packed_batch_keeps_every_row_token_in_order() -> None:
    rows = [torch.randn(n, 4) for n in (3, 1, 5, 2)]
    batch = TokenBatch.from_rows(rows)
    assert batch.mask.sum(1).tolist() == [3, 1, 5, 2] and len(batch) == 4
    assert torch.equal(batch.flat, torch.cat(rows))
    for i, r in enumerate(rows):
        assert torch.equal(batch.x[i, : r.shape[0]], r)
        assert not batch.x[i, r.shape[0] :].any()  # padding reads as zeros
    sub = batch.take(torch.tensor([3, 0]))  # reordered; padded to the longest row kept (3)
    assert sub.mask.shape == (2, 3)
    assert torch.equal(sub.flat, torch.cat([rows[3], rows[0]]))
    assert torch.equal(TokenBatch.from_dense(batch.x, batch.mask).flat, batch.flat)


def test_pack_empties_the_row_list_and_equals_from_rows() -> None:
    rows = [torch.randn(n, 4, dtype=torch.float64) for n in (2, 4, 1)]
    want = TokenBatch.from_rows(rows)
    assert len(rows) == 3  # from_rows keeps the caller's rows
    consumed = list(rows)
    got = TokenBatch.pack(consumed)
    assert consumed == []  # every row was released as it was copied
    assert got.flat.dtype == torch.float32 and torch.equal(got.flat, want.flat)
    assert torch.equal(got.flat, torch.cat(rows).float()) and torch.equal(got.mask, want.mask)
    with pytest.raises(ValueError, match="at least one scored token"):
        TokenBatch.pack([torch.randn(2, 4), torch.randn(0, 4)])
    with pytest.raises(ValueError, match="no rows"):
        TokenBatch.pack([])


@pytest.mark.parametrize(
    ("pool", "sustain", "half_life"), [("max", 1, None), ("mean", 3, None), ("ema", 2, 2.5)]
)
def test_packed_scores_match_the_padded_definition(
    pool: str, sustain: int, half_life: float | None
) -> None:
    batch, _ = planted(n=50, T=9, K=6)
    w, b = torch.randn(6), -0.3
    spec = {"max": "token", "mean": "mean", "ema": "ema"}[pool]
    padded = token_scores(batch.x, batch.mask, w, b, spec, half_life)  # (N, T) from (N, T, K)
    want = sustained_peak(padded, batch.mask, sustain)[0]
    got = row_scores(batch, w, b, pool, sustain, half_life)
    assert torch.allclose(got.float(), want.float(), atol=1e-5)


def test_row_statistics_of_a_row_subset_match_the_dense_ones() -> None:
    batch, _ = planted(n=150, T=7, K=5)  # 150 rows: more than one chunk of rows
    rows = torch.arange(0, 150, 2)
    mu, sd, means = _row_stats(batch, rows)
    tokens = batch.x[rows][batch.mask[rows]]  # (m, K)
    assert torch.allclose(mu, tokens.mean(0), atol=1e-6)
    assert torch.allclose(sd, tokens.std(0), atol=1e-5)
    want = batch.x[rows].sum(1) / batch.mask[rows].sum(1, keepdim=True)  # (n, K)
    assert torch.allclose(means, want, atol=1e-6)


def test_probe_recovers_a_planted_rule() -> None:
    batch, y = planted()
    f = fit_cv(batch, y, pool="max", k=3, lambdas=(1e-3, 1e-2))
    assert max(m for m, _ in f.cv.values()) > 0.95
    w = f.w.abs()
    others = w[[1, 2, 4, 5, 6, 7, 8, 9]]
    assert f.w[0] > 0 > f.w[3] and min(w[0], w[3]) > 3 * others.max()
    test_batch, y_test = planted(seed=1)
    s = row_scores(test_batch, f.w, f.b, "max")
    assert auc(s[y_test == 1], s[y_test == 0]) > 0.95


def test_l1_probe_is_sparser_than_l2() -> None:
    batch, y = planted()
    w1, _ = fit(batch, y, penalty="l1", lam=0.05)
    w2, _ = fit(batch, y, penalty="l2", lam=0.05)
    small = lambda w: int((w.abs() < 1e-2 * w.abs().max()).sum())  # noqa: E731
    assert small(w1) > small(w2)


def _policy(
    tmp_path: Path,
    spec_pool: str,
    fitted: object,
    idx: list[int],
    sha: str = SHA_A,
    sustain: int = 1,
):
    names = [f"f{i}" for i in idx]
    cat = Catalog(
        sae=CatalogSAE(name="test-sae", sha256=SHA_A, d_sae=64),
        features=[CatalogFeature(name=n, index=i) for n, i in zip(names, idx, strict=True)],
    )
    cat.probes["p"] = probe_spec(fitted, names, SHA_A, "test")  # type: ignore[arg-type]
    save_catalog(cat, tmp_path / "cat.yaml")
    assert load_catalog(tmp_path / "cat.yaml") == cat  # round trip
    return _probe_policy(tmp_path, sha, sustain)


def _probe_policy(tmp_path: Path, sha: str = SHA_A, sustain: int = 1):
    """A policy importing ``cat.yaml`` with one rule on its probe ``p``."""
    text = """
version: 1
policy: {name: t}
saes:
  main: {bundled: test-sae, d_sae: 64}
imports:
  - {catalog: cat.yaml, sae: main}
rules:
  - id: r
    severity: high
    for: FOR
    condition: {probe: p}
    actions: [{type: log}]
""".replace("FOR", str(sustain))
    resolver = static_resolver({"main": 64}, sha256={"main": sha})
    return load_policy_text(text, base_dir=tmp_path, resolver=resolver)


@pytest.mark.parametrize(
    ("pool", "sustain"), [("max", 1), ("mean", 1), ("max", 2), ("mean", 3), ("ema", 1), ("ema", 3)]
)
def test_serialised_probe_evaluates_identically_in_the_compiled_evaluator(
    tmp_path: Path, pool: str, sustain: int
) -> None:
    batch, y = planted(n=120)
    hl = 2.0 if pool == "ema" else None
    f = fit_cv(batch, y, pool=pool, k=3, lambdas=(1e-3, 1e-2), sustain=sustain, half_life=hl)
    assert f.half_life == hl
    assert f.sustain == sustain
    idx = [40, 3, 17, 8, 63, 0, 22, 5, 31, 12]  # unsorted: the policy reorders its columns
    cp = _policy(tmp_path, f.spec_pooling, f, idx, sustain=sustain)
    acts = torch.zeros(*batch.x.shape[:2], cp.K)  # (N, T, K) in the policy's column order
    for j, i in enumerate(idx):
        acts[..., cp.feature_columns[f"f{i}"]] = batch.x[..., j]
    ev = Evaluator(cp)
    res = ev.step(acts, batch.mask, "prompt", ev.new_state(acts.shape[0]))
    ours = token_scores(batch.x, batch.mask, f.w, f.b, f.spec_pooling, hl)  # (N, T)
    theirs = res.probe_scores[..., 0]
    assert torch.allclose(ours[batch.mask], theirs[batch.mask], atol=1e-5)
    state, steps = ev.new_state(acts.shape[0]), []  # decode: one token per step
    for t in range(acts.shape[1]):
        steps.append(ev.step(acts[:, t : t + 1], batch.mask[:, t : t + 1], "prompt", state))
    one_by_one = torch.cat([r.probe_scores[..., 0] for r in steps], dim=1)  # (N, T)
    assert torch.allclose(one_by_one[batch.mask], theirs[batch.mask], atol=1e-5)
    fired_eval = res.match.any(dim=1)[:, 0]
    fired_ours = row_scores(batch, f.w, f.b, pool, sustain, hl) > f.threshold
    assert torch.equal(fired_eval, fired_ours)
    assert 0 < int(fired_ours.sum()) < len(fired_ours)  # the comparison is not vacuous


def test_probe_pinned_to_another_sae_is_refused_by_the_policy_loader(tmp_path: Path) -> None:
    batch, y = planted(n=60)
    f = fit_cv(batch, y, k=3, lambdas=(1e-2,))
    with pytest.raises(PolicyError) as err:
        _policy(tmp_path, "token", f, list(range(10)), sha=SHA_B)
    assert "FG311" in str(err.value.report()) and "another SAE" in err.value.report()
    cat = load_catalog(tmp_path / "cat.yaml")
    cat.probes["p"] = cat.probes["p"].model_copy(update={"sae_sha256": SHA_B})
    save_catalog(cat, tmp_path / "cat.yaml")
    with pytest.raises(PolicyError) as err:
        load_catalog(tmp_path / "cat.yaml")
    assert "FG321" in err.value.report()


@pytest.mark.parametrize("n", [1, 3, 5])
def test_sustained_peak_matches_a_brute_force_search(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    s = torch.randn(30, 9, generator=g)  # (N, T)
    lengths = torch.randint(1, 10, (30,), generator=g)
    mask = torch.arange(9)[None, :] < lengths[:, None]
    peak, tok = sustained_peak(s, mask, n)
    for i in range(30):
        L = int(lengths[i])
        wins = [(min(s[i, t - n + 1 : t + 1].tolist()), t) for t in range(n - 1, L)]
        if not wins:
            assert peak[i] == -math.inf
            continue
        best = max(w for w, _ in wins)
        assert math.isclose(float(peak[i]), best, rel_tol=1e-6)
        assert float(s[i, tok[i]]) == float(peak[i])  # the deciding token holds the minimum


def test_greedy_selection_finds_the_planted_features_first() -> None:
    g = torch.Generator().manual_seed(3)
    n, T, F = 300, 8, 50
    x = torch.relu(torch.randn(n, T, F, generator=g)) * (torch.rand(n, T, F, generator=g) < 0.3)
    z = 2.0 * x[..., 11] + 1.5 * x[..., 37] - 1.5  # (n, T)
    y = (z.amax(1) > 0).long()
    rows = SparseRows.from_dense(list(x))
    assert torch.equal(rows.columns([37, 11]).x, x[..., [37, 11]])
    picked = greedy_select(rows, y, 2, pool="max", step=1)
    assert sorted(picked) == [11, 37]
    mean_at = rows.pooled_at(torch.full((n,), 3), "mean")  # running mean at token 3
    assert torch.allclose(mean_at, x[:, :4].mean(1), atol=1e-6)


def test_calibration_items_that_were_trained_on_are_scored_out_of_fold() -> None:
    neg = [Item(f"b{i}", text=f"t{i}", category="benign") for i in range(4)]
    held, rows = _calibration([neg[2], Item("x", text="new"), neg[0]], neg, n_pos=10)
    assert [it.id for it in held] == ["x"]
    assert rows is not None and rows.tolist() == [12, 10]  # training rows: positives first


def test_features_can_name_the_inputs_of_another_probe(tmp_path: Path) -> None:
    batch, y = planted(n=60)
    f = fit_cv(batch, y, k=3, lambdas=(1e-2,))
    _policy(tmp_path, "token", f, [5, 9, 2, 7, 1, 3, 4, 6, 8, 0])
    cat = load_catalog(tmp_path / "cat.yaml")
    assert resolve_features("9,probe:p,12", cat) == [9, 5, 2, 7, 1, 3, 4, 6, 8, 0, 12]


def _file_policy(tmp_path: Path, f: object, idx: list[int], named: dict[int, str]):
    """A policy whose probe ``p`` keeps its inputs in a weights file; ``named`` indices also have
    catalog entries (and so keep their catalog names)."""
    cat = Catalog(
        sae=CatalogSAE(name="test-sae", sha256=SHA_A, d_sae=64),
        features=[CatalogFeature(name=n, index=i) for i, n in named.items()],
    )
    stored = write_probe_file(tmp_path / "cat.yaml", "p", idx, f.w)  # type: ignore[attr-defined]
    cat.probes["p"] = probe_spec(f, None, SHA_A, "test", stored)  # type: ignore[arg-type]
    save_catalog(cat, tmp_path / "cat.yaml")
    return _probe_policy(tmp_path)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_weights_file_probe_evaluates_identically_in_the_compiled_evaluator(
    tmp_path: Path, pool: str
) -> None:
    batch, y = planted(n=120)
    f = fit_cv(batch, y, pool=pool, k=3, lambdas=(1e-3,))
    idx = [40, 3, 17, 8, 63, 0, 22, 5, 31, 12]
    cp = _file_policy(tmp_path, f, idx, named={3: "scam", 22: "fraud"})
    assert "weights_file" in (tmp_path / "cat.yaml").read_text()
    assert "f40" not in (tmp_path / "cat.yaml").read_text()  # inputs are not catalog entries
    names = ["scam" if i == 3 else "fraud" if i == 22 else f"p[{i}]" for i in idx]
    assert cp.probes[0].features == tuple(names)
    acts = torch.zeros(*batch.x.shape[:2], cp.K)  # (N, T, K) in the policy's column order
    for j, name in enumerate(names):
        acts[..., cp.feature_columns[name]] = batch.x[..., j]
    ev = Evaluator(cp)
    res = ev.step(acts, batch.mask, "prompt", ev.new_state(acts.shape[0]))
    ours = token_scores(batch.x, batch.mask, f.w, f.b, f.spec_pooling)  # (N, T)
    assert torch.allclose(ours[batch.mask], res.probe_scores[..., 0][batch.mask], atol=1e-5)
    fired = row_scores(batch, f.w, f.b, pool) > f.threshold
    assert torch.equal(res.match.any(dim=1)[:, 0], fired) and 0 < int(fired.sum()) < len(fired)
    text = explain(cp)
    assert "scam: #3" in text and "… and 8 more, read only by weights-file probes" in text
    cat = load_catalog(tmp_path / "cat.yaml")
    assert resolve_features("probe:p,1", cat) == [*idx, 1]
    assert resolve_features("all", cat) == list(range(64))


def test_twin_rows_share_a_cross_validation_fold() -> None:
    y = torch.tensor([1] * 10 + [0] * 20)
    groups = torch.arange(30)
    twins = torch.tensor([0, 3, 12, 15, 29, 20])  # raw renderings of these rows
    y2, g2 = torch.cat([y, y[twins]]), torch.cat([groups, twins])
    f = folds(y2, 5, seed=1, groups=g2)
    assert torch.equal(f[30:], f[twins])  # each twin in its original's fold
    assert torch.equal(f[:30], folds(y, 5, seed=1))  # the originals' folds do not move
    for k in range(5):  # still stratified: every fold holds both classes
        assert {0, 1} <= set(y2[f == k].tolist())


def test_grouped_cv_scores_a_twin_with_a_probe_that_never_saw_it() -> None:
    batch, y = planted(n=60)
    n = y.numel()
    both = TokenBatch.from_dense(torch.cat([batch.x, batch.x]), torch.cat([batch.mask, batch.mask]))
    y2, groups = torch.cat([y, y]), torch.cat([torch.arange(n), torch.arange(n)])
    kw = {"k": 3, "lambdas": (1e-4,), "target_fpr": 0.05}
    leaky = fit_cv(both, y2, **kw)  # type: ignore[arg-type]
    grouped = fit_cv(both, y2, groups=groups, **kw)  # type: ignore[arg-type]
    alone = fit_cv(batch, y, **kw)  # type: ignore[arg-type]
    # with twins kept together, out-of-fold AUC is what the rows alone give; split apart, a
    # row's exact copy is in training and the estimate is inflated
    assert grouped.cv[1e-4][0] == pytest.approx(alone.cv[1e-4][0], abs=0.02)
    assert leaky.cv[1e-4][0] > grouped.cv[1e-4][0]


def test_stratified_calibration_holds_the_target_in_every_stratum() -> None:
    scores = torch.cat([torch.arange(20.0), torch.arange(20.0) + 5])  # stratum 1 scores higher
    strata = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    thr = stratified_threshold(scores, strata, 0.1)
    assert thr == threshold_at_fpr(scores[20:], 0.1) > threshold_at_fpr(scores, 0.1)
    for k in (0, 1):  # neither stratum above the target
        assert int((scores[strata == k] > thr).sum()) <= 2  # 10% of 20
    batch, y = planted(n=120)
    neg = (y == 0).nonzero().flatten()
    kw = {"k": 3, "lambdas": (1e-3,), "target_fpr": 0.1, "calib_rows": neg}
    pooled = fit_cv(batch, y, **kw)  # type: ignore[arg-type]
    two = (torch.arange(neg.numel()) % 3 == 0).long()
    split = fit_cv(batch, y, calib_strata=two, **kw)  # type: ignore[arg-type]
    assert torch.equal(pooled.w, split.w) and split.threshold >= pooled.threshold
    assert "strata" in str(split.calibration["calibration_source"])


def test_batch_folds_hold_out_whole_batches_and_give_every_fold_both_classes() -> None:
    sizes = [30, 5, 12, 12, 8, 40, 9, 9, 20, 3, 7]  # batches 0-4 positive, 5-10 negative
    batches = torch.cat([torch.full((n,), b) for b, n in enumerate(sizes)])  # (N,)
    y = (batches < 5).long()
    y[0] = 0  # a stray negative in a positive batch goes with its batch
    f = batch_folds(y, batches, 3, seed=2)
    for b in range(len(sizes)):
        assert f[batches == b].unique().numel() == 1  # a batch is never split
    for k in range(3):
        assert {0, 1} <= set(y[f == k].tolist())
    assert torch.equal(f, batch_folds(y, batches, 3, seed=2))  # deterministic
    pos_load = [int(((f == k) & (batches < 5)).sum()) for k in range(3)]
    # largest first to the lightest fold: 30 | 12 + 8 | 12 + 5
    assert sorted(pos_load) == [17, 20, 30]
    with pytest.raises(ValueError, match="class 1 has 2 batches"):
        batch_folds(y[batches >= 3], batches[batches >= 3], 3)


def batch_styled(n_batches: int = 10, per: int = 24, seed: int = 0) -> tuple[TokenBatch, ...]:
    """Pure-class authoring batches: a weak shared signal (feature 0) plus a style feature
    only its own batch uses (feature 1 + b), which names the class for a batch seen in
    training and says nothing about a new one."""
    g = torch.Generator().manual_seed(seed)
    n, K, T = n_batches * per, 1 + n_batches, 6
    batches = torch.arange(n) // per  # (n,)
    y = (batches % 2).long()  # (n,) odd batches positive
    x = torch.relu(torch.randn(n, T, K, generator=g)) * 0.2  # (n, T, K) noise
    x[..., 0] += y[:, None] * 0.25 * torch.rand(n, T, generator=g)  # weak real signal
    x[torch.arange(n), :, 1 + batches] += 1.0  # the batch's style
    return TokenBatch.from_dense(x, torch.ones(n, T, dtype=torch.bool)), y, batches


def test_batch_cv_scores_each_batch_with_a_probe_that_never_saw_its_style() -> None:
    batch, y, batches = batch_styled()
    kw = {"k": 5, "lambdas": (1e-3,), "target_fpr": 0.1, "pool": "mean"}
    by_item = fit_cv(batch, y, **kw)  # type: ignore[arg-type]
    by_batch = fit_cv(batch, y, batches=batches, **kw)  # type: ignore[arg-type]
    # by item, every held-out row's style was in training: a near-perfect, misleading AUC;
    # by batch, only the weak shared signal carries over, as it would to new traffic
    assert by_item.cv[1e-3][0] > 0.99
    assert by_batch.cv[1e-3][0] < by_item.cv[1e-3][0] - 0.1
    assert by_batch.threshold > by_item.threshold  # new batches' negatives score higher
    with pytest.raises(ValueError, match="twins"):
        fit_cv(batch, y, batches=batches, groups=torch.arange(y.numel()) % 7, **kw)  # type: ignore[arg-type]
