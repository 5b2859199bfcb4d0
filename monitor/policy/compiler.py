"""Compile a resolved policy once into tensors the evaluator only indexes.

Conditions become a *threshold circuit*: every leaf is a literal ``value > threshold`` (a feature
or a probe score), every inner node a gate ``Σ w·child ≥ theta`` (any: θ=1, all: θ=n, count:
θ=N, not: w=-1, θ=0). Identical sub-trees (a macro used by ten rules) are built once, and gates
are grouped by depth so a step evaluates the whole policy with one gather per level, however
many rules there are. All probes fold into one ``(K, P)`` matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from monitor.policy import schema as s
from monitor.policy.compiled import (
    ACTIONS_ORDER,
    CompiledPolicy,
    CompiledProbe,
    CompiledRule,
    CompiledSAE,
    ContextException,
    PolicyTensors,
)
from monitor.policy.pooling import log_decay
from monitor.policy.semantics import Resolved

FALSE: tuple[Any, ...] = ("const", 0)
TRUE: tuple[Any, ...] = ("const", 1)


def _gate(children: Iterable[tuple[Any, float]], theta: float) -> tuple[Any, ...]:
    return ("gate", tuple(sorted(children, key=repr)), float(theta))


class _Builder:
    """Turns condition trees into hash-consed node keys (equal sub-trees → one node)."""

    def __init__(self, res: Resolved) -> None:
        self.res = res
        self.used: dict[str, None] = {}  # feature names read, in first-use order
        self.current: dict[str, None] = {}  # ... by the rule being built
        self.probes: dict[str, None] = {}
        self.current_probes: dict[str, None] = {}  # probes read by the rule being built

    def use(self, name: str) -> None:
        self.used.setdefault(name)
        self.current.setdefault(name)

    def literal(self, name: str, above: float | None, frac: float | None) -> tuple[Any, ...]:
        self.use(name)
        if above is None:
            scale = self.res.features[name].scale
            assert frac is not None and scale is not None
            above = frac * scale
        return ("lit", "f", name, float(above))

    def names(self, feats: list[str] | None, lst: str | None) -> list[str]:
        return list(self.res.spec.lists[lst]) if lst is not None else list(feats or [])

    def build(self, cond: Any) -> tuple[Any, ...]:
        if isinstance(cond, s.FeatureCond):
            return self.literal(cond.feature, cond.above, cond.above_scale)
        if isinstance(cond, s.CountCond):
            c = cond.count
            kids = [
                (self.literal(n, c.above, c.above_scale), 1.0)
                for n in self.names(c.features, c.list_)
            ]
            return _gate(kids, c.at_least)
        if isinstance(cond, s.AnyCond | s.AllCond):
            items = cond.any if isinstance(cond, s.AnyCond) else cond.all
            kids = list(dict.fromkeys(self.build(c) for c in items))
            if len(kids) == 1:
                return kids[0]
            return _gate([(k, 1.0) for k in kids], 1 if isinstance(cond, s.AnyCond) else len(kids))
        if isinstance(cond, s.NotCond):
            inner = self.build(cond.not_)
            if inner[0] == "gate" and len(inner[1]) == 1 and inner[1][0][1] == -1.0:
                return inner[1][0][0]  # not(not(x)) = x
            return _gate([(inner, -1.0)], 0.0)
        if isinstance(cond, s.ProbeCond):
            probe = self.res.probes[cond.probe]
            for f in probe.features:  # read, but reported through the probe (audit: top inputs)
                self.used.setdefault(f)
            self.probes.setdefault(cond.probe)
            self.current_probes.setdefault(cond.probe)
            thr = probe.spec.threshold if cond.above is None else cond.above
            if probe.spec.link == "logistic":  # compare logits: no sigmoid per token
                thr = math.log(thr / (1.0 - thr))
            return ("lit", "p", cond.probe, float(thr))
        if isinstance(cond, s.MacroCond):
            return self.build(self.res.spec.macros[cond.macro])
        raise TypeError(f"unknown condition {cond!r}")  # pragma: no cover


def _level(key: tuple[Any, ...], memo: dict[tuple[Any, ...], int]) -> int:
    if key[0] != "gate":
        return 0
    if key not in memo:
        memo[key] = 1 + max(_level(k, memo) for k, _ in key[1])
    return memo[key]


def _circuit(
    roots: list[tuple[Any, ...]], col: dict[str, int], probe_col: dict[str, int], K: int
) -> tuple[list[int], dict[str, Any]]:
    """Number the nodes reachable from ``roots``; returns root indices and circuit tensors."""
    memo: dict[tuple[Any, ...], int] = {}
    nodes: dict[tuple[Any, ...], None] = {}

    def visit(key: tuple[Any, ...]) -> None:
        if key in nodes:
            return
        if key[0] == "gate":
            for k, _ in key[1]:
                visit(k)
        nodes[key] = None

    for r in roots:
        visit(r)
    lits = [k for k in nodes if k[0] == "lit"]
    index: dict[tuple[Any, ...], int] = {FALSE: 0, TRUE: 1}
    for i, k in enumerate(lits):
        index[k] = 2 + i
    gates = sorted((k for k in nodes if k[0] == "gate"), key=lambda k: _level(k, memo))
    levels = []
    for lvl in sorted({_level(k, memo) for k in gates}):
        group = [k for k in gates if _level(k, memo) == lvl]
        width = max(len(k[1]) for k in group)
        idx = torch.zeros(len(group), width, dtype=torch.long)  # pad → node 0 (false), w 0
        w = torch.zeros(len(group), width)
        for g, key in enumerate(group):
            for c, (child, weight) in enumerate(key[1]):
                idx[g, c], w[g, c] = index[child], weight
        base = len(index)
        for g, key in enumerate(group):
            index[key] = base + g
        levels.append((idx, w, torch.tensor([k[2] for k in group])))
    src = [col[k[2]] if k[1] == "f" else K + probe_col[k[2]] for k in lits]
    return [index[r] for r in roots], {
        "lit_src": torch.tensor(src, dtype=torch.long),
        "lit_thr": torch.tensor([k[3] for k in lits], dtype=torch.float32),
        "levels": tuple(levels),
    }


def _columns(res: Resolved, used: Iterable[str]) -> tuple[tuple[CompiledSAE, ...], dict[str, int]]:
    """Group the used features by SAE (declaration order), indices ascending; one column per
    distinct (SAE, index)."""
    saes, col, offset = [], {}, 0
    for sname, spec in res.spec.saes.items():
        names = [n for n in used if res.features[n].sae == sname]
        indices = sorted({res.features[n].index for n in names})
        pos = {idx: j for j, idx in enumerate(indices)}
        for n in names:
            col[n] = offset + pos[res.features[n].index]
        info = res.saes.get(sname)
        path = str(info.path) if info is not None and info.path is not None else spec.path
        saes.append(
            CompiledSAE(
                sname,
                spec.bundled,
                path,
                spec.hook or (info.hook if info else None),
                spec.d_sae or (info.d_sae if info else None),
                spec.sha256 or (info.sha256 if info else None),
                tuple(indices),
                offset,
            )
        )
        offset += len(indices)
    return tuple(saes), col


def compile_policy(res: Resolved, *, sha256: str) -> CompiledPolicy:
    """Compile a checked policy; ``sha256`` identifies the source (file + catalogs)."""
    spec, b = res.spec, _Builder(res)
    rules = [r for r in spec.rules if r.enabled]
    cond_keys, exc_keys, exc_rules, ctx = [], [], [], []
    rule_feats: list[tuple[str, ...]] = []
    rule_probes: list[tuple[str, ...]] = []
    for i, rule in enumerate(rules):
        b.current, b.current_probes = {}, {}
        cond_keys.append(b.build(rule.condition))
        for exc in rule.exceptions:
            exc_keys.append(TRUE if exc.when is None else b.build(exc.when))
            exc_rules.append(i)
            ctx.append(
                None
                if exc.context is None
                else {k: (v,) if isinstance(v, str) else tuple(v) for k, v in exc.context.items()}
            )
        rule_feats.append(tuple(b.current))
        rule_probes.append(tuple(b.current_probes))
        for act in rule.actions:
            if isinstance(act, s.AblateAction | s.ClampAction):
                for n in b.names(act.features, act.list_):
                    b.used.setdefault(n)
    for name, f in res.features.items():
        if f.export:
            b.used.setdefault(name)
    saes, col = _columns(res, b.used)
    K = sum(len(x.indices) for x in saes)
    probe_names = list(b.probes)
    probe_col = {n: p for p, n in enumerate(probe_names)}
    roots, circuit = _circuit(cond_keys + exc_keys, col, probe_col, K)
    tensors = _rule_tensors(res, rules, col, K, probe_names, roots, exc_rules, circuit)
    names = [""] * K  # a column's name: the first name read there, named features first
    scales: list[float | None] = [None] * K  # the first scale any name of the column declares
    for n, c in col.items():
        if not names[c] or (res.features[names[c]].input_only and not res.features[n].input_only):
            names[c] = n
        if scales[c] is None:
            scales[c] = res.features[n].scale
    blocking = any(
        r.mode == "enforce" and {a.type for a in r.actions} & {"stop", "replace"} for r in rules
    )
    return CompiledPolicy(
        name=spec.policy.name,
        revision=spec.policy.revision,
        file=res.file,
        sha256=sha256,
        on_error=spec.on_error or ("fail_closed" if blocking else "fail_open"),
        saes=saes,
        feature_names=tuple(names),
        feature_columns=dict(col),
        feature_scale=tuple(scales),
        input_only=tuple(res.features[n].input_only for n in names),
        data_files=tuple(str(f) for f in res.data_files),
        export_columns=tuple(sorted({col[n] for n, f in res.features.items() if f.export})),
        rules=tuple(
            CompiledRule(r.id, i, r, s.SEVERITY_LEVEL[r.severity], rule_feats[i], rule_probes[i])
            for i, r in enumerate(rules)
        ),
        disabled_rules=tuple(r.id for r in spec.rules if not r.enabled),
        probes=tuple(_probe(res, n, p) for p, n in enumerate(probe_names)),
        exceptions=tuple(ContextException(x, exc_rules[x], c) for x, c in enumerate(ctx)),
        tensors=tensors,
        spec=spec,
    )


def _probe(res: Resolved, name: str, p: int) -> CompiledProbe:
    pr = res.probes[name]
    return CompiledProbe(
        name,
        p,
        pr.sae,
        pr.features,
        pr.weights,
        pr.spec.bias,
        pr.spec.pooling,
        pr.spec.link,
        pr.spec.threshold,
        pr.spec.description,
        pr.spec.half_life,
    )


def _rule_tensors(
    res: Resolved,
    rules: list[s.Rule],
    col: dict[str, int],
    K: int,
    probe_names: list[str],
    roots: list[int],
    exc_rules: list[int],
    circuit: dict[str, Any],
) -> PolicyTensors:
    R = len(rules)

    def longs(values: Iterable[int]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.long)

    ab_rule, ab_col, cl_rule, cl_col, cl_val = [], [], [], [], []
    for i, rule in enumerate(rules):
        for act in rule.actions:
            if isinstance(act, s.AblateAction | s.ClampAction):
                names = list(res.spec.lists[act.list_]) if act.list_ else list(act.features or [])
                for n in dict.fromkeys(names):
                    if isinstance(act, s.AblateAction):
                        ab_rule.append(i)
                        ab_col.append(col[n])
                    else:
                        scale = res.features[n].scale or 0.0
                        cap = act.value if act.value is not None else (act.scale or 0.0) * scale
                        cl_rule.append(i)
                        cl_col.append(col[n])
                        cl_val.append(cap)
    probe_w = torch.zeros(K, len(probe_names))
    for p, name in enumerate(probe_names):
        pr = res.probes[name]
        for f, w in zip(pr.features, pr.weights, strict=True):
            probe_w[col[f], p] += w
    windows = [r.window or s.Window(at_least=1, of_last=1) for r in rules]
    return PolicyTensors(
        **circuit,
        rule_cond=longs(roots[:R]),
        exc_node=longs(roots[R:]),
        exc_rule=longs(exc_rules),
        at_least=longs(w.at_least for w in windows),
        of_last=longs(w.of_last for w in windows),
        for_=longs(r.for_ for r in rules),
        cooldown=longs(r.cooldown for r in rules),
        hold=longs(r.hold for r in rules),
        in_prompt=torch.tensor([r.scope != "completion" for r in rules], dtype=torch.bool),
        in_completion=torch.tensor([r.scope != "prompt" for r in rules], dtype=torch.bool),
        enforce=torch.tensor([r.mode == "enforce" for r in rules], dtype=torch.bool),
        severity=longs(s.SEVERITY_LEVEL[r.severity] for r in rules),
        has_action=torch.tensor(
            [[any(a.type == k for a in r.actions) for k in ACTIONS_ORDER] for r in rules],
            dtype=torch.bool,
        ).reshape(R, len(ACTIONS_ORDER)),
        ablate_rule=longs(ab_rule),
        ablate_col=longs(ab_col),
        clamp_rule=longs(cl_rule),
        clamp_col=longs(cl_col),
        clamp_val=torch.tensor(cl_val, dtype=torch.float32),
        probe_w=probe_w,
        probe_b=torch.tensor([res.probes[n].spec.bias for n in probe_names], dtype=torch.float32),
        probe_pooled=torch.tensor(
            [res.probes[n].spec.pooling != "token" for n in probe_names], dtype=torch.bool
        ),
        probe_log_decay=torch.tensor(
            [
                log_decay(res.probes[n].spec.pooling, res.probes[n].spec.half_life)
                for n in probe_names
            ],
            dtype=torch.float64,
        ),
        max_window=max([w.of_last for w in windows], default=1),
    )
