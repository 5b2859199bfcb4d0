"""Catalog writing: round trip, SAE pin, name clashes, auto-created probe inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.policy.catalog import Evidence, load_catalog
from sae.discovery import catalog_io as cio
from sae.discovery.activations import Stack
from sae.errors import FeatureguardError
from tests.sae.helpers import random_sae


def _stack(sha: str) -> Stack:
    return Stack(None, None, random_sae("jumprelu"), None, sha, "test-sae")


def test_catalog_round_trip_pin_and_clashes(tmp_path: Path) -> None:
    path, stack = tmp_path / "cat.yaml", _stack("c" * 64)
    cat = cio.open_catalog(path, stack)
    ev = [Evidence(text='say "no" & <b>', activation=3.5, token=" no", token_index=2)]
    entry = cio.feature_entry(
        "scam_email", 12, description="yes: no", scale=4.25, scale_quantile=0.999, evidence=ev
    )
    cio.upsert_feature(cat, entry)
    assert cio.names_for(cat, [12, 40]) == ["scam_email", "f40"]
    cio.save(cat, path)
    back = load_catalog(path)
    assert back == cat and back.features[0].scale_kind == "quantile"
    again = cio.open_catalog(path, stack)
    with pytest.raises(FeatureguardError, match="already has 'scam_email'"):
        cio.upsert_feature(again, cio.feature_entry("scam_email", 13, description="", scale=None))
    cio.upsert_feature(
        again, cio.feature_entry("scam_email", 13, description="", scale=None), replace=True
    )
    assert again.features[0].index == 13
    with pytest.raises(FeatureguardError, match="pinned to another SAE"):
        cio.open_catalog(path, _stack("d" * 64))
