"""Strict YAML, schema and meaning checks, SAE resolution and catalogs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from monitor.policy.catalog import (
    Catalog,
    CatalogFeature,
    CatalogSAE,
    Evidence,
    ProbeSpec,
    load_catalog,
    sae_fingerprint,
    save_catalog,
)
from monitor.policy.diagnostics import PolicyError
from monitor.policy.loader import check_policy, load_policy, load_policy_text
from monitor.policy.yaml_strict import parse_text
from tests.monitor.policy.helpers import HEADER, policy

ROOT = Path(__file__).resolve().parents[3]


def test_yaml_12_scalars() -> None:
    src, diags = parse_text(
        "a: 1:30\nb: 1e3\nc: '1'\nd: 2024-01-01\ne: .inf\nf: 0x1F\ng: True\nh: ~\ni: 'no'\n",
        "f.yaml",
    )
    assert not diags
    assert src.data == {
        "a": "1:30",
        "b": 1000.0,
        "c": "1",
        "d": "2024-01-01",
        "e": math.inf,
        "f": 31,
        "g": True,
        "h": None,
        "i": "no",
    }
    assert src.pos(("d",)) == (4, 4) and src.pos(("d",), key=True) == (4, 1)


def test_every_schema_error_at_once() -> None:
    text = (
        HEADER
        + """rules:
  - id: r1
    severity: urgent
    condition: {feature: a, above: 1}
    actions: [{type: log}]
  - id: r2
    severity: low
    colour: red
    condition: {feature: a}
    actions: []
"""
    )
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", d_sae={"main": 64})
    got = [(d.code, d.line) for d in info.value.diagnostics]
    assert got == [("FG204", 15), ("FG201", 20), ("FG209", 21), ("FG205", 22)]
    assert "and 3 more" in str(info.value)
    assert info.value.report().splitlines()[0].startswith("p.yaml:15:15: FG204 ")


def test_every_meaning_error_at_once() -> None:
    with pytest.raises(PolicyError) as info:
        policy("""
            - {id: r, severity: low, condition: {feature: nope, above: 1},
               actions: [{type: alert, channel: pager}]}
            - {id: r, severity: low, condition: {macro: m}, actions: [{type: log}]}
        """)
    assert [d.code for d in info.value.errors] == ["FG301", "FG308", "FG307", "FG305"]


def test_warnings_do_not_block() -> None:
    p = policy(
        "- {id: r, severity: low, enabled: false, condition: {feature: a, above: 1},"
        " actions: [{type: log}]}\n"
    )
    assert p.R == 0 and p.disabled_rules == ("r",)
    assert {d.code for d in p.warnings} == {"FG402", "FG403"}


def write_sae(folder: Path, d_sae: int = 32, hook: str = "blocks.3.hook_resid_post") -> str:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(
        json.dumps({"d_in": 8, "d_sae": d_sae, "metadata": {"hook_name": hook}})
    )
    (folder / "sae_weights.safetensors").write_bytes(b"not really weights" * 10)
    return sae_fingerprint(folder)


def catalog_for(sha: str, **probe_kw: object) -> Catalog:
    probe = {
        "features": ["x", "y"],
        "weights": [1.0, -2.0],
        "bias": 0.5,
        "threshold": 0.7,
        "sae_sha256": sha,
        **probe_kw,
    }
    return Catalog(
        sae=CatalogSAE(name="tiny", sha256=sha, d_sae=32, hook="blocks.3.hook_resid_post"),
        features=[
            CatalogFeature(
                name="x",
                index=4,
                scale=3.0,
                scale_kind="quantile",
                scale_quantile=0.999,
                description="yes",
                evidence=[Evidence(text="1e3", activation=2.5, token="no")],
            ),
            CatalogFeature(name="y", index=30, description=""),
        ],
        probes={"p": ProbeSpec.model_validate(probe)},
    )


def test_catalog_round_trip_and_pins(tmp_path: Path) -> None:
    sha = write_sae(tmp_path / "sae")
    cat = catalog_for(sha)
    save_catalog(cat, tmp_path / "cat.yaml")
    assert load_catalog(tmp_path / "cat.yaml") == cat  # "yes", "1e3", "no", "" survive
    text = """version: 1
policy: {name: cat}
saes: {s: {path: sae, hook: blocks.3.hook_resid_post}}
imports: [{catalog: cat.yaml, sae: s}]
rules:
  - {id: r, severity: low, condition: {probe: p}, actions: [{type: log}]}
"""
    (tmp_path / "p.yaml").write_text(text)
    p = load_policy(tmp_path / "p.yaml")  # default resolver: reads cfg.json, hashes weights
    assert p.saes[0].d_sae == 32 and p.saes[0].sha256 == sha and p.saes[0].indices == (4, 30)
    assert p.probes[0].weights == (1.0, -2.0)
    assert p.tensors.lit_thr[0].item() == pytest.approx(math.log(0.7 / 0.3))

    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(b"retrained")  # another SAE
    _, diags = check_policy(tmp_path / "p.yaml")
    assert [d.code for d in diags] == ["FG311"]

    (tmp_path / "p.yaml").write_text(text.replace("blocks.3", "blocks.4"))
    _, diags = check_policy(tmp_path / "p.yaml")
    assert "FG320" in [d.code for d in diags]


def test_catalog_internal_errors(tmp_path: Path) -> None:
    cat = catalog_for("c" * 64, sae_sha256="d" * 64)
    save_catalog(cat, tmp_path / "cat.yaml")
    with pytest.raises(PolicyError) as info:
        load_catalog(tmp_path / "cat.yaml")
    assert [d.code for d in info.value.diagnostics] == ["FG321"]
    assert info.value.diagnostics[0].line > 0


def test_missing_sae_is_an_error_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        HEADER.replace("bundled: test-sae, d_sae: 64", "path: nowhere, d_sae: 64") + "rules: []\n"
    )
    assert [d.code for d in check_policy(path)[1] if d.severity == "error"] == ["FG310"]
    p, diags = check_policy(path, allow_missing_sae=True)
    assert p is not None and "FG401" in [d.code for d in diags]


def test_unreadable_file(tmp_path: Path) -> None:
    p, diags = check_policy(tmp_path / "missing.yaml")
    assert p is None and diags[0].code == "FG100"


def test_example_policy_and_its_tests() -> None:
    from monitor.policy.testing import run_test_file

    example = ROOT / "rules" / "example.yaml"
    p, diags = check_policy(example)  # against the bundled SAE's real cfg.json
    assert p is not None, [str(d) for d in diags]
    assert p.saes[0].d_sae == 9216 and p.on_error == "fail_closed"
    results = run_test_file(ROOT / "rules" / "example.test.yaml")
    assert results and all(r.ok for r in results), [r.lines for r in results]
    assert all(r.skipped is None for r in results)
