"""``featureguard sae inspect`` and ``featureguard bench sae`` (output shape only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.cli import main
from sae.loading import sae_sha256, save_sae
from tests.sae.helpers import random_sae


def test_sae_inspect_prints_config_hook_metrics_and_sha(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sae = random_sae("jumprelu", metadata={"eval": {"l0": 31.0, "explained_variance": 0.81}})
    save_sae(sae, tmp_path)
    assert main(["sae", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert sae_sha256(tmp_path) in out
    assert "blocks.1.hook_resid_post" in out and "jumprelu" in out
    assert "l0=31" in out and "W_enc (16, 64)" in out
    assert main(["sae", "inspect", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["declared_metrics"] == {"l0": 31.0, "explained_variance": 0.81}
    assert info["format"] == "saelens" and info["shapes"]["threshold"] == [64]


def test_sae_inspect_unknown_name_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sae", "inspect", "no-such-sae"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featureguard: error: no SAE named or at 'no-such-sae'")
    assert "Traceback" not in err


def test_bench_sae_is_registered() -> None:
    from monitor.cli import build_parser

    args = build_parser().parse_args(["bench", "sae", "--quick"])
    assert args.quick
