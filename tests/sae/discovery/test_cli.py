"""CLI smoke tests on a tiny model + random SAE: every discovery command runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monitor.cli import main
from monitor.policy.catalog import load_catalog
from sae.loading import sae_sha256


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _tiny_policy(path: Path, sae: str, cat: Path, rules: str) -> Path:
    """A policy on the tiny SAE importing catalog ``cat``, with these YAML ``rules`` lines."""
    path.write_text(
        f"version: 1\npolicy: {{name: tiny}}\nsaes:\n  main: {{path: {sae}}}\n"
        f"imports:\n  - {{catalog: {cat.name}, sae: main}}\nrules:\n" + rules
    )
    return path


def test_find_show_near_add_steer(tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sae, det, cat = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det", tiny_stack_dir / "c1.yaml"
    out = _run(
        capsys,
        "features",
        "find",
        "--positive",
        f"{det}:scam:train,dev",
        "--negative",
        f"{det}:benign:train,dev",
        "--sae",
        sae,
        "--top",
        "5",
        "--json",
        "--write-catalog",
        str(cat),
        "--name",
        "scam_words",
    )
    res = json.loads(out)
    assert len(res["features"]) == 5 and res["features"][0]["auc"] >= res["features"][1]["auc"]
    c = load_catalog(cat)
    assert c.sae.sha256 == sae_sha256(sae) and c.features[0].name == "scam_words"
    assert c.features[0].index == res["features"][0]["index"] and c.features[0].evidence
    assert "AUC" in c.features[0].description and "sha256:" in c.features[0].description
    idx = str(c.features[0].index)
    html = tiny_stack_dir / "show.html"
    out = _run(
        capsys,
        "features",
        "show",
        idx,
        "--sae",
        sae,
        "--corpus",
        f"{det}:*:train",
        "--html",
        str(html),
    )
    assert "density" in out and "promotes" in out and "[[" in out
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<|im_start|>" not in page  # escaped
    near = json.loads(
        _run(
            capsys,
            "features",
            "near",
            idx,
            "--sae",
            sae,
            "--k",
            "3",
            "--catalog",
            str(cat),
            "--json",
        )
    )
    assert len(near["neighbours"]) == 3 and near["label"] == "scam_words"
    _run(
        capsys,
        "features",
        "add",
        "--catalog",
        str(cat),
        "--index",
        "7",
        "--name",
        "seven",
        "--sae",
        sae,
        "--scale",
        "2.5",
    )
    assert {f.name: f.scale for f in load_catalog(cat).features}["seven"] == 2.5
    assert (
        main(
            [
                "features",
                "add",
                "--catalog",
                str(cat),
                "--index",
                "8",
                "--name",
                "seven",
                "--sae",
                sae,
            ]
        )
        == 2
    )  # name taken by another index: refused
    out = json.loads(
        _run(
            capsys,
            "steer",
            "--feature",
            idx,
            "--value",
            "50",
            "--prompt",
            "hi",
            "--sae",
            sae,
            "--max-new-tokens",
            "6",
            "--json",
        )
    )
    assert out["baseline"] != out["steered"]


def test_train_probe_then_eval_detection(
    tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sae, det, cat = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det", tiny_stack_dir / "c2.yaml"
    assert (
        main(
            [
                "features",
                "train-probe",
                "--positive",
                f"{det}:scam:test",
                "--negative",
                f"{det}:benign:train",
                "--name",
                "p",
                "--catalog",
                str(cat),
                "--sae",
                sae,
            ]
        )
        == 2
    )  # the test split is refused
    capsys.readouterr()
    out = json.loads(
        _run(
            capsys,
            "features",
            "train-probe",
            "--positive",
            f"{det}:scam:train",
            "--negative",
            f"{det}:benign:train",
            "--calibration-negative",
            f"{det}:benign:dev",
            "--name",
            "scam_probe",
            "--catalog",
            str(cat),
            "--top",
            "6",
            "--folds",
            "3",
            "--sae",
            sae,
            "--json",
        )
    )
    c = load_catalog(cat)
    assert c.probes["scam_probe"].features == list(out["features"])
    assert all(f.name in out["features"] for f in c.features)  # f<idx> entries created
    _run(
        capsys,
        "features",
        "find",
        "--positive",
        f"{det}:scam:train",
        "--negative",
        f"{det}:benign:train",
        "--sae",
        sae,
        "--write-catalog",
        str(cat),
        "--name",
        "top1",
    )
    policy = _tiny_policy(
        tiny_stack_dir / "policy.yaml",
        sae,
        cat,
        """  - {id: feat, severity: high, condition: {feature: top1, above_scale: 0.5},
      actions: [{type: log}]}
  - {id: probe, severity: high, condition: {probe: scam_probe}, actions: [{type: log}]}
