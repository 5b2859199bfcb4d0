"""How many tensor ops the monitor adds to each generated token: a deterministic budget.

Why count ops. On a CPU every eager tensor op costs several microseconds of dispatch, whatever
its size; the monitor's tensors are tiny (a ``(B, 1, K)`` encode, ``(B, 1, R)`` rule state), so
its per-token overhead is, to first order, its op count. Issue #6's target (monitored ≥ 0.97 ×
unmonitored tokens/s on SmolLM2-135M, ≈ 52 ms per token at batch 1) leaves ≈ 1.6 ms per token.
The default policy used to dispatch 223 ops per decode step (≈ 2 ms); it now takes 46. A
wall-clock assert would be flaky on shared CPUs; the op count is exact and deterministic.

How. ``torch.profiler`` counts top-level ``aten::`` ops of a monitored ``generate`` minus the
same unmonitored ``generate``, each at two lengths; the difference per extra token is what the
monitor costs per decode step (prefill, the final check step and per-call setup cancel out).
Health sampling is off (``health_every=0``): by design it runs once per 256 tokens.

The budgets are today's counts plus about 10% (``log`` 27, ``temporal`` 74, ``ablating`` 55;
before the per-token path was trimmed: 159, 249, 204), on a jumprelu SAE at one hook point:

- ``log`` (3 feature rules, log only, nothing matching): subset encode 7 (``x - b_dec``,
  matmul, bias, slice of the padded width, jumprelu), conditions 2 (one gather, one compare),
  rule state 6, the step's one host read 6 (finite check, any-match, one ``cat``, ``tolist``),
  the stopping criterion 3, validity bookkeeping 2.
- ``temporal`` adds a probe (matmul), an ``any`` gate and a context exception (the circuit), a
  window (bit history), ``for``, cooldown, hold, a rule scoped to completions and the read of
  which stop/ablate rules are active.
- ``ablating`` has a rule active on every token that ablates two features: its targets (one
  matrix product) and the SAE-space edit of the hidden state run on every token.

The counts do not depend on the batch size (checked at 1 and 3 rows: no per-row op) nor grow
with the number of rules (rules are a tensor axis). When a budget fails, count per function
(``torch.profiler.record_function`` around ``Session.on_hook``, ``Step.read``,
``Temporal.__call__``, ``Circuit.__call__`` ...) to find the new ops.
"""

from __future__ import annotations

import collections
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import monitor
from monitor.policy.loader import load_policy_text
from sae.registry import create_sae
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer
from tests.monitor.runtime.helpers import batch, hook_of

D_SAE = 64
SHA = "cd" * 32
SHORT, LONG = 3, 9  # new tokens of the two measured calls

HEADER = f"""\
version: 1
policy: {{name: budget, revision: r1}}
saes: {{main: {{bundled: budget-sae, sha256: "{SHA}", hook: HOOK}}}}
features:
  f0: {{index: 3}}
  f1: {{index: 17}}
  f2: {{index: 40}}
lists:
  both: [f0, f1]
"""
CATALOG = f"""
catalog_version: 1
sae: {{name: budget-sae, sha256: "{SHA}", d_sae: {D_SAE}}}
features:
  - {{name: a, index: 5}}
  - {{name: b, index: 9}}
probes:
  p: {{features: [a, b], weights: [1.0, -0.5], bias: 0.0, link: linear, threshold: 1.0e9,
      sae_sha256: "{SHA}"}}
"""
NEVER = "above: 1.0e9"
POLICIES = {
    "log": f"""
        - {{id: r0, severity: low, condition: {{feature: f0, {NEVER}}}, actions: [{{type: log}}]}}
        - {{id: r1, severity: low, condition: {{feature: f1, {NEVER}}}, actions: [{{type: log}}]}}
        - {{id: r2, severity: low, condition: {{feature: f2, {NEVER}}}, actions: [{{type: log}}]}}
    """,
    "temporal": f"""
        - id: probe
          severity: high
          condition: {{probe: x.p}}
          window: {{at_least: 2, of_last: 4}}
          cooldown: 8
          hold: 4
          actions: [{{type: log}}, {{type: ablate, list: both}}]
        - {{id: sustained, severity: low, condition: {{feature: f0, {NEVER}}}, for: 3,
            actions: [{{type: log}}]}}
        - id: either
          severity: medium
          scope: completion
          condition: {{any: [{{feature: f1, {NEVER}}}, {{feature: f2, {NEVER}}}]}}
          exceptions: [{{context: {{tenant: [redteam]}}}}]
          actions: [{{type: stop}}]
    """,
    "ablating": f"""
        - {{id: always, severity: high, condition: {{not: {{feature: f2, {NEVER}}}}}, hold: 4,
            actions: [{{type: ablate, features: [f0, f1]}}]}}
        - {{id: r1, severity: low, condition: {{feature: f1, {NEVER}}}, actions: [{{type: log}}]}}
    """,
}
BUDGET = {"log": 30, "temporal": 82, "ablating": 61}


