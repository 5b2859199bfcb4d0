"""Meaning checks on a schema-valid policy, after its names are resolved.

Checks every name a rule uses (features, lists, macros and cycles among them, probes, channels,
payload variables), thresholds that cannot be meant (a negative activation, a probability above
1) and impossible counts and windows. Every problem is reported with its position; nothing
stops at the first.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from monitor.policy import schema as s
from monitor.policy.diagnostics import Diagnostic
from monitor.policy.payload import unknown_names
from monitor.policy.resolution import (
    Path_,
    Resolved,
    ResolvedFeature,
    Resolver,
    rule_roots,
    walk,
)
from monitor.policy.saes import SAEResolver
from monitor.policy.yaml_strict import Source

__all__ = ["Resolved", "resolve", "rule_roots", "walk"]


class _Checker(Resolver):
    def feature_name(self, name: str, path: Path_) -> ResolvedFeature | None:
        f = self.out.features.get(name)
        if f is None:
            near = difflib.get_close_matches(name, list(self.out.features), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            self.err(
                "FG301",
                f"unknown feature '{name}'{hint}: define it under 'features' or "
                "import a catalog that has it",
                path,
            )
        return f

    def names(self, feats: list[str] | None, lst: str | None, path: Path_) -> list[str]:
        if lst is not None:
            if lst not in self.spec.lists:
                self.err("FG304", f"unknown list '{lst}'", (*path, "list"))
                return []
            return self.spec.lists[lst]
        for j, n in enumerate(feats or []):
            self.feature_name(n, (*path, "features", j))
        return feats or []

    def threshold(
        self, above: float | None, frac: float | None, feats: list[str], path: Path_
    ) -> None:
        if above is not None and above < 0:
            self.err(
                "FG303",
                f"threshold {above} is below 0: feature activations are never "
                "negative, so this would match every token",
                (*path, "above"),
            )
        if frac is not None:
            if not 0 < frac <= 10:
                self.err(
                    "FG303",
                    f"above_scale {frac} is a fraction of the feature's scale; "
                    "use a value above 0 and at most 10",
                    (*path, "above_scale"),
                )
            for n in feats:
                f = self.out.features.get(n)
                if f is not None and f.scale is None:
                    self.err(
                        "FG314",
                        f"above_scale needs a recorded scale, and feature '{n}' "
                        "has none: give it 'scale:' or use 'above:'",
                        (*path, "above_scale"),
                    )

    def condition(self, cond: Any, path: Path_) -> None:
        for node, p in walk(cond, path):
            if isinstance(node, s.FeatureCond):
                if self.feature_name(node.feature, (*p, "feature")) is not None:
                    self.threshold(node.above, node.above_scale, [node.feature], p)
            elif isinstance(node, s.CountCond):
                c, cp = node.count, (*p, "count")
                feats = self.names(c.features, c.list_, cp)
                self.threshold(c.above, c.above_scale, feats, cp)
                if feats and c.at_least > len(feats):
                    self.err(
                        "FG318",
                        f"count asks for at least {c.at_least} features but only "
                        f"has {len(feats)}, so it can never be true",
                        (*cp, "at_least"),
                    )
            elif isinstance(node, s.ProbeCond):
                probe = self.out.probes.get(node.probe)
                if probe is None:
                    self.err(
                        "FG313",
                        f"unknown probe '{node.probe}': probes come from imported catalogs",
                        (*p, "probe"),
                    )
                elif (
                    node.above is not None
                    and probe.spec.link == "logistic"
                    and not 0 < node.above < 1
                ):
                    self.err(
                        "FG303",
                        f"probe '{node.probe}' gives a probability, so 'above' "
                        "must be between 0 and 1",
                        (*p, "above"),
                    )
            elif isinstance(node, s.MacroCond) and node.macro not in self.spec.macros:
                self.err("FG305", f"unknown macro '{node.macro}'", (*p, "macro"))

    def lists_and_macros(self) -> None:
        for lname, items in self.spec.lists.items():
            for j, n in enumerate(items):
                self.feature_name(n, ("lists", lname, j))
        graph = {
            m: [n.macro for n, _ in walk(c, ()) if isinstance(n, s.MacroCond)]
            for m, c in self.spec.macros.items()
        }
        for mname, cond in self.spec.macros.items():
            self.condition(cond, ("macros", mname))
            cycle = _cycle_from(mname, graph)
            if cycle is not None:
                self.err(
                    "FG306",
                    "macros refer to each other in a cycle: " + " → ".join(cycle),
                    ("macros", mname),
                    key=True,
                )

    def rules(self) -> None:
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.spec.rules):
            path = ("rules", i)
            if rule.id in seen:
                self.err(
                    "FG307",
                    f"rule id '{rule.id}' is used twice (first by rule #{seen[rule.id] + 1})",
                    (*path, "id"),
                )
            seen.setdefault(rule.id, i)
            for cond, cpath in rule_roots(rule, path):
                self.condition(cond, cpath)
            if rule.window and rule.window.at_least > rule.window.of_last:
                self.err(
                    "FG319",
                    f"window needs {rule.window.at_least} tokens out of the last "
                    f"{rule.window.of_last}, which can never happen",
                    (*path, "window", "at_least"),
                )
            if not rule.enabled:
                self.warn("FG402", f"rule '{rule.id}' is disabled", (*path, "enabled"))
            for j, act in enumerate(rule.actions):
                self.action(act, (*path, "actions", j))
        if not any(r.enabled for r in self.spec.rules):
            self.warn("FG403", "the policy has no enabled rules, so it never fires", ())

    def action(self, act: Any, path: Path_) -> None:
        if isinstance(act, s.AlertAction):
            if act.channel not in self.spec.channels:
                self.err(
                    "FG308",
                    f"alert to channel '{act.channel}', which 'channels' does not define",
                    (*path, "channel"),
                )
            for name in unknown_names(act.payload):
                self.err(
                    "FG316",
                    f"payload uses '${name}', which is not a known variable "
                    "(see the policy reference for the list)",
                    (*path, "payload"),
                )
        elif isinstance(act, s.AblateAction | s.ClampAction):
            feats = self.names(act.features, act.list_, path)
            if isinstance(act, s.ClampAction) and act.scale is not None:
                for n in feats:
                    f = self.out.features.get(n)
                    if f is not None and f.scale is None:
                        self.err(
                            "FG314",
                            f"clamp by scale needs a recorded scale, and feature '{n}' has none",
                            (*path, "scale"),
                        )

    def audit(self) -> None:
        for j, pattern in enumerate(self.spec.audit.redact):
            try:
                re.compile(pattern)
            except re.error as exc:
                self.err(
                    "FG315",
                    f"redact pattern is not a valid regular expression: {exc}",
                    ("audit", "redact", j),
                )


def _cycle_from(start: str, graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle through ``start`` in the macro graph, as names, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, trail = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                return [*trail, start]
            if nxt not in seen and nxt in graph:
                seen.add(nxt)
                stack.append((nxt, [*trail, nxt]))
    return None


def resolve(
    spec: s.PolicySpec,
    src: Source,
    base: Path,
    resolver: SAEResolver,
    *,
    allow_missing_sae: bool = False,
) -> tuple[Resolved, list[Diagnostic]]:
    """Resolve names and check meaning; returns the resolution and every diagnostic."""
    ch = _Checker(spec, src, base, resolver, allow_missing_sae)
    ch.saes()
    ch.imports()
    ch.features()
    ch.lists_and_macros()
    ch.rules()
    ch.audit()
    return ch.out, ch.diags
