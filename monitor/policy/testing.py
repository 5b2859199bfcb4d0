"""Policy unit tests (``featureguard policy test``), in the spirit of ``promtool test rules``.

A test file names a policy and lists cases. Each case gives an input (a recorded activation
trace of the policy's features per token, or texts that the model runtime encodes) and the
exact rule matches expected: rule id, first token, and optionally actions and mode. Anything
that fires and is not expected fails the case, as does anything expected that does not fire::

    policy: example.yaml          # relative to this file
    d_sae: {main: 9216}           # widths of SAEs not on disk (optional)
    allow_missing_sae: true       # optional
    tests:
      - name: violent request is refused
        context: {tenant: acme}
        prompt:
          tokens: ["How", " to", " hurt"]       # optional, for readable reports
          features: {violence: [0.0, 0.2, 3.1]} # features not given are 0
        completion:
          length: 2                             # when no feature is given
        expect:
          - {rule: violent-request, token: 2, actions: [stop]}
        stops_at: 2                             # optional: first stop/replace token, or null

The prompt is evaluated as one prefill call and the completion one token per call, as the
runtime does; once a row stops (stop or replace), later completion tokens are not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, model_validator

from monitor.policy.compiled import CompiledPolicy
from monitor.policy.diagnostics import Diagnostic, PolicyError
from monitor.policy.evaluator import Evaluator
from monitor.policy.schema import LabelKey, Strict
from monitor.policy.yaml_strict import parse_bytes

Trace = tuple[torch.Tensor, torch.Tensor, list[str]]
EncodeTexts = Callable[[CompiledPolicy, Sequence[tuple[str, str]]], Sequence[Trace]]
"""``(policy, [(prompt, completion), ...]) -> [(prompt_acts (Tp, K), completion_acts (Tc, K),
tokens), ...]``: the runtime's own encode path for the policy's features (wired by the runtime)."""


class PhaseInput(Strict):
    tokens: list[str] | None = None
    features: dict[str, list[float]] = Field(default_factory=dict)
    length: int | None = Field(default=None, ge=0)


class TextInput(Strict):
    prompt: str = ""
    completion: str = ""


class Expected(Strict):
    rule: str
    token: int = Field(ge=0)
    actions: list[str] | None = None
    mode: str | None = None


class Case(Strict):
    name: str
    context: dict[LabelKey, str] | None = None
    prompt: PhaseInput | None = None
    completion: PhaseInput | None = None
    text: TextInput | None = None
    expect: list[Expected] = Field(default_factory=list)
    stops_at: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_input(self) -> Case:
        if (self.text is None) == (self.prompt is None and self.completion is None):
            raise ValueError("a test needs either 'text' or a trace ('prompt'/'completion')")
        return self


class TestFile(Strict):
    policy: str
    d_sae: dict[str, int] | None = None
    allow_missing_sae: bool = False
    tests: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class Firing:
    rule: str
    token: int
    actions: tuple[str, ...]
    mode: str

    def __str__(self) -> str:
        return f"{self.rule} @ token {self.token} [{', '.join(self.actions)}] ({self.mode})"


@dataclass
class CaseResult:
    name: str
    ok: bool
    lines: list[str]  # readable diff when not ok
    skipped: str | None = None


def trace_tensor(policy: CompiledPolicy, phase: PhaseInput | None) -> torch.Tensor:
    """(T, K) activations from a phase's ``features`` (by name) and ``length``."""
    if phase is None:
        return torch.zeros(0, policy.K)
    lengths = {len(v) for v in phase.features.values()}
    lengths |= {phase.length} if phase.length is not None else set()
    lengths |= {len(phase.tokens)} if phase.tokens is not None else set()
    if len(lengths) > 1:
        raise ValueError(f"features, tokens and length disagree on the length: {sorted(lengths)}")
    acts = torch.zeros(lengths.pop() if lengths else 0, policy.K)
    for name, values in phase.features.items():
        if name not in policy.feature_columns:
            raise ValueError(f"feature '{name}' is not read by the policy's enabled rules")
        acts[:, policy.feature_columns[name]] = torch.tensor(values)
    return acts


