"""Score whole texts through the runtime's own hook and encode path (no generation).

``scan``, ``policy test`` (text cases) and other tools call :func:`scan_batch`: prompts are
left-padded and completions right-padded into one ``(B, P + C)`` batch so that the
prompt/completion boundary is one column for every row; one forward (with generate's position
ids) runs up to the last hook point through the very hooks ``generate`` uses, and the policy is
evaluated with ``phase=prompt`` on the prompt columns and ``phase=completion`` on the rest, so
rule ``scope`` is honoured and thresholds mean what they mean at runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monitor.runtime.guarded import GuardedModel
from monitor.runtime.report import RowReport
from monitor.runtime.session import Session, StopForward


@dataclass
class ScannedRow:
    """One scored text: its report row, the (pre-intervention) feature values it saw and the
    policy's probe scores (``logit`` space, as conditions compare them) on the same tokens."""

    report: RowReport
    prompt_acts: torch.Tensor  # (Tp, K) float32, valid prompt tokens
    completion_acts: torch.Tensor  # (Tc, K) float32, valid completion tokens
    prompt_probes: torch.Tensor | None = None  # (Tp, P) float32
    completion_probes: torch.Tensor | None = None  # (Tc, P) float32

    def features_max(self, columns: Mapping[str, int]) -> dict[str, float]:
        """Max activation of each named feature (name → column) over every scored token (0.0
        when none)."""
        acts = torch.cat([self.prompt_acts, self.completion_acts])  # (T, K)
        if acts.shape[0] == 0:
            return dict.fromkeys(columns, 0.0)
        top = acts.amax(0).tolist()
        return {n: float(top[c]) for n, c in columns.items()}


def scan_batch(
    guarded: GuardedModel,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    contexts: Sequence[Mapping[str, Any]] | None = None,
) -> list[ScannedRow]:
    """Score each ``prompt + completion`` (token ids) with the guarded model's policy.

    Match events go to the guarded model's dispatcher as in ``generate``. Interventions are not
    applied (the forward stops at the last hook point: nothing downstream is computed).
    """
    model, binding = guarded.model, guarded.binding()
    guarded.hooks.ensure(binding)
    B = len(prompts)
    P = max((len(p) for p in prompts), default=0)
    C = max((len(c) for c in completions), default=0)
    if P + C == 0:
        raise ValueError("nothing to scan: every text is empty")
    pad = _pad_id(model)
    device = next(model.parameters()).device
    ids = torch.full((B, P + C), pad, dtype=torch.long)  # (B, P + C)
    mask = torch.zeros(B, P + C, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[b, P - len(p) : P], mask[b, P - len(p) : P] = torch.tensor(p, dtype=torch.long), 1
        ids[b, P : P + len(c)], mask[b, P : P + len(c)] = torch.tensor(c, dtype=torch.long), 1
    ids, mask = ids.to(device), mask.to(device)
    session = Session(
        binding,
        guarded.dispatcher,
        mask,
        list(contexts) if contexts is not None else [{}] * B,
        prompt_len=P,
        tokenizer=guarded.tokenizer,
        ignore_first_token=guarded.ignore_first_token,
        record=True,
        health=guarded.health,
    )
    kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": False}
    if "position_ids" in _params(model):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate makes them
    session.final = True
    with guarded.hooks.active(session), torch.no_grad():
        try:
            model(input_ids=ids, **kwargs)
        except StopForward:
            pass
        finally:
            session.finish()
    K, n_probes = binding.policy.K, binding.policy.P
    acts = torch.zeros(B, P + C, K)
    probes = torch.zeros(B, P + C, n_probes)
    for start, a, _valid, ps in session.recorded:
        acts[:, start : start + a.shape[1]] = a.float().cpu()
        probes[:, start : start + ps.shape[1]] = ps.float().cpu()
    valid = mask.bool().cpu()
    return [
        ScannedRow(
            session.report.rows[b],
            acts[b, :P][valid[b, :P]],
            acts[b, P:][valid[b, P:]],
            probes[b, :P][valid[b, :P]],
            probes[b, P:][valid[b, P:]],
        )
        for b in range(B)
    ]


def _pad_id(model: Any) -> int:
    gc = getattr(model, "generation_config", None)
    for v in (getattr(gc, "pad_token_id", None), getattr(gc, "eos_token_id", None)):
        if isinstance(v, int):
            return v
        if isinstance(v, (list, tuple)) and v:
            return int(v[0])
    return 0


def _params(model: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()
