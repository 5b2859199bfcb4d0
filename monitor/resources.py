"""Where shipped data lives: the policy files of ``rules/`` in a checkout or an installed wheel.

A checkout reads ``<repo>/rules``. A wheel installs the same files as data files under
``<prefix>/share/featureguard/rules`` (see ``[tool.setuptools.data-files]`` in pyproject.toml),
so ``pip install .`` (non-editable) finds them too. The bundled SAEs are package data of ``sae``
(``sae/bundled/<name>``) and are resolved by :func:`sae.loading.resolve_sae_path`.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from sae.errors import FeatureguardError


def rules_dirs() -> list[Path]:
    """Candidate ``rules`` folders, checkout first, then the installed data files."""
    here = Path(__file__).resolve().parent.parent / "rules"
    installed = [
        Path(sysconfig.get_path("data")) / "share" / "featureguard" / "rules",
        Path(sys.prefix) / "share" / "featureguard" / "rules",
    ]
    return [p for p in [here, *installed] if p.is_dir()]


def resolve_policy_path(name_or_path: str | Path) -> Path:
    """A policy file by path, or a shipped policy by name (``default`` → ``rules/default.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    for folder in rules_dirs():
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    shipped = sorted(p.stem for d in rules_dirs() for p in d.glob("*.yaml"))
    raise FeatureguardError(
        f"no policy file {name!r}",
        hint=f"pass a path, or one of the shipped policies: {', '.join(shipped) or 'none found'}",
    )
