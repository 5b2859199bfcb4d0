"""The shipped policies load against the bundled SAE and pass their own test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cli import main
from monitor.policy.loader import load_policy
from monitor.policy.testing import run_test_file
from monitor.runtime.texts import lazy_text_encoder

RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.mark.parametrize("name", ["example", "default"])
def test_policy_checks_clean(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(RULES / f"{name}.yaml")]) == 0
    assert ": OK" in capsys.readouterr().out


def test_default_policy_imports_the_catalog_pinned_to_the_bundled_sae() -> None:
    policy = load_policy(RULES / "default.yaml")
    assert {r.id for r in policy.rules} >= {
        "scam-request",
        "deception-request",
        "dangerous-feature",
    }
    assert len(policy.probes) == 3
    enforce = [r.id for r in policy.rules if r.mode == "enforce"]
    shadow = [r.id for r in policy.rules if r.mode == "shadow"]
    assert enforce and shadow


@pytest.mark.integration
def test_default_policy_passes_its_test_file() -> None:
    results = run_test_file(RULES / "default.test.yaml", encode_texts=lazy_text_encoder())
    assert results and all(r.ok for r in results), [r.lines for r in results]
    assert all(r.skipped is None for r in results)