def aten_ops(fn: Any) -> int:
    """Top-level ``aten::`` ops dispatched while ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = collections.Counter(
        e.name
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )
    return sum(names.values())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    hook = hook_of(model)
    d_in = model.config.hidden_size
    sae = create_sae(
        d_in=d_in, d_sae=D_SAE, architecture="jumprelu", hook_name=hook, init="random", seed=0
    )
    tmp = tmp_path_factory.mktemp("budget")
    (tmp / "cat.yaml").write_text(CATALOG)
    return {"model": model, "tok": tok, "hook": hook, "sae": sae.eval(), "dir": tmp}


def load(setup: dict[str, Any], rules: str) -> Any:
    extra = '\nimports: [{catalog: cat.yaml, sae: main, prefix: "x."}]\n' if "x.p" in rules else ""
    text = (
        HEADER.replace("HOOK", setup["hook"])
        + extra
        + "rules:\n"
        + textwrap.indent(textwrap.dedent(rules), "  ")
    )
    where: Path = setup["dir"]
    return load_policy_text(
        text, str(where / "p.yaml"), base_dir=where, d_sae={"main": D_SAE}, resolver=None
    )


def per_step(model: Any, enc: dict[str, torch.Tensor], **kw: Any) -> float:
    """Ops of one extra decode step of ``model.generate`` (guarded or not)."""

    def run(n: int) -> int:
        def call() -> None:
            with torch.no_grad():
                model.generate(
                    **enc,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    disable_compile=True,
                    return_dict_in_generate=True,
                    **kw,
                )

        call()  # warm: first calls build caches (per-device tables, ...)
        return aten_ops(call)

    return (run(LONG) - run(SHORT)) / (LONG - SHORT)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("name", list(POLICIES))
def test_monitor_ops_per_token_stay_within_budget(
    setup: dict[str, Any], name: str, rows: int
) -> None:
    model = setup["model"]
    enc = batch(setup["tok"], ["Never share a one-time code", "Hi", "The quick brown fox"][:rows])
    pol = load(setup, POLICIES[name])
    with monitor.attach(model, pol, saes={"main": setup["sae"]}, health_every=0) as g:
        ops = per_step(g, enc, monitor_context={"tenant": "t1"})
        report = g.last_report
    base = per_step(model, enc)
    extra = ops - base
    assert report is not None and all(r.completion_tokens == SHORT for r in report.rows)
    if name == "ablating":  # the intervention really is active on every token
        assert all([f.rule for f in r.fired] == ["always"] for r in report.rows)
    else:
        assert report.fired == []  # the steady state: nothing matches
    assert extra <= BUDGET[name], (
        f"{name}: the monitor adds {extra:.1f} tensor ops per generated token "
        f"(budget {BUDGET[name]}); see the module docstring"
    )
    assert extra > 0  # the count sees the monitor at all
