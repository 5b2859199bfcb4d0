"""A compiled policy in plain words (``featureguard policy explain``)."""

from __future__ import annotations

from typing import Any

from monitor.policy import schema as s
from monitor.policy.compiled import CompiledPolicy


def _num(x: float) -> str:
    return f"{x:g}"


def threshold_text(
    p: CompiledPolicy, names: list[str], above: float | None, frac: float | None
) -> str:
    if above is not None:
        return f"above {_num(above)}"
    assert frac is not None
    scales = {p.feature_scale[p.feature_columns[n]] for n in names if n in p.feature_columns}
    if len(scales) == 1 and None not in scales:
        scale = scales.pop()
        assert scale is not None
        return f"above {_num(frac * scale)} ({_num(frac)} × scale {_num(scale)})"
    return f"above {_num(frac)} × their scale"


def condition_text(p: CompiledPolicy, cond: Any) -> str:
    """One condition tree as an English phrase."""
    if isinstance(cond, s.FeatureCond):
        return (
            f"{cond.feature} is {threshold_text(p, [cond.feature], cond.above, cond.above_scale)}"
        )
    if isinstance(cond, s.CountCond):
        c = cond.count
        names = list(p.spec.lists[c.list_]) if c.list_ else list(c.features or [])
        group = f"list {c.list_} [{', '.join(names)}]" if c.list_ else f"[{', '.join(names)}]"
        above = threshold_text(p, names, c.above, c.above_scale)
        return f"at least {c.at_least} of {group} are {above}"
    if isinstance(cond, s.AnyCond | s.AllCond):
        items = cond.any if isinstance(cond, s.AnyCond) else cond.all
        joiner = " or " if isinstance(cond, s.AnyCond) else " and "
        parts = [condition_text(p, c) for c in items]
        return parts[0] if len(parts) == 1 else "(" + joiner.join(parts) + ")"
    if isinstance(cond, s.NotCond):
        return f"not ({condition_text(p, cond.not_)})"
    if isinstance(cond, s.ProbeCond):
        probe = next((x for x in p.probes if x.name == cond.probe), None)
        thr = cond.above if cond.above is not None else (probe.threshold if probe else None)
        unit = "probability " if probe is not None and probe.link == "logistic" else ""
        return f"probe {cond.probe} gives a {unit}above {_num(thr or 0.0)}"
    if isinstance(cond, s.MacroCond):
        return f"{cond.macro} ({condition_text(p, p.spec.macros[cond.macro])})"
    return repr(cond)  # pragma: no cover


def action_text(act: Any) -> str:
    if isinstance(act, s.AlertAction):
        return f"alert to channel {act.channel}"
    if isinstance(act, s.AblateAction | s.ClampAction):
        what = f"list {act.list_}" if act.list_ else ", ".join(act.features or [])
        if isinstance(act, s.AblateAction):
            return f"ablate (set to 0) {what}"
        num = act.value if act.value is not None else act.scale or 0.0
        cap = _num(num) if act.value is not None else f"{_num(num)} × scale"
        if num < 0:  # activations are >= 0: min(f, cap) is cap on every active token
            return f"clamp {what} negatively: set to {cap} on every active token"
        return f"clamp {what} to at most {cap}"
    if isinstance(act, s.ReplaceAction):
        return f'end the output and substitute "{act.message[:60]}"'
    return {"log": "log it", "stop": "stop generating"}[act.type]


