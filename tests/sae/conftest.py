"""Fixtures for the sae tests: parametrize over every registered architecture."""

from __future__ import annotations

import pytest

from sae.registry import architectures


@pytest.fixture(params=architectures())
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)