""",
    )
    rep = json.loads(
        _run(
            capsys,
            "eval",
            "detection",
            "--policy",
            str(policy),
            "--data",
            str(det),
            "--split",
            "test",
            "--json",
        )
    )
    block = rep["categories"]["scam"]
    kinds = {d["detector"]: d["kind"] for d in block["detectors"]}
    assert kinds == {
        "feat": "feature",
        "probe": "probe",
        "(any rule)": "any-rule",
        "baseline-scam": "baseline",
    }
    row = block["detectors"][0]
    assert row["recall"]["n"] == block["positives"] == 3
    assert len(row["recall"]["ci95"]) == 2 and 0 <= row["auc"] <= 1
    text = _run(
        capsys, "eval", "detection", "--policy", str(policy), "--data", str(det), "--no-baseline"
    )
    assert "FPR hard-neg" in text and "baseline" not in text


def test_greedy_probe_held_for_n_tokens_and_a_probe_over_its_features(
    tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sae, det, cat = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det", tiny_stack_dir / "c3.yaml"
    common = ["--negative", f"{det}:benign:train", "--catalog", str(cat), "--sae", sae]
    common += ["--folds", "3", "--json"]
    first = json.loads(
        _run(
            capsys,
            *["features", "train-probe", "--positive", f"{det}:scam:train", *common],
            *["--name", "g", "--select", "greedy", "--top", "4", "--pool", "mean", "--for", "2"],
            *["--calibration-negative", f"{det}:benign:train,dev"],
        )
    )
    assert len(first["features"]) == 4 and first["sustain"] == 2
    assert first["pooling"] == "mean"
    # calibration: the 6 training negatives out of fold plus the 3 dev negatives held out
    assert first["calibration"]["calibration_negatives"] == 9
    assert "held for 2 tokens" in load_catalog(cat).probes["g"].description
    second = json.loads(
        _run(
            capsys,
            *["features", "train-probe", "--positive", f"{det}:scam:train", *common],
            *["--name", "t", "--features", "probe:g"],
        )
    )
    assert second["features"] == first["features"] and second["pooling"] == "token"


def test_whole_dictionary_probe_goes_to_a_weights_file_and_shows_its_top_inputs(
    tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sae.discovery.probe_catalog as pc

    monkeypatch.setattr(pc, "INLINE_MAX", 16)  # the tiny SAE has 64 features
    sae, det, cat = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det", tiny_stack_dir / "c4.yaml"
    out = json.loads(
        _run(
            capsys,
            *["features", "train-probe", "--positive", f"{det}:scam:train"],
            *["--negative", f"{det}:benign:train", "--catalog", str(cat), "--sae", sae],
            *["--folds", "3", "--json", "--name", "d", "--features", "all", "--pool", "mean"],
            *["--lambdas", "0.01", "--max-iter", "20"],
        )
    )
    assert out["weights_file"] == "c4.probes/d.safetensors" and out["features"] == 64
    probe = load_catalog(cat).probes["d"]
    assert probe.is_file and probe.file_inputs()[0] == tuple(range(64))
    assert "    features:" not in cat.read_text()  # no 64 inline entries
    text = _run(capsys, "features", "show", "--probe", "d", "--catalog", str(cat), "--sae", sae)
    assert "probe d (64 inputs, weights file c4.probes/d.safetensors" in text
    assert "top inputs that raise the score (by weight" in text and "top inputs that lower" in text
    w = probe.file_inputs()[1]
    best = max(range(64), key=lambda i: w[i])
    assert f"  #{best}; promotes" in text.split("that lower")[0]  # the largest weight is listed


def test_train_probe_cv_by_source_holds_out_whole_files(
    tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sae, det = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det"
    argv = ["features", "train-probe", "--sae", sae, "--folds", "3", "--cv-by", "source"]
    argv += ["--top", "4", "--max-iter", "5", "--lambdas", "0.01", "--json", "--name", "p"]
    assert (
        main(
            [
                *argv,
                "--positive",
                f"{det}:scam:train,dev",
                "--negative",
                f"{det}:benign:train,dev",
                "--catalog",
                str(tmp_path / "c.yaml"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err  # one items file: no fold could hold out a batch
    assert "needs at least 3 source files" in err and "positives come from 1" in err
    assert not (tmp_path / "c.yaml").exists()
    split = tmp_path / "det"  # the same items, each category over three files
    (split / "items").mkdir(parents=True)
    (split / "splits.json").write_bytes((det / "splits.json").read_bytes())
    for n, line in enumerate((det / "items" / "all.jsonl").read_text().splitlines()):
        row = json.loads(line)
        with open(split / "items" / f"{row['category']}_{n % 3}.jsonl", "a") as fh:
            fh.write(line + "\n")
    out = json.loads(
        _run(
            capsys,
            *argv,
            "--positive",
            f"{split}:scam:train,dev",
            "--negative",
            f"{split}:benign:train,dev",
            "--catalog",
            str(tmp_path / "c2.yaml"),
        )
    )
    assert out["cv_by"] == "source" and out["positives"] == 9 and out["negatives"] == 9
    desc = load_catalog(tmp_path / "c2.yaml").probes["p"].description
    assert "3-fold CV holding out whole source files" in desc


def test_train_probe_refuses_an_existing_name_before_training_or_writing(
    tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sae.discovery.probe_catalog as pc

    monkeypatch.setattr(pc, "INLINE_MAX", 16)
    sae, det, cat = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det", tiny_stack_dir / "c5.yaml"
    argv = ["features", "train-probe", "--positive", f"{det}:scam:train"]
    argv += ["--negative", f"{det}:benign:train", "--catalog", str(cat), "--sae", sae]
    argv += ["--folds", "3", "--json", "--name", "d", "--features", "all", "--max-iter", "5"]
    _run(capsys, *argv)
    weights = tiny_stack_dir / "c5.probes" / "d.safetensors"
    before = (weights.read_bytes(), cat.read_bytes())

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("trained although the name exists")

    monkeypatch.setattr(pc, "fit_cv", no_training)
    assert main(argv) == 2
    assert "already has a probe 'd'" in capsys.readouterr().err
    assert (weights.read_bytes(), cat.read_bytes()) == before  # nothing rewritten
    assert main([*argv[:-6], "--name", "a/b", "--features", "all"]) == 2
    assert "probe name" in capsys.readouterr().err


def test_also_raw_trains_on_both_renderings_and_eval_reads_raw_prompts(
    tiny_stack_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sae.discovery.probe_catalog as pc

    seen: dict[str, object] = {}
    real_fit_cv = pc.fit_cv

    def spy(batch: object, y: object, **kw: object) -> object:
        seen.update(kw, n=len(y))  # type: ignore[arg-type]
        return real_fit_cv(batch, y, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pc, "fit_cv", spy)
    sae, det, cat = str(tiny_stack_dir / "sae"), tiny_stack_dir / "det", tiny_stack_dir / "c6.yaml"
    out = json.loads(
        _run(
            capsys,
            *["features", "train-probe", "--positive", f"{det}:scam:train"],
            *["--negative", f"{det}:benign:train", "--catalog", str(cat), "--sae", sae],
            *["--calibration-negative", f"{det}:plain_benign:train", "--also-raw"],
            *["--folds", "3", "--json", "--name", "r", "--top", "4", "--lambdas", "0.01"],
            *["--pool", "ema", "--half-life", "4"],
        )
    )
    assert (out["pooling"], out["half_life"]) == ("ema", 4.0)
    # train split: scam and benign items 0, 1, 4, 5, 8, 9 each; the even ones are chat items
    assert (out["positives"], out["negatives"]) == (9, 9)  # 6 items + 3 raw twins each
    groups = seen["groups"]
    assert isinstance(groups, torch.Tensor) and groups.tolist() == [0, 1, 2, 3, 4, 5, 0, 2, 4] + [
        9 + g for g in [0, 1, 2, 3, 4, 5, 0, 2, 4]
    ]
    probe = load_catalog(cat).probes["r"]
    assert (probe.pooling, probe.half_life) == ("ema", 4.0)
    assert "also as their raw last user turn" in probe.description
    assert "ema-pooled (half-life 4 tokens)" in probe.description
    bad = ["features", "train-probe", "--positive", f"{det}:scam:train", "--sae", sae]
    bad += ["--negative", f"{det}:benign:train", "--catalog", str(cat), "--name", "q"]
    assert main([*bad, "--pool", "max", "--half-life", "4"]) == 2  # half-life needs ema
    assert "--half-life" in capsys.readouterr().err
    # calibration: the raw twins of the plain benign training items are scored out of fold too
    assert "out of fold" in str(out["calibration"]["calibration_source"])
    # both renderings are calibration strata (templated/text rows and raw twins)
    assert "the highest of 2 strata's thresholds" in str(out["calibration"]["calibration_source"])
    policy = _tiny_policy(
        tiny_stack_dir / "policy_raw.yaml",
        sae,
        cat,
        "  - {id: probe, severity: high, condition: {probe: r}, actions: [{type: log}]}\n",
    )
    import sae.discovery.detection as det_mod

    scanned: list[list[object]] = []
    real_scan = det_mod.scan_items

    def scan_spy(cp: object, stack: object, items: list[object]) -> object:
        scanned.append(items)
        return real_scan(cp, stack, items)  # type: ignore[arg-type]

    monkeypatch.setattr(det_mod, "scan_items", scan_spy)
    argv = ["eval", "detection", "--policy", str(policy), "--data", str(det), "--no-baseline"]
    argv += ["--split", "dev"]  # items 2, 6, 10 of each category: chat items
    as_is = json.loads(_run(capsys, *argv, "--json"))
    raw = json.loads(_run(capsys, *argv, "--json", "--rendering", "raw"))
    assert (as_is["rendering"], raw["rendering"]) == ("as-is", "raw")
    assert as_is["items"] == raw["items"] == 6
    assert all(it.messages is not None for it in scanned[0])  # type: ignore[attr-defined]
    assert all(it.messages is None for it in scanned[1])  # type: ignore[attr-defined]
    assert [it.id for it in scanned[0]] == [it.id for it in scanned[1]]  # type: ignore[attr-defined]
    assert "(rendering raw)" in _run(capsys, *argv, "--rendering", "raw")
