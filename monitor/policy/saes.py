"""Finding what a policy needs to know about its SAEs (width, hook, fingerprint) at load time.

The loader does not load SAE weights: it asks a *resolver* for an :class:`SAEInfo`. The default
resolver reads an SAELens-style ``cfg.json`` (``d_sae``, ``metadata.hook_name``) from the SAE's
folder, a path relative to the policy file or a bundled name under ``sae/bundled/``, and hashes
its weights file. Tests and tools inject their own (``d_sae={"main": 9216}``) so a policy can be
checked before its SAE exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from monitor.policy.catalog import sae_fingerprint
from monitor.policy.schema import SAESpec


@dataclass(frozen=True)
class SAEInfo:
    """What the loader checks a policy against. ``None`` fields are unknown and not checked."""

    d_sae: int | None = None
    hook: str | None = None
    sha256: str | None = None
    path: Path | None = None


SAEResolver = Callable[[str, SAESpec, Path], "SAEInfo | None"]
"""``(sae_name, spec, policy_dir) -> SAEInfo``, or ``None`` when the SAE cannot be found."""


def bundled_sae_dir(name: str) -> Path:
    """Where a bundled SAE lives inside the installed ``sae`` package."""
    import sae

    return Path(sae.__file__).resolve().parent / "bundled" / name


def sae_location(spec: SAESpec, policy_dir: Path) -> Path:
    if spec.path is not None:
        p = Path(spec.path).expanduser()
        return p if p.is_absolute() else policy_dir / p
    assert spec.bundled is not None
    return bundled_sae_dir(spec.bundled)


def read_sae_info(location: Path) -> SAEInfo | None:
    """Width, hook and fingerprint of the SAE folder (or weights file) at ``location``."""
    folder = location if location.is_dir() else location.parent
    cfg_path = folder / "cfg.json"
    if not location.exists() or not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    d_sae = cfg.get("d_sae") or cfg.get("num_latents")
    try:
        sha: str | None = sae_fingerprint(location)
    except FileNotFoundError:
        sha = None
    return SAEInfo(d_sae=int(d_sae) if d_sae else None, hook=hook, sha256=sha, path=location)


def default_resolver(name: str, spec: SAESpec, policy_dir: Path) -> SAEInfo | None:
    """Resolve from disk; ``None`` when there is no ``cfg.json`` where the policy says."""
    return read_sae_info(sae_location(spec, policy_dir))


def static_resolver(
    d_sae: Mapping[str, int],
    sha256: Mapping[str, str] | None = None,
    hooks: Mapping[str, str] | None = None,
) -> SAEResolver:
    """A resolver from given values by SAE name, for tests, benchmarks and pre-release checks.

    SAEs not named in ``d_sae`` fall back to :func:`default_resolver`.
    """

    def resolve(name: str, spec: SAESpec, policy_dir: Path) -> SAEInfo | None:
        if name not in d_sae:
            return default_resolver(name, spec, policy_dir)
        return SAEInfo(
            d_sae=d_sae[name], sha256=(sha256 or {}).get(name), hook=(hooks or {}).get(name)
        )

    return resolve
