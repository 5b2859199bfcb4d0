"""Synthetic policies for benchmarks and load tests (CONTRACTS: 20 rules over 50 features).

The policy is written as YAML and loaded through the normal loader, so a benchmark measures
exactly what a real policy compiles to. Rules mix every condition kind, windows, ``for``,
cooldowns, holds, feature and context exceptions and all non-terminal actions (no stop or
replace, so a benchmark's rows keep generating).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from monitor.policy.catalog import Catalog, CatalogFeature, CatalogSAE, ProbeSpec, save_catalog
from monitor.policy.compiled import CompiledPolicy
from monitor.policy.loader import load_policy_text
from monitor.policy.saes import static_resolver

SYNTH_SHA = "5" * 64


def _condition(rng: random.Random, n_features: int) -> str:
    def leaf() -> str:
        return f"{{feature: f{rng.randrange(n_features)}, above: {rng.uniform(0.5, 4):.2f}}}"

    kind = rng.choice(["leaf", "any", "all", "count", "not"])
    if kind == "leaf":
        return leaf()
    if kind == "count":
        return f"{{count: {{list: l{rng.randrange(4)}, above: 1.0, at_least: 2}}}}"
    if kind == "not":
        return f"{{all: [{leaf()}, {{not: {leaf()}}}]}}"
    return f"{{{kind}: [{', '.join(leaf() for _ in range(rng.randint(2, 3)))}]}}"


def synthetic_yaml(
    n_rules: int = 20,
    n_features: int = 50,
    n_probes: int = 0,
    seed: int = 0,
    d_sae: int = 9216,
    catalog: str | None = None,
) -> str:
    """Policy text with ``n_rules`` feature rules plus one rule per probe."""
    rng = random.Random(seed)
    idx = rng.sample(range(d_sae), n_features)
    lines = [
        "version: 1",
        "policy: {name: synthetic, revision: bench}",
        f'saes: {{main: {{bundled: synthetic, d_sae: {d_sae}, sha256: "{SYNTH_SHA}"}}}}',
    ]
    if catalog:
        lines.append(f'imports: [{{catalog: {catalog}, sae: main, prefix: "c."}}]')
    lines.append("features:")
    lines += [f"  f{i}: {{index: {idx[i]}, scale: 4.0}}" for i in range(n_features)]
    lines.append("lists:")
    lines += [
        f"  l{j}: [{', '.join(f'f{i}' for i in rng.sample(range(n_features), 5))}]"
        for j in range(4)
    ]
    lines += ['channels: {ops: {type: webhook, url: "http://127.0.0.1:9/"}}', "rules:"]
    for r in range(n_rules):
        extra = []
        if rng.random() < 0.3:
            extra.append(f"window: {{at_least: 2, of_last: {rng.randint(2, 16)}}}")
        if rng.random() < 0.3:
            extra.append(f"for: {rng.randint(1, 4)}")
        if rng.random() < 0.3:
            extra.append(f"cooldown: {rng.randint(0, 32)}, hold: {rng.randint(0, 4)}")
        if rng.random() < 0.2:
            extra.append(
                f"exceptions: [{{when: {{feature: f{rng.randrange(n_features)}, "
                "above: 3.0}}, {context: {tenant: [redteam]}}]"
            )
        action = rng.choice(
            [
                "{type: log}",
                "{type: alert, channel: ops}",
                f"{{type: ablate, features: [f{rng.randrange(n_features)}]}}",
                f"{{type: clamp, features: [f{rng.randrange(n_features)}], scale: 0.5}}",
            ]
        )
        lines.append(
            f"  - {{id: r{r}, severity: {rng.choice(['low', 'medium', 'high'])}, "
            f"mode: {rng.choice(['enforce'] * 3 + ['shadow'])}, "
            f"condition: {_condition(rng, n_features)}, "
            + "".join(e + ", " for e in extra)
            + f"actions: [{action}]}}"
        )
    for p in range(n_probes):
        lines.append(
            f"  - {{id: probe{p}, severity: high, condition: {{probe: c.p{p}}}, "
            "actions: [{type: log}]}"
        )
    return "\n".join(lines) + "\n"


def synthetic_catalog(
    n_probes: int, n_features: int = 50, seed: int = 0, d_sae: int = 9216
) -> Catalog:
    """Probes over 8 random features each, on the synthetic SAE."""
    rng = random.Random(seed + 1)
    idx = random.Random(seed).sample(range(d_sae), n_features)
    feats = [CatalogFeature(name=f"f{i}", index=idx[i], scale=4.0) for i in range(n_features)]
    probes = {}
    for p in range(n_probes):
        names = rng.sample([f.name for f in feats], 8)
        probes[f"p{p}"] = ProbeSpec(
            features=names,
            weights=[rng.gauss(0, 1) for _ in names],
            bias=-2.0,
            pooling=rng.choice(["token", "mean"]),
            threshold=0.9,
            sae_sha256=SYNTH_SHA,
        )
    return Catalog(
        sae=CatalogSAE(name="synthetic", sha256=SYNTH_SHA, d_sae=d_sae),
        features=feats,
        probes=probes,
    )


def synthetic_policy(
    n_rules: int = 20, n_features: int = 50, n_probes: int = 0, seed: int = 0, d_sae: int = 9216
) -> CompiledPolicy:
    """Compile a synthetic policy (probes go through a temporary catalog file)."""
    resolver = static_resolver({"main": d_sae}, sha256={"main": SYNTH_SHA})
    with tempfile.TemporaryDirectory() as tmp:
        catalog = None
        if n_probes:
            save_catalog(
                synthetic_catalog(n_probes, n_features, seed, d_sae), Path(tmp) / "cat.yaml"
            )
            catalog = "cat.yaml"
        text = synthetic_yaml(n_rules, n_features, n_probes, seed, d_sae, catalog)
        return load_policy_text(text, "<synthetic>", base_dir=tmp, resolver=resolver)
