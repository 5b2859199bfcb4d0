"""Catalogs: probes whose inputs live in a weights file are pinned by sha256 and checked on load,
with errors that name the catalog file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.policy.catalog import (
    Catalog,
    CatalogSAE,
    ProbeSpec,
    load_catalog,
    probe_file_bytes,
    read_probe_file,
    save_catalog,
)
from monitor.policy.diagnostics import PolicyError

SHA = "a" * 64


def _write(tmp_path: Path, raw: bytes, pin: str | None = None) -> Path:
    import hashlib

    (tmp_path / "w.safetensors").write_bytes(raw)
    cat = Catalog(sae=CatalogSAE(name="s", sha256=SHA, d_sae=16))
    cat.probes["p"] = ProbeSpec(
        weights_file="w.safetensors",
        weights_sha256=pin or hashlib.sha256(raw).hexdigest(),
        bias=-1.0,
        threshold=0.5,
        sae_sha256=SHA,
    )
    save_catalog(cat, tmp_path / "cat.yaml")
    return tmp_path / "cat.yaml"


def _line_of(path: Path, field: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if field in line)


def test_weights_file_round_trips_and_is_read_on_load(tmp_path: Path) -> None:
    path = _write(tmp_path, probe_file_bytes([3, 0, 15], [0.5, -1.25, 2.0]))
    text = path.read_text()
    assert "weights_file: w.safetensors" in text
    assert "    features:" not in text and "weights:" not in text  # no inline inputs
    probe = load_catalog(path).probes["p"]
    assert probe.file_inputs() == ((3, 0, 15), (0.5, -1.25, 2.0))


def test_changed_weights_file_is_refused_naming_the_pin(tmp_path: Path) -> None:
    path = _write(tmp_path, probe_file_bytes([1], [1.0]))
    (tmp_path / "w.safetensors").write_bytes(probe_file_bytes([1], [9.0]))
    with pytest.raises(PolicyError) as err:
        load_catalog(path)
    report = err.value.report()
    assert "FG311" in report and "weights changed" in report
    assert f"{path}:{_line_of(path, 'weights_sha256')}" in report


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not a safetensors file", "not a safetensors file"),
        (probe_file_bytes([1, 1], [1.0, 2.0]), "distinct"),
        (probe_file_bytes([1, 99], [1.0, 2.0]), "only 16 features"),
        (probe_file_bytes([1], [float("nan")]), "finite"),
    ],
)
def test_malformed_weights_file_is_refused_naming_the_field(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    path = _write(tmp_path, raw)
    with pytest.raises(PolicyError) as err:
        load_catalog(path)
    report = err.value.report()
    assert message in report and f"{path}:{_line_of(path, 'weights_file')}" in report


def test_missing_weights_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, probe_file_bytes([1], [1.0]))
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(PolicyError) as err:
        load_catalog(path)
    assert "FG312" in err.value.report() and "cannot read" in err.value.report()


def test_a_probe_is_inline_or_file_backed_not_both(tmp_path: Path) -> None:
    path = _write(tmp_path, probe_file_bytes([1], [1.0]))
    text = path.read_text().replace(
        "    weights_file:", "    features: [a]\n    weights: [1.0]\n    weights_file:"
    )
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_catalog(path)
    assert "not both" in err.value.report()


def test_read_probe_file_rejects_wrong_tensor_names() -> None:
    import torch
    from safetensors.torch import save

    with pytest.raises(ValueError, match="expected tensors"):
        read_probe_file(save({"w": torch.zeros(2)}))


def _file_catalog(tmp_path: Path, name: str, indices: list[int]) -> None:
    import hashlib

    raw = probe_file_bytes(indices, [1.0] * len(indices))
    (tmp_path / f"{name}.safetensors").write_bytes(raw)
    (tmp_path / f"{name}.yaml").write_text(
        f"catalog_version: 1\nsae: {{name: s, sha256: '{SHA}', d_sae: 16}}\nprobes:\n"
        f"  p: {{weights_file: {name}.safetensors, weights_sha256: "
        f"'{hashlib.sha256(raw).hexdigest()}', threshold: 0.5, sae_sha256: '{SHA}'}}\n"
    )


def _policy(tmp_path: Path, imports: str, rules: str, features: str = "") -> str:
    return (
        "version: 1\npolicy: {name: t}\nsaes:\n  main: {bundled: s, d_sae: 16}\n"
        f"{features}imports: {imports}\nrules:\n{rules}"
    )


def test_probe_inputs_never_take_a_named_features_column_name_or_scale(tmp_path: Path) -> None:
    from monitor.policy.explain import explain
    from monitor.policy.loader import load_policy_text
    from monitor.policy.saes import static_resolver

    _file_catalog(tmp_path, "c", [5, 7])
    text = _policy(
        tmp_path,
        "[{catalog: c.yaml, sae: main}]",
        "  - {id: pr, severity: low, condition: {probe: p}, actions: [{type: log}]}\n"
        "  - {id: f, severity: low, condition: {feature: foo, above_scale: 0.5}, "
        "actions: [{type: log}]}\n",
        "features:\n  foo: {index: 5, scale: 2.0, export: true}\n",
    )
    cp = load_policy_text(text, base_dir=tmp_path, resolver=static_resolver({"main": 16}))
    assert cp.feature_names == ("foo", "p[7]") and cp.feature_scale == (2.0, None)
    assert cp.input_only == (False, True) and cp.reported_features == ("foo",)
    assert cp.probes[0].features == ("p[5]", "p[7]")  # the probe keeps its own input names
    assert "foo: #5, scale 2, exported" in explain(cp)
    assert str(tmp_path / "c.safetensors") in cp.data_files


def test_the_same_probe_name_from_two_imports_is_an_error(tmp_path: Path) -> None:
    from monitor.policy.loader import load_policy_text
    from monitor.policy.saes import static_resolver

    _file_catalog(tmp_path, "c", [5])
    _file_catalog(tmp_path, "d", [6])
    text = _policy(
        tmp_path,
        "[{catalog: c.yaml, sae: main}, {catalog: d.yaml, sae: main}]",
        "  - {id: pr, severity: low, condition: {probe: p}, actions: [{type: log}]}\n",
    )
    with pytest.raises(PolicyError) as err:
        load_policy_text(text, base_dir=tmp_path, resolver=static_resolver({"main": 16}))
    assert "FG317" in err.value.report() and "two imports" in err.value.report()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("    pooling: ema\n", "'pooling: ema' needs 'half_life'"),
        ("    pooling: mean\n    half_life: 8\n", "goes with 'pooling: ema', and only with it"),
        ("    pooling: ema\n    half_life: 0\n", "must be at least 0.01"),
        ("    pooling: ema\n    half_life: 0.0001\n", "must be at least 0.01"),
    ],
)
def test_ema_pooling_and_its_half_life_come_together(
    tmp_path: Path, edit: str, message: str
) -> None:
    path = _write(tmp_path, probe_file_bytes([1], [1.0]))
    path.write_text(path.read_text().replace("    pooling: token\n", edit))
    with pytest.raises(PolicyError) as err:
        load_catalog(path)
    report = err.value.report()
    assert message in report and str(path) in report


def test_an_ema_probe_round_trips(tmp_path: Path) -> None:
    path = _write(tmp_path, probe_file_bytes([1], [1.0]))
    text = path.read_text().replace(
        "    pooling: token\n", "    pooling: ema\n    half_life: 12.5\n"
    )
    path.write_text(text)
    probe = load_catalog(path).probes["p"]
    assert (probe.pooling, probe.half_life) == ("ema", 12.5)
