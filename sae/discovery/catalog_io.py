"""Writing feature catalogs (the files policies ``import``) from the discovery tools.

A catalog is opened for one SAE: an existing file must be pinned to the same SAE (sha256), a
missing one is created. Entries are added by name; re-adding a name with another index is an
error unless ``replace``. Provenance (AUC, data hashes, command) goes into ``description``,
since the catalog schema has no field for it; top-activating examples go into ``evidence``.
Files are written with :func:`monitor.policy.catalog.save_catalog` (atomic rename).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from monitor.policy.catalog import (
    Catalog,
    CatalogFeature,
    CatalogSAE,
    Evidence,
    ProbeSpec,
    load_catalog,
    save_catalog,
)
from monitor.policy.schema import Name
from sae.discovery.activations import Stack
from sae.errors import FeatureguardError


def command_line() -> str:
    """The command that is running, as a shell line (recorded in provenance)."""
    return "featureguard " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def sae_name(stack: Stack) -> str:
    """The catalog's SAE name: the bundled name, or the folder name of a path."""
    return Path(stack.name).name if "/" in stack.name else stack.name


def open_catalog(path: Path, stack: Stack) -> Catalog:
    """The catalog at ``path`` (checked against ``stack``'s SAE), or a new empty one."""
    if not path.exists():
        return Catalog(
            sae=CatalogSAE(
                name=sae_name(stack),
                sha256=stack.sha256,
                d_sae=stack.sae.cfg.d_sae,
                hook=stack.sae.cfg.hook_name,
            )
        )
    cat = load_catalog(path)
    if cat.sae.sha256 != stack.sha256:
        raise FeatureguardError(
            f"catalog {path} is pinned to another SAE (sha256 {cat.sae.sha256[:12]}…, "
            f"not {stack.sha256[:12]}…)",
            hint="write to a new catalog file for this SAE",
        )
    return cat


def recorded_scale(stack: Stack, index: int) -> float | None:
    """The feature's max activation on held-out text, from the SAE's feature_stats file."""
    from sae.training.pipeline import load_feature_stats

    stats = load_feature_stats(stack.sae_path) if stack.sae_path is not None else None
    if stats is None:
        return None
    value = float(stats["max"][index])
    return value if value > 0 else None


def upsert_feature(cat: Catalog, feature: CatalogFeature, *, replace: bool = False) -> None:
    """Add ``feature``; an entry of the same name is replaced only with ``replace`` (or when
    it names the same index)."""
    for i, f in enumerate(cat.features):
        if f.name == feature.name:
            if f.index != feature.index and not replace:
                raise FeatureguardError(
                    f"catalog already has '{f.name}' = feature {f.index}",
                    hint="choose another --name, or pass --replace",
                )
            cat.features[i] = feature
            return
    cat.features.append(feature)


def names_for(cat: Catalog, indices: Sequence[int]) -> list[str]:
    """A catalog name per feature index: the existing entry's, else a new entry ``f<idx>``."""
    by_index = {f.index: f.name for f in cat.features}
    names = []
    for idx in indices:
        if idx not in by_index:
            name = f"f{idx}"
            upsert_feature(cat, CatalogFeature(name=name, index=idx, description="(probe input)"))
            by_index[idx] = name
        names.append(by_index[idx])
    return names


def check_probe_name(cat: Catalog, name: str, *, replace: bool = False) -> None:
    """Refuse a name a policy could not reference, or one the catalog already has (unless
    ``replace``)."""
    try:
        TypeAdapter(Name).validate_python(name)
    except ValidationError:
        raise FeatureguardError(
            f"--name {name!r}: a probe name starts with a letter or '_' and has only letters, "
            "digits, '_', '.', '-' (at most 128)"
        ) from None
    if name in cat.probes and not replace:
        raise FeatureguardError(
            f"catalog already has a probe '{name}'", hint="pass --replace to overwrite it"
        )


def upsert_probe(cat: Catalog, name: str, probe: ProbeSpec, *, replace: bool = False) -> None:
    check_probe_name(cat, name, replace=replace)
    cat.probes[name] = probe


def feature_entry(
    name: str,
    index: int,
    *,
    description: str,
    scale: float | None,
    scale_quantile: float | None = None,
    evidence: Sequence[Evidence] = (),
) -> CatalogFeature:
    """A catalog entry; ``scale_quantile`` marks the scale as a quantile, else a max."""
    return CatalogFeature(
        name=name,
        index=index,
        description=description,
        scale=scale,
        scale_kind="quantile" if scale_quantile is not None else "max",
        scale_quantile=scale_quantile,
        evidence=list(evidence),
    )


def save(cat: Catalog, path: Path) -> None:
    """Validate by round-tripping through the loader's model, then write atomically."""
    Catalog.model_validate(cat.model_dump(mode="json", by_alias=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_catalog(cat, path)
    load_catalog(path)  # the file we wrote must load: fail loudly here, not in a policy
