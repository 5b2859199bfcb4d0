"""Feature catalogs: the file the ``features`` tooling writes and a policy ``imports``.

A catalog is YAML (JSON is accepted too, being a subset) with this shape::

    catalog_version: 1
    sae: {name: smollm2-135m-res-l15, sha256: <64 hex>, d_sae: 9216,
          hook: blocks.15.hook_resid_post}
    features:
      - name: violence
        index: 1234
        description: descriptions of physical violence
        scale: 8.5            # activation scale: the max, or a high quantile, on a corpus
        scale_kind: quantile  # max | quantile
        scale_quantile: 0.999 # only for scale_kind: quantile
        evidence:             # top activating examples (optional)
          - {text: "...", token: " stab", activation: 9.1}
    probes:
      jailbreak:
        features: [violence, roleplay]   # names in this catalog
        weights: [1.2, -0.4]             # one per feature
        bias: -3.0
        pooling: token                   # token | mean (mean of the row's tokens so far)
        link: logistic                   # logistic: threshold is a probability
        threshold: 0.5
        sae_sha256: <64 hex>             # must equal sae.sha256

The SAE is pinned by :func:`sae_fingerprint`: the sha256 of the weights file
(``sae_weights.safetensors`` in an SAELens folder, or the file itself). Loading a catalog against
an SAE with another fingerprint is an error (FG311).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from monitor.policy.diagnostics import Diagnostic, PolicyError
from monitor.policy.schema import Name, Sha256, Strict, Threshold
from monitor.policy.yaml_strict import AMBIGUOUS, MAX_BYTES, Source, parse_bytes, resolve_plain

WEIGHT_FILES = ("sae_weights.safetensors", "sae.safetensors", "ae.pt")


class CatalogSAE(Strict):
    name: str
    sha256: Sha256
    d_sae: int | None = Field(default=None, ge=1)
    hook: str | None = None


class Evidence(Strict):
    text: str
    activation: float
    token: str | None = None
    token_index: int | None = None


class CatalogFeature(Strict):
    name: Name
    index: int = Field(ge=0)
    sae: str | None = None  # defaults to the catalog's SAE; must equal it when given
    description: str = ""
    scale: Threshold | None = Field(default=None, gt=0)
    scale_kind: Literal["max", "quantile"] = "max"
    scale_quantile: float | None = Field(default=None, gt=0, lt=1)
    evidence: list[Evidence] = Field(default_factory=list)


class ProbeSpec(Strict):
    """A linear probe ``link(Σ w_i f_i + bias) > threshold`` over catalog features."""

    features: list[Name] = Field(min_length=1)
    weights: list[Threshold]
    bias: Threshold = 0.0
    pooling: Literal["token", "mean"] = "token"
    link: Literal["logistic", "linear"] = "logistic"
    threshold: Threshold
    sae_sha256: Sha256
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> ProbeSpec:
        if len(self.weights) != len(self.features):
            raise ValueError(
                f"a probe needs one weight per feature ({len(self.features)} "
                f"features, {len(self.weights)} weights)"
            )
        return self


class Catalog(Strict):
    catalog_version: Literal[1] = 1
    sae: CatalogSAE
    features: list[CatalogFeature] = Field(default_factory=list)
    probes: dict[Name, ProbeSpec] = Field(default_factory=dict)


def sae_fingerprint(path: str | Path) -> str:
    """sha256 (hex) of an SAE's weights: the weights file in a folder, or the file itself."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in WEIGHT_FILES if (p / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no SAE weights file ({', '.join(WEIGHT_FILES)}) in {p}")
        p = found[0]
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def catalog_semantics(cat: Catalog, src: Source) -> list[Diagnostic]:
    """Problems inside one catalog: duplicate names, probes naming unknown features, etc."""
    diags: list[Diagnostic] = []
    seen: set[str] = set()
    for i, f in enumerate(cat.features):
        if f.name in seen:
            diags.append(
                src.diag("FG317", f"feature '{f.name}' is listed twice", ("features", i, "name"))
            )
        seen.add(f.name)
        if f.sae is not None and f.sae != cat.sae.name:
            diags.append(
                src.diag(
                    "FG321",
                    f"feature '{f.name}' names SAE '{f.sae}' but the "
                    f"catalog is for '{cat.sae.name}'",
                    ("features", i, "sae"),
                )
            )
        if cat.sae.d_sae is not None and f.index >= cat.sae.d_sae:
            diags.append(
                src.diag(
                    "FG302",
                    f"feature '{f.name}' has index {f.index}, but the "
                    f"SAE has only {cat.sae.d_sae} features",
                    ("features", i, "index"),
                )
            )
    for pname, p in cat.probes.items():
        for j, fname in enumerate(p.features):
            if fname not in seen:
                diags.append(
                    src.diag(
                        "FG301",
                        f"probe '{pname}' uses feature '{fname}', "
                        "which this catalog does not define",
                        ("probes", pname, "features", j),
                    )
                )
        if p.sae_sha256 != cat.sae.sha256:
            diags.append(
                src.diag(
                    "FG321",
                    f"probe '{pname}' was trained on another SAE "
                    "(its sae_sha256 differs from the catalog's)",
                    ("probes", pname, "sae_sha256"),
                )
            )
    return diags


def load_catalog(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Catalog:
    """Read and validate a catalog file; raises :class:`PolicyError` with every problem."""
    from monitor.policy.loader import validation_diagnostics

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError(
            [Diagnostic("FG312", f"cannot read catalog: {exc.strerror}", str(p))]
        ) from None
    src, diags = parse_bytes(raw, str(p), max_bytes=max_bytes)
    if diags:
        raise PolicyError(diags)
    try:
        cat = Catalog.model_validate(src.data)
    except ValidationError as exc:
        raise PolicyError(validation_diagnostics(exc, src)) from None
    diags = catalog_semantics(cat, src)
    if diags:
        raise PolicyError(diags)
    return cat


class _Dumper(yaml.SafeDumper):
    """Quotes every string that the strict (YAML 1.2) reader would not read back as text."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    plain_ok = resolve_plain(value) == value and value.lower() not in AMBIGUOUS
    style = None if plain_ok else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def save_catalog(catalog: Catalog, path: str | Path) -> None:
    """Write ``catalog`` as YAML that :func:`load_catalog` reads back unchanged.

    Written to a temporary file and renamed, so a reader never sees half a catalog.
    """
    p = Path(path)
    data = catalog.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = "# featureguard feature catalog (written by `featureguard features`)\n"
    text += yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
