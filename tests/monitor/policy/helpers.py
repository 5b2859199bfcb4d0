"""Small builders shared by the policy tests: policies from rule snippets, traces by name."""

from __future__ import annotations

import textwrap
from typing import Any

import torch

from monitor.policy.compiled import CompiledPolicy
from monitor.policy.evaluator import Evaluator, StepResult
from monitor.policy.loader import load_policy_text
from monitor.policy.testing import run_trace

HEADER = """\
version: 1
policy: {name: test, owner: tests}
saes:
  main: {bundled: test-sae, d_sae: 64}
features:
  a: {index: 3, scale: 2.0}
  b: {index: 7, scale: 4.0}
  c: {index: 1, scale: 1.0}
lists:
  ab: [a, b]
channels:
  ops: {type: webhook, url: "https://example.invalid/hook"}
"""


def policy(rules: str, extra: str = "", **kwargs: Any) -> CompiledPolicy:
    """A policy over features a, b, c of a 64-wide SAE with the given ``rules:`` YAML body."""
    text = (
        HEADER + textwrap.dedent(extra) + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  ")
    )
    kwargs.setdefault("d_sae", {"main": 64})
    return load_policy_text(text, "test.yaml", **kwargs)


def acts_of(p: CompiledPolicy, T: int, **features: list[float]) -> torch.Tensor:
    """(T, K) activations, features by name (others 0; names the policy does not read are
    dropped, as the runtime would not encode them)."""
    x = torch.zeros(T, p.K)
    for name, values in features.items():
        if name not in p.feature_columns:
            continue
        x[:, p.feature_columns[name]] = torch.tensor(values, dtype=torch.float32)
    return x


def fired(
    p: CompiledPolicy,
    prompt: dict[str, list[float]] | None = None,
    completion: dict[str, list[float]] | None = None,
    context: dict[str, str] | None = None,
) -> list[tuple[str, int]]:
    """(rule, first token) of every match: prompt as one prefill, completion token by token."""

    def tensor(d: dict[str, list[float]] | None) -> torch.Tensor:
        if not d:
            return torch.zeros(0, p.K)
        return acts_of(p, len(next(iter(d.values()))), **d)

    firings, _ = run_trace(p, tensor(prompt), tensor(completion), context)
    return [(f.rule, f.token) for f in firings]


def step_all(
    p: CompiledPolicy,
    acts: torch.Tensor,
    valid: torch.Tensor | None = None,
    phase: str = "prompt",
    contexts: Any = None,
) -> StepResult:
    """One call over a (B, T, K) batch."""
    ev = Evaluator(p)
    B, T, _ = acts.shape
    state = ev.new_state(B, contexts=contexts)
    if valid is None:
        valid = torch.ones(B, T, dtype=torch.bool)
    return ev.step(acts, valid, phase, state)


def matches(result: StepResult, row: int = 0) -> list[tuple[int, int]]:
    """(token, rule) pairs where ``result.match`` is set for ``row``."""
    return [tuple(x) for x in result.match[row].nonzero().tolist()]  # type: ignore[misc]
