"""How monitored generation plugs into ``model.generate``: criteria, forcing, the final step.

- :class:`MonitorStopping` is the per-row ``StoppingCriteria``: it records which sampled token
  is monitored next and returns the rows the monitor stopped (a ``(B,)`` bool tensor). The
  caller's own criteria run inside it, so the monitor knows which rows they end.
- :class:`MonitorForcing` is a ``LogitsProcessor``: a row stopped at this step gets a one-hot
  distribution on EOS (or pad), so the token sampled *after* the decision (never checked) is
  not a real token; it is replaced by padding in the returned ids anyway.
- :func:`final_step` runs the one extra forward that checks the last sampled token, which
  ``generate`` never feeds through the model (CONTRACTS).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from monitor.runtime.session import Session, StopForward

UNSUPPORTED = {
    "assistant_model": "assisted decoding",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
    "inputs_embeds": "inputs_embeds (pass input_ids)",
}


def effective_config(model: Any, generation_config: Any, kwargs: dict[str, Any]) -> Any:
    """A copy of the generation config with the call's keyword overrides (read-only use)."""
    gc = copy.deepcopy(generation_config or model.generation_config)
    gc.update(**{k: v for k, v in kwargs.items() if hasattr(gc, k)})
    return gc


def check_supported(gc: Any, kwargs: dict[str, Any]) -> None:
    """Refuse generation modes that break per-row hooks, with a clear error."""
    for key, what in UNSUPPORTED.items():
        if kwargs.get(key) is not None or getattr(gc, key, None) is not None:
            raise ValueError(f"monitored generate does not support {what}")
    if (getattr(gc, "num_beams", 1) or 1) > 1:
        raise ValueError(
            "monitored generate does not support beam search (num_beams > 1): beams reorder "
            "rows between steps, which breaks per-row monitoring state"
        )


def eos_ids(gc: Any) -> list[int]:
    eos = gc.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def pad_id(gc: Any) -> int:
    if gc.pad_token_id is not None:
        return int(gc.pad_token_id)
    eos = eos_ids(gc)
    return eos[0] if eos else 0


class MonitorStopping(StoppingCriteria):
    """Per-row stop for the monitor, wrapping the caller's own criteria."""

    def __init__(self, session: Session, inner: StoppingCriteriaList | None) -> None:
        self.session = session
        self.inner = inner

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = None
        if self.inner:
            done = self.inner(input_ids, scores, **kwargs)
            if not isinstance(done, torch.Tensor):
                done = torch.full((input_ids.shape[0],), bool(done), device=input_ids.device)
        halted = self.session.token_appended(input_ids, done)
        return halted if done is None else halted | done.to(halted.device)


class MonitorForcing(LogitsProcessor):
    """Rows stopped at this step sample ``token`` (EOS or pad); others are untouched."""

    def __init__(self, session: Session, token: int) -> None:
        self.session = session
        self.token = token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        if not self.session.stop_pending:  # host flag from the step's read: no sync here
            return scores
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token] = 0.0
        return torch.where(self.session.stop_now[:, None], forced, scores)  # (B, V)


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def final_step(
    model: Any, session: Session, sequences: torch.Tensor, full_mask: torch.Tensor, cache: Any
) -> None:
    """Check the last sampled column of ``sequences (B, L)`` (rows still monitored only).

    With ``cache`` (generate's own KV cache, not returned to the caller) this is one decode
    step; otherwise the whole sequence is forwarded without a cache. Either way the forward
    stops right after the last hook point (:class:`StopForward`), so no logits are computed.
    """
    L = sequences.shape[1]
    if session.seen >= L or not bool(session.valid_all[:, session.seen :].any()):
        return
    pos = (full_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L) as generate computes them
    kwargs: dict[str, Any] = {"attention_mask": full_mask}
    if cache is not None and session.seen == L - 1:
        cache_kw = "cache" if _accepts(model, "cache") else "past_key_values"
        kwargs.update({cache_kw: cache, "use_cache": True})
        ids, pos = sequences[:, -1:], pos[:, -1:]
    else:
        ids, kwargs["use_cache"] = sequences, False
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = pos
    session.final = True
    try:
        with torch.no_grad():
            model(input_ids=ids, **kwargs)
    except StopForward:
        pass
    finally:
        session.final = False


def rewrite_halted(
    sequences: torch.Tensor, session: Session, pad: int, tokenizer: Any
) -> torch.Tensor:
    """Returned ids for stopped/replaced rows: padding after the token where the row ended;
    a replaced row's completion is the tokenized message when a tokenizer is known."""
    if not session.halt_col:
        return sequences
    seqs = sequences.clone()
    L0 = session.L0
    for b, col in session.halt_col.items():
        seqs[b, max(col + 1, L0) :] = pad
    if tokenizer is None:
        return seqs
    for row in session.report.rows:
        if row.replaced and row.replacement is not None:
            ids = tokenizer(row.replacement, add_special_tokens=False)["input_ids"]
            need = L0 + len(ids) - seqs.shape[1]
            if need > 0:
                seqs = torch.cat([seqs, seqs.new_full((seqs.shape[0], need), pad)], dim=1)
            seqs[row.row, L0:] = pad
            seqs[row.row, L0 : L0 + len(ids)] = torch.tensor(ids, dtype=seqs.dtype)
    return seqs
