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
        pooling: token                   # token | mean (mean of the row's tokens so far) | ema
        link: logistic                   # logistic: threshold is a probability
        threshold: 0.5
        sae_sha256: <64 hex>             # must equal sae.sha256
      scam_dense:                        # a probe over many features (e.g. the whole dictionary)
        weights_file: smollm2.probes/scam_dense.safetensors  # relative to this catalog
        weights_sha256: <64 hex>         # sha256 of that file
        bias: -2.1
        pooling: ema                     # exponentially weighted mean of the row's tokens:
        half_life: 16                    # a token's weight halves every 16 tokens
        threshold: 0.7
        sae_sha256: <64 hex>

Pooling (:mod:`monitor.policy.pooling`): ``token`` scores each token alone; ``mean`` the mean
over the row's tokens so far (a long system prompt dilutes it); ``ema`` an exponentially
weighted mean with the given ``half_life`` in tokens, which follows the recent tokens.

A probe lists its inputs inline (``features`` + ``weights``) or, when it reads more features
than a person would review line by line, in a safetensors file next to the catalog holding
``indices`` ``(K,)`` int64 and ``weights`` ``(K,)`` float32 (:func:`read_probe_file`). The
file is pinned by its sha256, so the catalog's bytes (and so the policy hash) pin the weights;
:func:`load_catalog` reads it and exposes the pairs as :meth:`ProbeSpec.inputs`.

The SAE is pinned by :func:`sae_fingerprint`: the sha256 of the weights file
(``sae_weights.safetensors`` in an SAELens folder, or the file itself). Loading a catalog against
an SAE with another fingerprint is an error (FG311).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from monitor.policy.diagnostics import Diagnostic, PolicyError
from monitor.policy.pooling import MIN_HALF_LIFE
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
    """A linear probe ``link(Σ w_i f_i + bias) > threshold`` over catalog features (inline) or
    over the feature indices of a weights file (module doc)."""

    features: list[Name] = Field(default_factory=list)
    weights: list[Threshold] = Field(default_factory=list)
    weights_file: str | None = Field(default=None, min_length=1)
    weights_sha256: Sha256 | None = None
    bias: Threshold = 0.0
    pooling: Literal["token", "mean", "ema"] = "token"
    half_life: float | None = Field(default=None, ge=MIN_HALF_LIFE, le=1_000_000)  # pooling ema
    link: Literal["logistic", "linear"] = "logistic"
    threshold: Threshold
    sae_sha256: Sha256
    description: str = ""

    # (indices, weights) read from ``weights_file`` by :func:`load_catalog`
    _file_inputs: tuple[tuple[int, ...], tuple[float, ...]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> ProbeSpec:
        if (self.pooling == "ema") != (self.half_life is not None):
            raise ValueError(
                "'half_life' (tokens) goes with 'pooling: ema', and only with it"
                if self.half_life is not None
                else "'pooling: ema' needs 'half_life' (tokens over which a token's weight halves)"
            )
        if self.weights_file is not None:
            if self.features or self.weights:
                raise ValueError(
                    "a probe lists 'features' and 'weights' inline or names a 'weights_file', "
                    "not both"
                )
            if self.weights_sha256 is None:
                raise ValueError("a probe with a 'weights_file' needs its 'weights_sha256'")
            return self
        if self.weights_sha256 is not None:
            raise ValueError("'weights_sha256' belongs with a 'weights_file'")
        if not self.features:
            raise ValueError("a probe needs 'features' and 'weights', or a 'weights_file'")
        if len(self.weights) != len(self.features):
            raise ValueError(
                f"a probe needs one weight per feature ({len(self.features)} "
                f"features, {len(self.weights)} weights)"
            )
        return self

    @property
    def is_file(self) -> bool:
        return self.weights_file is not None

    def file_inputs(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """``(indices, weights)`` of a weights-file probe (read by :func:`load_catalog`)."""
        if self._file_inputs is None:
            raise ValueError("this probe's weights file has not been read (load_catalog reads it)")
        return self._file_inputs

    def set_file_inputs(self, indices: tuple[int, ...], weights: tuple[float, ...]) -> None:
        self._file_inputs = (indices, weights)


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
        for j, fname in enumerate(() if p.is_file else p.features):
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
    for pname, probe in cat.probes.items():
        if probe.weights_file is not None:
            diags += _read_probe_file(probe, pname, p.parent, cat.sae.d_sae, src)
    if diags:
        raise PolicyError(diags)
    return cat


def probe_file_bytes(indices: Sequence[int], weights: Sequence[float]) -> bytes:
    """The safetensors bytes of a weights-file probe: ``indices`` int64, ``weights`` float32."""
    from safetensors.torch import save

    return save(
        {
            "indices": torch.tensor(list(indices), dtype=torch.int64),  # (K,)
            "weights": torch.tensor(list(weights), dtype=torch.float32),  # (K,)
        },
        metadata={"format": "featureguard-probe", "version": "1"},
    )


def read_probe_file(raw: bytes) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(indices, weights)`` from :func:`probe_file_bytes` output; ValueError when malformed."""
    from safetensors.torch import load

    try:
        t = load(raw)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"not a safetensors file ({exc})") from None
    if set(t) != {"indices", "weights"}:
        raise ValueError(f"expected tensors 'indices' and 'weights', found {sorted(t)}")
    idx, w = t["indices"], t["weights"]
    if idx.dim() != 1 or w.shape != idx.shape or idx.numel() == 0:
        raise ValueError(
            f"'indices' and 'weights' must be two non-empty vectors of one length "
            f"(got {tuple(idx.shape)} and {tuple(w.shape)})"
        )
    if idx.dtype != torch.int64 or not w.dtype.is_floating_point:
        raise ValueError(
            f"'indices' must be int64 and 'weights' float (got {idx.dtype}, {w.dtype})"
        )
    if bool((idx < 0).any()) or idx.unique().numel() != idx.numel():
        raise ValueError("'indices' must be distinct and non-negative")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("'weights' must be finite")
    return tuple(int(i) for i in idx.tolist()), tuple(float(v) for v in w.float().tolist())


def _read_probe_file(
    probe: ProbeSpec, pname: str, base: Path, d_sae: int | None, src: Source
) -> list[Diagnostic]:
    where = ("probes", pname, "weights_file")
    assert probe.weights_file is not None
    path = Path(probe.weights_file)
    path = path if path.is_absolute() else base / path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [src.diag("FG312", f"probe '{pname}': cannot read {path}: {exc.strerror}", where)]
    digest = hashlib.sha256(raw).hexdigest()
    if digest != probe.weights_sha256:
        return [
            src.diag(
                "FG311",
                f"probe '{pname}': {path} has sha256 {digest[:12]}…, but the catalog pins "
                f"{str(probe.weights_sha256)[:12]}… (the weights changed since it was written)",
                ("probes", pname, "weights_sha256"),
            )
        ]
    try:
        idx, w = read_probe_file(raw)
    except ValueError as exc:
        return [src.diag("FG312", f"probe '{pname}': {path}: {exc}", where)]
    if d_sae is not None and max(idx) >= d_sae:
        return [
            src.diag(
                "FG302",
                f"probe '{pname}': {path} uses feature index {max(idx)}, but the SAE has only "
                f"{d_sae} features",
                where,
            )
        ]
    probe.set_file_inputs(idx, w)
    return []


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
    for probe in data.get("probes", {}).values():
        if "weights_file" in probe:  # inputs live in the file
            probe.pop("features", None)
            probe.pop("weights", None)
    text = "# featureguard feature catalog (written by `featureguard features`)\n"
    text += yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
