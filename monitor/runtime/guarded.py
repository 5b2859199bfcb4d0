"""``monitor.attach(model, policy)``: the drop-in monitored ``generate``.

``GuardedModel.generate`` takes exactly what ``model.generate`` takes, plus ``monitor_context``
(one dict for every row, or one per input row), and returns the same type. Hooks are installed
once here and gated per call; ``detach()`` (or leaving the ``with`` block) removes them. With a
policy that only logs or alerts, the returned ids are bit-identical to the unwrapped model's.

Stopped and replaced rows: the token where a stop/replace rule became active is the row's last
real token; everything after it is ``pad_token_id`` in the returned ids. For a replaced row the
report carries ``replacement`` (the configured message) and, when ``attach`` was given a
tokenizer, the returned completion *is* the tokenized message (the ids are widened with padding
if the message is longer than the generated text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList, StoppingCriteriaList

from monitor.policy.compiled import CompiledPolicy
from monitor.policy.evaluator import Evaluator
from monitor.policy.reload import PolicyWatcher
from monitor.runtime.binding import PolicyBinding, sae_loader
from monitor.runtime.events import Dispatcher, NullDispatcher
from monitor.runtime.generation import (
    MonitorForcing,
    MonitorStopping,
    check_supported,
    effective_config,
    eos_ids,
    final_step,
    pad_id,
    rewrite_halted,
)
from monitor.runtime.health import HealthSampler
from monitor.runtime.hooks import HookSet
from monitor.runtime.report import MonitorReport
from monitor.runtime.session import Session
from sae.base import SAE

PolicySource = str | Path | CompiledPolicy | PolicyWatcher
Context = Mapping[str, Any]


def load_policy_source(policy: PolicySource, **load_kwargs: Any) -> CompiledPolicy | PolicyWatcher:
    """A path (or shipped name such as ``default``) is loaded once; others pass through."""
    if isinstance(policy, (CompiledPolicy, PolicyWatcher)):
        return policy
    from monitor.policy.loader import load_policy
    from monitor.resources import resolve_policy_path

    path = Path(policy)
    return load_policy(path if path.exists() else resolve_policy_path(policy), **load_kwargs)


def row_contexts(context: Context | Sequence[Context] | None, rows: int, n: int) -> list[Context]:
    """One context per input row (``rows``), repeated for ``num_return_sequences`` (``n``)."""
    if context is None or isinstance(context, Mapping):
        per_row = [dict(context or {})] * rows
    else:
        per_row = [dict(c or {}) for c in context]
        if len(per_row) != rows:
            raise ValueError(f"monitor_context has {len(per_row)} entries for {rows} input rows")
    return [c for c in per_row for _ in range(n)]


class GuardedModel:
    """A model with policy monitoring around ``generate``; see :func:`attach`."""

    def __init__(
        self,
        model: nn.Module,
        policy: PolicySource,
        *,
        saes: Mapping[str, SAE] | None = None,
        dispatcher: Dispatcher | None = None,
        tokenizer: Any = None,
        ignore_first_token: bool = True,
        health_every: int = 256,
        policy_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if health_every < 0:
            raise ValueError("health_every must be >= 0 (0 disables SAE health sampling)")
        self.model = model
        self.health = HealthSampler(health_every)
        self.tokenizer = tokenizer
        self.dispatcher: Dispatcher = dispatcher or NullDispatcher()
        self.ignore_first_token = ignore_first_token
        self._source = load_policy_source(policy, **dict(policy_kwargs or {}))
        self._load = sae_loader(saes, {})
        self._bindings: dict[str, PolicyBinding] = {}
        self.last_report: MonitorReport | None = None
        self.hooks = HookSet(model)
        try:
            self.hooks.ensure(self.binding())
        except BaseException:
            self.hooks.remove()
            raise

    # ---- policy -----------------------------------------------------------------------------
    def binding(self) -> PolicyBinding:
        """The binding of the current policy snapshot (built once per snapshot)."""
        if isinstance(self._source, PolicyWatcher):
            snap = self._source.snapshot  # read once per call
            policy, evaluator = snap.policy, snap.evaluator
        else:
            policy, evaluator = self._source, None
        key = f"{id(policy)}:{policy.sha256}"
        if key not in self._bindings:
            binding = PolicyBinding(self.model, policy, self._load, evaluator or Evaluator(policy))
            self._bindings = {key: binding}  # keep only the current snapshot's
            self.dispatcher.on_policy(policy)
        return self._bindings[key]

    @property
    def policy(self) -> CompiledPolicy:
        return self.binding().policy

    # ---- generate ---------------------------------------------------------------------------
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: Any = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        *,
        monitor_context: Context | Sequence[Context] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``model.generate`` with the policy applied; same arguments, same return type.

        The :class:`MonitorReport` of the call is ``self.last_report`` (live while the call
        runs, e.g. from a streaming consumer thread).
        """
        if not self.hooks.installed:
            raise RuntimeError("this GuardedModel was detached; attach the model again")
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            raise ValueError("monitored generate needs input_ids (a (B, T) tensor)")
        gc = effective_config(self.model, generation_config, kwargs)
        check_supported(gc, kwargs)
        binding = self.binding()
        self.hooks.ensure(binding)
        n = int(gc.num_return_sequences or 1)
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        mask = mask.repeat_interleave(n, dim=0)  # (B, L0) as generate expands rows
        use_cache = kwargs.get("use_cache", gc.use_cache)
        session = Session(
            binding,
            self.dispatcher,
            mask,
            row_contexts(monitor_context, ids.shape[0], n),
            tokenizer=self.tokenizer,
            eos_ids=eos_ids(gc),
            ignore_first_token=self.ignore_first_token,
            replay_edits=not use_cache,
            health=self.health,
        )
        self.last_report = session.report
        wants_dict = bool(gc.return_dict_in_generate)
        pad = pad_id(gc)
        forced = eos_ids(gc)[0] if eos_ids(gc) else pad
        call = dict(kwargs)
        call.update(disable_compile=True, return_dict_in_generate=True)
        lp = LogitsProcessorList([*(logits_processor or []), MonitorForcing(session, forced)])
        sc = StoppingCriteriaList([MonitorStopping(session, stopping_criteria)])
        with self.hooks.active(session):
            try:
                out = self.model.generate(  # type: ignore[operator]
                    inputs,
                    generation_config=generation_config,
                    logits_processor=lp,
                    stopping_criteria=sc,
                    **call,
                )
                seqs = out.sequences  # (B, L)
                full_mask = torch.cat(
                    [
                        mask.to(seqs.device),
                        mask.new_ones(seqs.shape[0], seqs.shape[1] - mask.shape[1]),
                    ],
                    dim=1,
                )  # (B, L) the 2-D mask generate built
                cache = None if wants_dict or not use_cache else _cache_of(out)
                final_step(self.model, session, seqs, full_mask, cache)
            finally:
                session.finish()
        seqs = rewrite_halted(seqs, session, pad, self.tokenizer)
        if not wants_dict:
            return seqs
        out.sequences = seqs
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Plain forward passes are not monitored; they go to the model unchanged."""
        return self.model(*args, **kwargs)

    # ---- lifetime ---------------------------------------------------------------------------
    def detach(self) -> nn.Module:
        """Remove every hook; the model is returned exactly as it was before ``attach``."""
        self.hooks.remove()
        return self.model

    def __enter__(self) -> GuardedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper: config, device, tokenizer ...
        if name in ("model", "hooks"):
            raise AttributeError(name)
        return getattr(self.model, name)


def _cache_of(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


def attach(
    model: nn.Module,
    policy: PolicySource = "rules/default.yaml",
    *,
    saes: Mapping[str, SAE] | None = None,
    dispatcher: Dispatcher | None = None,
    tokenizer: Any = None,
    ignore_first_token: bool = True,
    health_every: int = 256,
    **policy_kwargs: Any,
) -> GuardedModel:
    """Monitor ``model`` with ``policy``; returns a :class:`GuardedModel` (also a context manager).

    ``policy``: a file path or shipped name, a :class:`CompiledPolicy`, or a
    :class:`PolicyWatcher` (hot reload: its snapshot is read once per ``generate`` call).
    ``saes``: SAE objects by the policy's SAE names, instead of loading them from disk.
    ``dispatcher``: receives events, step statistics and degraded tokens
    (:mod:`monitor.runtime.dispatch` builds one from Metrics, AuditLog and AlertDispatcher).
    ``tokenizer``: needed for audit text excerpts and to put a replace message into the ids.
    ``ignore_first_token``: each row's first token (a massive-activation outlier on common
    models) is scored with all features at 0. ``health_every``: every that many monitored
    tokens (and on the first forward) a sampled dense encode of each SAE reports L0 and
    explained variance to ``dispatcher.on_health`` (:mod:`monitor.runtime.health`); 0 disables
    it. Extra keywords go to ``load_policy``
    (``d_sae=``, ``resolver=`` ...). SAEs run in the model's dtype on each hook's device.
    """
    return GuardedModel(
        model,
        policy,
        saes=saes,
        dispatcher=dispatcher,
        tokenizer=tokenizer,
        ignore_first_token=ignore_first_token,
        health_every=health_every,
        policy_kwargs=policy_kwargs,
    )
