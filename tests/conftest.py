"""Test-wide settings: offline always, and one shared cache for the converted bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Integration tests share one converted copy of the bundled model (converted on first use).
os.environ.setdefault("FEATUREGUARD_HOME", str(Path(__file__).resolve().parent.parent / ".fg-home"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``FEATUREGUARD_SKIP_INTEGRATION=1`` skips the tests that load the real model or services."""
    if os.environ.get("FEATUREGUARD_SKIP_INTEGRATION") != "1":
        return
    skip = pytest.mark.skip(reason="FEATUREGUARD_SKIP_INTEGRATION=1")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