def rule_text(p: CompiledPolicy, r: s.Rule, n: int) -> list[str]:
    scope = {"both": "all tokens", "prompt": "prompt tokens", "completion": "completion tokens"}
    mode = "enforce" if r.mode == "enforce" else "SHADOW (records, never acts)"
    lines = [
        f"  {n}. {r.id} — {r.severity}, {mode}, on {scope[r.scope]}"
        + ("" if r.enabled else " — DISABLED")
    ]
    if r.description:
        lines.append(f"     {r.description}")
    lines.append(f"     When: {condition_text(p, r.condition)}")
    timing = []
    if r.window:
        timing.append(f"on at least {r.window.at_least} of the last {r.window.of_last} tokens")
    if r.for_ > 1:
        timing.append(f"for {r.for_} tokens in a row")
    if r.cooldown:
        timing.append(f"then not again for {r.cooldown} tokens")
    if r.hold:
        timing.append(f"stays active {r.hold} tokens after it stops holding")
    if timing:
        lines.append(f"     Timing: {'; '.join(timing)}")
    for exc in r.exceptions:
        parts = []
        if exc.context:
            parts.append(
                " and ".join(
                    f"the request's {k} is {v if isinstance(v, str) else ' or '.join(v)}"
                    for k, v in exc.context.items()
                )
            )
        if exc.when is not None:
            parts.append(condition_text(p, exc.when))
        label = f" [{exc.name}]" if exc.name else ""
        lines.append(f"     Except{label}: when {' and '.join(parts)}")
    lines.append(f"     Then: {'; '.join(action_text(a) for a in r.actions)}")
    if r.annotations.runbook_url:
        lines.append(f"     Runbook: {r.annotations.runbook_url}")
    return lines


def explain(p: CompiledPolicy, top: int = 5) -> str:
    """The whole policy as text: SAEs and features, rules, probes, compiled sizes."""
    meta = p.spec.policy
    out = [
        f'Policy "{p.name}"'
        + (f" revision {p.revision}" if p.revision else "")
        + (f", owner {meta.owner}" if meta.owner else "")
        + f" (sha256 {p.sha256[:12]}…)"
    ]
    if meta.description:
        out.append(f"  {meta.description.strip()}")
    closed = (
        "closed: errors block generation"
        if p.on_error == "fail_closed"
        else "open: errors are counted and generation continues"
    )
    out.append(f"On error: fail {closed}" + ("" if p.spec.on_error else " (default)"))
    out.append(f"Reads {p.K} feature(s) from {len(p.saes)} SAE(s):")
    for sae in p.saes:
        src = f"bundled {sae.bundled}" if sae.bundled else f"path {sae.path}"
        out.append(f"  SAE {sae.name} ({src}, hook {sae.hook or '?'}, width {sae.d_sae or '?'})")
        inputs_only = 0
        for c in range(sae.offset, sae.offset + len(sae.indices)):
            if p.input_only and p.input_only[c]:  # `probe[index]`: a weights-file probe input
                inputs_only += 1
                continue
            scale = p.feature_scale[c]
            extra = f", scale {_num(scale)}" if scale else ""
            exported = ", exported" if c in p.export_columns else ""
            out.append(f"    {p.feature_names[c]}: #{sae.indices[c - sae.offset]}{extra}{exported}")
        if inputs_only:
            out.append(f"    … and {inputs_only} more, read only by weights-file probes")
    out.append(
        f"Rules ({p.R} enabled, {len(p.disabled_rules)} disabled), precedence "
        "stop > replace > ablate/clamp > alert > log, ties by severity then order:"
    )
    for n, r in enumerate(p.spec.rules, 1):
        out.extend(rule_text(p, r, n))
    if p.probes:
        out.append("Probes:")
    for pr in p.probes:
        ranked = sorted(zip(pr.features, pr.weights, strict=True), key=lambda fw: -abs(fw[1]))
        tops = ", ".join(f"{f} {w:+.3g}" for f, w in ranked[:top])
        out.append(
            f"  {pr.name} ({pr.link}, threshold {_num(pr.threshold)}, pooling "
            f"{pr.pooling}"
            + (f" (half-life {_num(pr.half_life)} tokens)" if pr.half_life is not None else "")
            + f", bias {_num(pr.bias)}): top features {tops}"
        )
    t = p.tensors
    gates = sum(int(lvl[0].shape[0]) for lvl in t.levels)
    out.append(
        f"Compiled: K={p.K} features, R={p.R} rules, P={p.P} probes, "
        f"{int(t.lit_src.numel())} threshold literals, {gates} gates in "
        f"{len(t.levels)} level(s), longest window {t.max_window}."
    )
    return "\n".join(out)