def run_trace(
    policy: CompiledPolicy,
    prompt: torch.Tensor,
    completion: torch.Tensor,
    context: dict[str, str] | None = None,
) -> tuple[list[Firing], int | None]:
    """Evaluate one row: the prompt (Tp, K) as one prefill, then completion (Tc, K) token by
    token until a stop. Returns the matches and the first stop/replace token (or None)."""
    ev = Evaluator(policy)
    state = ev.new_state(1, contexts=context)
    results = []
    if prompt.shape[0]:
        results.append(
            ev.step(prompt[None], torch.ones(1, prompt.shape[0], dtype=torch.bool), "prompt", state)
        )
    stopped = bool(results and (results[0].stop | results[0].replace).any())
    for i in range(completion.shape[0]):
        if stopped:
            break
        r = ev.step(
            completion[None, i : i + 1], torch.ones(1, 1, dtype=torch.bool), "completion", state
        )
        results.append(r)
        stopped = bool((r.stop | r.replace).any())
    firings: list[Firing] = []
    stops_at = None
    for r in results:
        for t, rule in r.match[0].nonzero().tolist():
            cr = policy.rules[rule]
            firings.append(Firing(cr.id, int(r.token_index[0, t]), cr.action_kinds, cr.mode))
        halt = (r.stop | r.replace)[0].nonzero()
        if stops_at is None and halt.numel():
            stops_at = int(r.token_index[0, int(halt[0, 0])])
    return sorted(firings, key=lambda f: (f.token, f.rule)), stops_at


def compare(case: Case, firings: list[Firing], stops_at: int | None) -> list[str]:
    """Readable diff lines (``- expected`` / ``+ got``); empty when the case passes."""
    lines: list[str] = []
    got = {(f.rule, f.token): f for f in firings}
    want = {(e.rule, e.token): e for e in case.expect}
    for key in sorted(want.keys() | got.keys(), key=lambda k: (k[1], k[0])):
        e, f = want.get(key), got.get(key)
        if e is None and f is not None:
            lines.append(f"  + unexpected: {f}")
        elif f is None and e is not None:
            lines.append(f"  - missing:    {e.rule} @ token {e.token}")
        elif e is not None and f is not None:
            if e.actions is not None and sorted(e.actions) != sorted(f.actions):
                lines.append(
                    f"  ~ {e.rule} @ token {e.token}: expected actions "
                    f"{sorted(e.actions)}, got {sorted(f.actions)}"
                )
            if e.mode is not None and e.mode != f.mode:
                lines.append(
                    f"  ~ {e.rule} @ token {e.token}: expected mode {e.mode}, got {f.mode}"
                )
    if "stops_at" in case.model_fields_set and case.stops_at != stops_at:
        lines.append(f"  ~ stops at: expected {case.stops_at}, got {stops_at}")
    return lines


def load_test_file(path: Path) -> TestFile:
    src, diags = parse_bytes(path.read_bytes(), str(path))
    if diags:
        raise PolicyError(diags)
    try:
        return TestFile.model_validate(src.data)
    except ValidationError as exc:
        from monitor.policy.loader import validation_diagnostics

        raise PolicyError(validation_diagnostics(exc, src)) from None


def run_test_file(
    path: str | Path, *, encode_texts: EncodeTexts | None = None, **load_kwargs: Any
) -> list[CaseResult]:
    """Run every case of a test file. Raises :class:`PolicyError` if the file or its policy
    is invalid. Text cases need ``encode_texts``; without it they are reported as skipped."""
    from monitor.policy.loader import load_policy

    p = Path(path)
    try:
        tf = load_test_file(p)
    except OSError as exc:
        raise PolicyError([Diagnostic("FG100", f"cannot read: {exc.strerror}", str(p))]) from None
    policy_path = Path(tf.policy) if Path(tf.policy).is_absolute() else p.parent / tf.policy
    load_kwargs.setdefault("allow_missing_sae", tf.allow_missing_sae)
    if tf.d_sae:
        load_kwargs.setdefault("d_sae", tf.d_sae)
    policy = load_policy(policy_path, **load_kwargs)
    out = []
    for case in tf.tests:
        try:
            if case.text is not None:
                if encode_texts is None:
                    out.append(
                        CaseResult(
                            case.name,
                            True,
                            [],
                            skipped="text input needs the model runtime (no text encoder wired)",
                        )
                    )
                    continue
                prompt, completion, _ = encode_texts(
                    policy, [(case.text.prompt, case.text.completion)]
                )[0]
            else:
                prompt = trace_tensor(policy, case.prompt)
                completion = trace_tensor(policy, case.completion)
            firings, stops_at = run_trace(policy, prompt, completion, case.context)
            lines = compare(case, firings, stops_at)
        except ValueError as exc:
            lines = [f"  ! {exc}"]
        out.append(CaseResult(case.name, not lines, lines))
    return out


def default_text_encoder() -> EncodeTexts | None:
    """The runtime's text encoder for ``policy test`` text cases; None until it is wired."""
    return None
