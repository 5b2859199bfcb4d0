"""Name resolution for a schema-valid policy: SAEs, imported catalogs, features, probes.

:class:`Resolver` finds each SAE's width, hook and fingerprint through the injected resolver,
loads catalogs (checking their SAE pin), and builds the table of every feature and probe name
the policy can use. :mod:`monitor.policy.semantics` builds on it to check the rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.policy import schema as s
from monitor.policy.catalog import Catalog, ProbeSpec, load_catalog
from monitor.policy.diagnostics import Diagnostic, PolicyError
from monitor.policy.saes import SAEInfo, SAEResolver
from monitor.policy.yaml_strict import Source

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class ResolvedFeature:
    name: str
    sae: str
    index: int
    scale: float | None
    export: bool
    description: str
    input_only: bool = False  # an unnamed input of a weights-file probe (``probe[index]``)


@dataclass(frozen=True)
class ResolvedProbe:
    name: str
    sae: str
    spec: ProbeSpec
    features: tuple[str, ...]  # resolved (prefixed) feature names
    weights: tuple[float, ...]  # one per feature (inline, or read from the weights file)


@dataclass
class Resolved:
    """A schema-valid policy with every name resolved; input to the compiler."""

    spec: s.PolicySpec
    file: str
    saes: dict[str, SAEInfo | None] = field(default_factory=dict)
    features: dict[str, ResolvedFeature] = field(default_factory=dict)
    probes: dict[str, ResolvedProbe] = field(default_factory=dict)
    import_bytes: list[bytes] = field(default_factory=list)
    data_files: list[Path] = field(default_factory=list)  # weights files the catalogs pin


def walk(cond: Any, path: Path_) -> Iterator[tuple[Any, Path_]]:
    """Every node of a condition tree with its path, parents first (macros not expanded)."""
    yield cond, path
    if isinstance(cond, s.AnyCond | s.AllCond):
        items = cond.any if isinstance(cond, s.AnyCond) else cond.all
        key = "any" if isinstance(cond, s.AnyCond) else "all"
        for i, c in enumerate(items):
            yield from walk(c, (*path, key, i))
    elif isinstance(cond, s.NotCond):
        yield from walk(cond.not_, (*path, "not"))


def rule_roots(rule: s.Rule, path: Path_) -> Iterator[tuple[Any, Path_]]:
    """The rule's condition and its exceptions' ``when`` conditions, with their paths."""
    yield rule.condition, (*path, "condition")
    for j, exc in enumerate(rule.exceptions):
        if exc.when is not None:
            yield exc.when, (*path, "exceptions", j, "when")


class Resolver:
    """Collects diagnostics while resolving names; ``out`` is the resolution."""

    def __init__(
        self,
        spec: s.PolicySpec,
        src: Source,
        base: Path,
        resolver: SAEResolver,
        allow_missing: bool,
    ) -> None:
        self.spec, self.src, self.base = spec, src, base
        self.resolver, self.allow_missing = resolver, allow_missing
        self.out = Resolved(spec=spec, file=src.file)
        self.diags: list[Diagnostic] = []

    def err(self, code: str, msg: str, path: Path_, *, key: bool = False) -> None:
        self.diags.append(self.src.diag(code, msg, path, key=key))

    def warn(self, code: str, msg: str, path: Path_) -> None:
        d = self.src.diag(code, msg, path)
        self.diags.append(Diagnostic(d.code, d.message, d.file, d.line, d.col, "warning"))

    def d_sae(self, sae: str) -> int | None:
        info = self.out.saes.get(sae)
        return info.d_sae if info is not None else self.spec.saes[sae].d_sae

    def saes(self) -> None:
        for name, spec in self.spec.saes.items():
            info = self.resolver(name, spec, self.base)
            where = spec.path or f"bundled:{spec.bundled}"
            if info is None:
                msg = (
                    f"SAE '{name}' not found ({where}); width, hook and catalog pins are "
                    "not checked"
                )
                if self.allow_missing:
                    self.warn("FG401", msg, ("saes", name))
                else:
                    self.err(
                        "FG310",
                        msg + " (use --allow-missing-sae to check the rest)",
                        ("saes", name),
                    )
            for fld in ("d_sae", "hook", "sha256"):
                want, got = getattr(spec, fld), getattr(info, fld, None)
                if want is not None and got is not None and want != got:
                    self.err(
                        "FG320",
                        f"SAE '{name}' declares {fld} {want}, but the SAE on disk has {got}",
                        ("saes", name, fld),
                    )
            self.out.saes[name] = info

    def add_feature(self, f: ResolvedFeature, path: Path_, index_path: Path_) -> None:
        if f.name in self.out.features:
            self.err(
                "FG317",
                f"feature '{f.name}' is defined twice (a local feature and an "
                "imported one, or two imports)",
                path,
                key=True,
            )
            return
        width = self.d_sae(f.sae)
        if width is not None and f.index >= width:
            self.err(
                "FG302",
                f"feature '{f.name}' has index {f.index}, but SAE '{f.sae}' has "
                f"only {width} features (indices 0 to {width - 1})",
                index_path,
            )
        self.out.features[f.name] = f

    def imports(self) -> None:
        for i, imp in enumerate(self.spec.imports):
            path = ("imports", i)
            if imp.sae not in self.spec.saes:
                self.err(
                    "FG309",
                    f"import names SAE '{imp.sae}', which 'saes' does not define",
                    (*path, "sae"),
                )
                continue
            cat_path = (
                Path(imp.catalog) if Path(imp.catalog).is_absolute() else self.base / imp.catalog
            )
            try:
                cat = load_catalog(cat_path)
                self.out.import_bytes.append(cat_path.read_bytes())
            except PolicyError as exc:
                self.err(
                    "FG312",
                    f"catalog '{imp.catalog}' cannot be loaded "
                    f"({len(exc.errors)} problem(s) listed below)",
                    (*path, "catalog"),
                )
                self.diags.extend(exc.diagnostics)
                continue
            info, declared = self.out.saes.get(imp.sae), self.spec.saes[imp.sae].sha256
            pin = info.sha256 if info is not None and info.sha256 else declared
            if pin is None:
                self.warn(
                    "FG401",
                    f"catalog '{imp.catalog}' is pinned to SAE {cat.sae.sha256[:12]}"
                    f"…, which cannot be checked: SAE '{imp.sae}' is not available",
                    (*path, "catalog"),
                )
            elif pin != cat.sae.sha256:
                self.err(
                    "FG311",
                    f"catalog '{imp.catalog}' was made for another SAE (sha256 "
                    f"{cat.sae.sha256[:12]}…), not '{imp.sae}' ({pin[:12]}…)",
                    (*path, "catalog"),
                )
            for f in cat.features:
                self.add_feature(
                    ResolvedFeature(
                        imp.prefix + f.name, imp.sae, f.index, f.scale, False, f.description
                    ),
                    (*path, "catalog"),
                    (*path, "catalog"),
                )
            for pname, probe in cat.probes.items():
                if imp.prefix + pname in self.out.probes:
                    self.err(
                        "FG317",
                        f"probe '{imp.prefix + pname}' is defined by two imports; give one "
                        "of them a 'prefix'",
                        (*path, "catalog"),
                    )
                    continue
                if probe.is_file:
                    names, weights = self.file_probe_inputs(imp, cat, pname, probe, path)
                    wf = Path(str(probe.weights_file))
                    self.out.data_files.append(wf if wf.is_absolute() else cat_path.parent / wf)
                else:
                    names = tuple(imp.prefix + n for n in probe.features)
                    weights = tuple(probe.weights)
                self.out.probes[imp.prefix + pname] = ResolvedProbe(
                    imp.prefix + pname, imp.sae, probe, names, weights
                )

    def file_probe_inputs(
        self, imp: s.ImportSpec, cat: Catalog, pname: str, probe: ProbeSpec, path: Path_
    ) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """Names for a weights-file probe's inputs: the catalog's name for an index it lists,
        else an input-only feature ``<probe>[<index>]`` added to the table."""
        indices, weights = probe.file_inputs()
        by_index = {f.index: imp.prefix + f.name for f in cat.features}
        names = []
        desc = f"input of probe '{imp.prefix}{pname}'"
        for idx in indices:
            name = by_index.get(idx, f"{imp.prefix}{pname}[{idx}]")
            have = self.out.features.get(name)
            if have is None:
                self.out.features[name] = ResolvedFeature(
                    name, imp.sae, idx, None, False, desc, input_only=True
                )
            elif (have.sae, have.index) != (imp.sae, idx):
                self.err(
                    "FG317",
                    f"probe '{imp.prefix}{pname}' reads feature '{name}' (SAE '{imp.sae}', "
                    f"index {idx}), but that name is already SAE '{have.sae}', index "
                    f"{have.index}; import the catalog with a 'prefix'",
                    (*path, "catalog"),
                )
            names.append(name)
        return tuple(names), weights

    def features(self) -> None:
        for name, f in self.spec.features.items():
            path = ("features", name)
            sae = f.sae
            if sae is None:
                if len(self.spec.saes) != 1:
                    self.err(
                        "FG309",
                        f"feature '{name}' must say which SAE it belongs to "
                        "('sae:'), since the policy has several",
                        path,
                        key=True,
                    )
                    continue
                sae = next(iter(self.spec.saes))
            elif sae not in self.spec.saes:
                self.err(
                    "FG309",
                    f"feature '{name}' names SAE '{sae}', which 'saes' does not define",
                    (*path, "sae"),
                )
                continue
            self.add_feature(
                ResolvedFeature(name, sae, f.index, f.scale, f.export, f.description),
                path,
                (*path, "index"),
            )
