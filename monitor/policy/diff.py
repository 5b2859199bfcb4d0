"""A semantic diff of two policies (``featureguard policy diff OLD NEW``), Falco-style.

Each change is classified by what it does in production: a rule that will **match more** (a
lower threshold, a wider window, a removed exception, a rule added or enabled) or **match
less**, **severity** raised or lowered, **enforcement** (shadow → enforce), **actions** and
other changes. Thresholds are compared in absolute units (``above_scale`` × the feature's scale)
and with their polarity: lowering a threshold under ``not`` matches less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.policy import schema as s
from monitor.policy.compiled import CompiledPolicy

MORE, LESS = "matches more", "matches less"


@dataclass(frozen=True)
class Change:
    rule: str | None  # None: a policy-wide change
    kind: str  # matches more | matches less | severity raised | ... | changed
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


def _scale(p: CompiledPolicy, name: str) -> float | None:
    col = p.feature_columns.get(name)
    return p.feature_scale[col] if col is not None else None


def _thr(p: CompiledPolicy, names: list[str], above: float | None, frac: float | None) -> float:
    if above is not None:
        return above
    scale = _scale(p, names[0]) if names else None
    return (frac or 0.0) * scale if scale is not None else frac or 0.0


def shape(
    p: CompiledPolicy, cond: Any, pol: int, leaves: list[tuple[str, str, Any, int]]
) -> tuple[Any, ...]:
    """The tree without its numbers (macros and lists expanded); numbers go to ``leaves`` as
    (label, kind, value, polarity)."""
    if isinstance(cond, s.FeatureCond):
        leaves.append(
            (cond.feature, "threshold", _thr(p, [cond.feature], cond.above, cond.above_scale), pol)
        )
        return ("feature", cond.feature)
    if isinstance(cond, s.CountCond):
        c = cond.count
        names = list(p.spec.lists[c.list_]) if c.list_ else list(c.features or [])
        leaves.append(("count", "members", frozenset(names), pol))
        leaves.append(("count", "threshold", _thr(p, names, c.above, c.above_scale), pol))
        leaves.append(("count", "at_least", c.at_least, pol))
        return ("count",)
    if isinstance(cond, s.AnyCond | s.AllCond):
        items = cond.any if isinstance(cond, s.AnyCond) else cond.all
        if len(items) == 1:  # any/all of one condition is that condition
            return shape(p, items[0], pol, leaves)
        return (type(cond).__name__, *(shape(p, c, pol, leaves) for c in items))
    if isinstance(cond, s.NotCond):
        return ("not", shape(p, cond.not_, -pol, leaves))
    if isinstance(cond, s.ProbeCond):
        probe = next((x for x in p.probes if x.name == cond.probe), None)
        thr = cond.above if cond.above is not None else (probe.threshold if probe else None)
        leaves.append((f"probe {cond.probe}", "threshold", thr, pol))
        return ("probe", cond.probe)
    if isinstance(cond, s.MacroCond):
        return shape(p, p.spec.macros[cond.macro], pol, leaves)
    return ("?",)  # pragma: no cover


def _cmp(label: str, old: Any, new: Any, more_if_lower: bool) -> Change | None:
    if old == new or old is None or new is None:
        return None
    lower = new < old
    kind = MORE if lower == more_if_lower else LESS
    verb = "lowered" if lower else "raised"
    return Change(None, kind, f"{label} {verb} {old:g} → {new:g}")


def condition_changes(
    po: CompiledPolicy, pn: CompiledPolicy, co: Any, cn: Any, what: str
) -> list[Change]:
    lo: list[tuple[str, str, Any, int]] = []
    ln: list[tuple[str, str, Any, int]] = []
    if shape(po, co, 1, lo) != shape(pn, cn, 1, ln):
        return [
            Change(
                None,
                "changed",
                f"{what} restructured; cannot tell whether it matches "
                "more or less (see `policy explain`)",
            )
        ]
    out: list[Change] = []
    for (label, kind, old, pol), (_, _, new, _) in zip(lo, ln, strict=True):
        if kind == "members" and old != new:
            added, gone = sorted(new - old), sorted(old - new)
            k = "changed" if added and gone else MORE if added else LESS
            if pol < 0 and k != "changed":
                k = LESS if k == MORE else MORE
            out.append(Change(None, k, f"{what}: count features +{added} -{gone}"))
        elif kind in ("threshold", "at_least"):
            c = _cmp(f"{what}: {kind.replace('_', ' ')} of {label}", old, new, pol > 0)
            if c:
                out.append(c)
    return out


def rule_changes(po: CompiledPolicy, pn: CompiledPolicy, ro: s.Rule, rn: s.Rule) -> list[Change]:
    out: list[Change] = []
    if ro.enabled != rn.enabled:
        out.append(
            Change(None, MORE if rn.enabled else LESS, "enabled" if rn.enabled else "disabled")
        )
    if ro.mode != rn.mode:
        out.append(
            Change(
                None,
                "enforcement",
                f"mode {ro.mode} → {rn.mode}"
                + (" (now acts)" if rn.mode == "enforce" else " (no longer acts)"),
            )
        )
    lvl = s.SEVERITY_LEVEL
    if ro.severity != rn.severity:
        up = lvl[rn.severity] > lvl[ro.severity]
        out.append(
            Change(
                None,
                "severity raised" if up else "severity lowered",
                f"severity {ro.severity} → {rn.severity}",
            )
        )
    if ro.scope != rn.scope:
        kind = MORE if rn.scope == "both" else LESS if ro.scope == "both" else "changed"
        out.append(Change(None, kind, f"scope {ro.scope} → {rn.scope}"))
    out += condition_changes(po, pn, ro.condition, rn.condition, "condition")
    wo, wn = (
        ro.window or s.Window(at_least=1, of_last=1),
        rn.window or s.Window(at_least=1, of_last=1),
    )
    for c in (
        _cmp("window at_least", wo.at_least, wn.at_least, True),
        _cmp("window of_last", wo.of_last, wn.of_last, False),
        _cmp("for", ro.for_, rn.for_, True),
        _cmp("cooldown", ro.cooldown, rn.cooldown, True),
    ):
        if c:
            out.append(c)
    if ro.hold != rn.hold:
        out.append(Change(None, "changed", f"hold {ro.hold} → {rn.hold} tokens"))
    eo = [e.model_dump(by_alias=True) for e in ro.exceptions]
    en = [e.model_dump(by_alias=True) for e in rn.exceptions]
    if eo != en:
        added = [e for e in en if e not in eo]
        gone = [e for e in eo if e not in en]
        kind = LESS if added and not gone else MORE if gone and not added else "changed"
        out.append(
            Change(None, kind, f"exceptions changed: {len(added)} added, {len(gone)} removed")
        )
    ao = [a.model_dump(by_alias=True) for a in ro.actions]
    an = [a.model_dump(by_alias=True) for a in rn.actions]
    if ao != an:
        ko, kn = {a["type"] for a in ao}, {a["type"] for a in an}
        detail = f"+{sorted(kn - ko)} -{sorted(ko - kn)}" if ko != kn else "arguments changed"
        out.append(Change(None, "actions", f"actions {detail}"))
    if ro.labels != rn.labels or ro.annotations != rn.annotations:
        out.append(Change(None, "changed", "labels or annotations changed"))
    return [Change(rn.id, c.kind, c.message) for c in out]


def policy_diff(po: CompiledPolicy, pn: CompiledPolicy) -> list[Change]:
    """Every semantic change from ``po`` to ``pn``; rules matched by id."""
    old = {r.id: r for r in po.spec.rules}
    new = {r.id: r for r in pn.spec.rules}
    out: list[Change] = []
    for rid, r in new.items():
        if rid not in old:
            state = "" if r.enabled else " (disabled)"
            out.append(
                Change(
                    rid,
                    MORE if r.enabled else "changed",
                    f"rule added{state}: {r.severity}, {r.mode}, actions "
                    f"{[a.type for a in r.actions]}",
                )
            )
        else:
            out += rule_changes(po, pn, old[rid], r)
    out += [Change(rid, LESS, "rule removed") for rid in old if rid not in new]
    so, sn = po.spec, pn.spec
    if po.on_error != pn.on_error:
        out.append(Change(None, "changed", f"on_error {po.on_error} → {pn.on_error}"))
    if so.audit != sn.audit:
        if so.audit.include_text != sn.audit.include_text:
            out.append(
                Change(
                    None,
                    "privacy",
                    f"audit include_text {so.audit.include_text} → {sn.audit.include_text}",
                )
            )
        else:
            out.append(Change(None, "changed", "audit settings changed"))
    for name in sorted(so.channels.keys() | sn.channels.keys()):
        if so.channels.get(name) != sn.channels.get(name):
            out.append(
                Change(
                    None,
                    "changed",
                    f"channel {name} "
                    + (
                        "added"
                        if name not in so.channels
                        else "removed"
                        if name not in sn.channels
                        else "changed"
                    ),
                )
            )
    for name in sorted(po.feature_columns.keys() & pn.feature_columns.keys()):
        io, inn = _index(po, name), _index(pn, name)
        if io != inn:
            out.append(
                Change(
                    None,
                    "changed",
                    f"feature {name} now reads {inn[0]}#{inn[1]} (was {io[0]}#{io[1]})",
                )
            )
    return out


def _index(p: CompiledPolicy, name: str) -> tuple[str, int]:
    col = p.feature_columns[name]
    for sae in p.saes:
        if sae.offset <= col < sae.offset + len(sae.indices):
            return sae.name, sae.indices[col - sae.offset]
    raise KeyError(name)  # pragma: no cover


def format_diff(changes: list[Change]) -> str:
    if not changes:
        return "no semantic changes"
    lines: list[str] = []
    for rule in dict.fromkeys(c.rule for c in changes):
        lines.append(f"rule {rule}:" if rule is not None else "policy:")
        lines += [f"  {c}" for c in changes if c.rule == rule]
    kinds: dict[str, int] = {}
    for c in changes:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    lines.append(
        f"{len(changes)} change(s): " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    )
    return "\n".join(lines)
