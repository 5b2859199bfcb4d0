"""Per-call monitoring state: which columns are new, which tokens are valid, evaluate, act.

One :class:`Session` lives for one ``generate`` (or one scan batch). The hooks call it:

- :meth:`begin_forward` (a pre-hook on the whole model) learns which sequence columns this
  forward holds: with the KV cache the layer sees ``(B, T_new, d)``; without it the whole
  sequence ``(B, L, d)``, so columns already seen are sliced off (``offset``).
- :meth:`on_hook` (one hook per hook point) subset-encodes the new columns; the last hook point
  of the forward evaluates the policy and applies ablate/clamp deltas on the device.
- :meth:`token_appended` (the stopping criterion) records the validity of the column just
  sampled: false for pads, finished rows and rows the monitor has stopped.

Flags stay on the device. Each forward makes ONE host read (:meth:`Step.read`: per-row token
counts and flags); only when a rule matched, a token was degraded or a row must stop are details
read, and the ablate/clamp edit runs only when that read shows an intervention active.

Everything a step needs that does not depend on the activations is decided on the host or built
once (the binding's tables, the evaluator's per-device tensors): on a CPU each tensor op costs
several microseconds of dispatch, so the per-token path spends none on no-op casts or masks
known to be all false (tests/monitor/runtime/test_op_budget.py holds the count).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from monitor.runtime.binding import HookGroup, PolicyBinding
from monitor.runtime.events import DegradedEvent, Dispatcher, MatchEvent, StepStats, log_safely
from monitor.runtime.health import HealthSampler, sae_health
from monitor.runtime.host import HostSide
from monitor.runtime.report import MonitorReport, RowReport
from monitor.runtime.stepping import Flags, Step, evaluate_phases


class StopForward(Exception):
    """Raised by the last hook in a final/scan forward: nothing after the hooks is needed."""


@dataclass
class _Forward:
    offset: int  # first column of the layer input that is new
    start: int  # absolute column of offset
    n: int  # new columns
    parts: dict[int, list[torch.Tensor] | None] = field(default_factory=dict)
    error: str | None = None
    t_host: float = 0.0
    health: bool = False  # sample SAE health in this forward (host decision, no read)
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # group -> (B, n, d) input
    eligible: torch.Tensor | None = None  # (B, n) valid and not a row's first token
    first: torch.Tensor | None = None  # (B, n) a row's first token, read as all-zero


class Session(HostSide):
    """Monitoring state of one call over ``B`` rows (after ``num_return_sequences``)."""

    def __init__(
        self,
        binding: PolicyBinding,
        dispatcher: Dispatcher,
        mask: torch.Tensor,
        contexts: Sequence[Mapping[str, Any]],
        *,
        prompt_len: int | None = None,
        tokenizer: Any = None,
        eos_ids: Sequence[int] = (),
        ignore_first_token: bool = True,
        record: bool = False,
        replay_edits: bool = False,
        health: HealthSampler | None = None,
    ) -> None:
        B, L0 = mask.shape  # (B, L0) 2-D attention mask of the prompt
        self.binding, self.policy, self.dispatcher = binding, binding.policy, dispatcher
        self.device = mask.device
        self.B, self.L0 = B, L0 if prompt_len is None else prompt_len
        self.contexts = list(contexts)
        self.state = binding.evaluator.new_state(B, self.device, self.contexts)
        self._valid = [mask.to(torch.bool)]  # (B, L_i) chunks: validity of every column so far
        self._valid_len = L0  # columns in those chunks
        # host lower bound of state.pos per row: rows past their first token need no mask
        self._pos_floor = [0] * B
        self._all_started = False  # every row is past its first token
        self.ids: torch.Tensor | None = None  # (B, L) token ids, kept only for audit text
        self.keep_ids = bool(tokenizer is not None and self.policy.audit.include_text)
        self.tokenizer = tokenizer
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long, device=self.device)
        self.alive = torch.ones(B, 1, dtype=torch.bool, device=self.device)  # (B, 1)
        self.stop_now = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.stop_pending = False  # host copy of stop_now.any(), known from the step's read
        self.halted = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.halt_col: dict[int, int] = {}  # row -> column of the token where it ended
        self.seen = 0
        self.final = False
        self.ignore_first = ignore_first_token
        self.record = record
        # (start, acts (B, n, K), valid (B, n), probe scores (B, n, P)) of each forward
        self.recorded: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.health = health if health is not None and health.enabled else None
        self.replay = replay_edits and binding.intervenes
        self.edits: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (target, mask)
        self.fwd: _Forward | None = None
        self.hookset: Any = None  # set by HookSet.active
        self._event_cols: list[int] = []  # padded column of each event of the current step
        self.by_name = {g.point.name: g for g in binding.groups}
        self.report = MonitorReport(
            policy=self.policy.name,
            revision=self.policy.revision,
            sha256=self.policy.sha256,
            rows=[RowReport(row=b, context=dict(self.contexts[b])) for b in range(B)],
        )

    # ---- hooks ------------------------------------------------------------------------------
    def begin_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Model pre-hook: which columns does this forward hold, and which of them are new?"""
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        src = ids if isinstance(ids, torch.Tensor) else emb
        if not isinstance(src, torch.Tensor):
            raise RuntimeError("a monitored forward needs input_ids or inputs_embeds")
        T = int(src.shape[1])
        am = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(am, torch.Tensor) and am.dim() == 2:
            total = int(am.shape[1])
        else:
            total = self.seen + T if cache is not None else T
        start = total - T
        if start > self.seen:
            raise RuntimeError(f"monitor missed columns {self.seen}..{start - 1}")
        n = total - self.seen
        self.fwd = _Forward(offset=self.seen - start, start=self.seen, n=n) if n > 0 else None
        if self.fwd is not None and self.health is not None:
            self.fwd.health = self.health.due()
        if self.fwd is not None and self.keep_ids and isinstance(ids, torch.Tensor):
            new = ids[:, self.fwd.offset :]  # (B, n)
            self.ids = new if self.ids is None else torch.cat([self.ids, new], dim=1)

    @property
    def valid_all(self) -> torch.Tensor:
        """(B, L) bool: validity of every column so far (false on pads and finished rows)."""
        if len(self._valid) > 1:
            self._valid = [torch.cat(self._valid, dim=1)]
        return self._valid[0]

    def _valid_cols(self, start: int, n: int) -> torch.Tensor:
        """(B, n) validity of columns ``[start, start + n)``: a decode step's column is the
        chunk the stopping criterion appended, without a concatenation."""
        last = self._valid[-1]
        if start + n == self._valid_len and n == last.shape[1]:
            return last
        return self.valid_all[:, start : start + n]

    def on_hook(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """Layer hook: encode the new columns; the last hook point evaluates and edits."""
        fwd, group = self.fwd, self.by_name.get(name)
        if fwd is None or group is None or group.index in fwd.parts:
            return None
        t0 = time.perf_counter()
        x_new = x if fwd.offset == 0 else x[:, fwd.offset :]  # (B, n, d)
        if fwd.health:
            fwd.hidden[group.index] = x_new  # a reference (edits make new tensors)
        try:
            fwd.parts[group.index] = [b.encode(x_new) for b in group.saes]  # each (B, n, K_s)
        except Exception as exc:  # fail mode decides; never passes as clean
            fwd.parts[group.index] = None
            fwd.error = fwd.error or f"{type(exc).__name__}: {exc}"
        if len(fwd.parts) < len(self.binding.groups):
            fwd.t_host += time.perf_counter() - t0
            return None
        step = self._evaluate(fwd)
        flags = step.read(self._prompt_cols(fwd))  # the one device -> host read of the step
        out = None
        if not self.final and (flags.edit or self.replay):  # final: nothing runs after it
            out = self._edit(group, x, fwd, step)
        fwd.t_host += time.perf_counter() - t0
        self._after(fwd, step, flags)
        self.seen, self.fwd = fwd.start + fwd.n, None
        if self.final:
            raise StopForward
        return out

    # ---- evaluation -------------------------------------------------------------------------
    def _prompt_cols(self, fwd: _Forward) -> int:
        return max(0, min(self.L0 - fwd.start, fwd.n))  # prompt columns in this forward

    def _evaluate(self, fwd: _Forward) -> Step:
        valid = self._valid_cols(fwd.start, fwd.n)  # (B, n)
        acts = None
        if fwd.error is None:
            acts = self._gather(fwd)  # (B, n, K)
            # position 0 is a massive-activation outlier: no features (rows known to be past
            # their first token, from earlier reads, need no mask)
            if self.ignore_first and not self._all_started:
                first = valid & (self.state.count + valid.long().cumsum(1) == 1)
                acts = acts.masked_fill(first.unsqueeze(-1), 0)
                fwd.first = first
        if fwd.health:  # token index > 0 (state.pos is advanced by the evaluator below)
            fwd.eligible = valid & (self.state.count + valid.long().cumsum(1) > 1)
        p = self._prompt_cols(fwd)
        step = evaluate_phases(self.binding, self.state, acts, valid, p, fwd.error)
        if self.record and step.acts is not None:
            self.recorded.append((fwd.start, step.acts, valid, step.probe_scores))
        return step

    def _gather(self, fwd: _Forward) -> torch.Tensor:
        dtype = self.binding.dtype
        first = next(v for v in fwd.parts.values() if v)
        if self.binding.single:
            vals = first[0]  # (B, n, K): the one SAE's values are acts
            if vals.dtype == dtype and vals.device == self.device:
                return vals
        B, n = first[0].shape[:2]
        acts = torch.zeros(B, n, self.policy.K, dtype=dtype, device=self.device)  # (B, n, K)
        for g in self.binding.groups:
            for bound, vals in zip(g.saes, fwd.parts[g.index] or [], strict=True):
                acts[..., bound.cols] = vals.to(self.device, dtype)
        return acts

    def _edit(
        self, group: HookGroup, x: torch.Tensor, fwd: _Forward, step: Step
    ) -> torch.Tensor | None:
        """x with the step's ablate/clamp deltas on the new columns (and, without a KV cache,
        the earlier columns' recorded edits replayed).

        With a negative clamp (:attr:`PolicyBinding.negative_clamp`), tokens whose features are
        not read (a row's ignored first token, outliers) are not edited: there a feature reads
        0 without being 0, and only a negative cap would move it."""
        if not group.edits or step.acts is None:
            return None
        dev = x.device
        unread = self.binding.negative_clamp
        new, mask = step.targets  # (B, n, K): NaN/inf tokens are never edited
        if unread and fwd.first is not None:
            mask = mask & ~fwd.first.unsqueeze(-1)  # (B, n, K)
        new, mask, acts = _on(new, dev), _on(mask, dev), _on(step.acts, dev)
        x_new = x0 = x if fwd.offset == 0 else x[:, fwd.offset :]
        for b in group.saes:
            if b.editor is not None:
                f, nb, mb = acts, new, mask  # (B, n, K_s) this SAE's columns
                if not self.binding.single:
                    f, nb, mb = acts[..., b.cols], new[..., b.cols], mask[..., b.cols]
                read = b.read(x0) if unread else None  # (B, n, 1) not an outlier
                if read is not None:
                    mb = mb & read
                diff = torch.where(mb, nb - f, 0)  # 0 where nothing changes
                x_new = b.editor.apply_delta(x_new, diff)
        out = x_new
        if fwd.offset:  # no KV cache: the earlier columns need their edits again
            old = self._replay(group, x[:, : fwd.offset], fwd.start - fwd.offset)
            out = torch.cat([old, x_new], dim=1)  # (B, L, d)
        if self.replay:
            self._record_edit(group, new.masked_fill(~_on(step.finite, dev), 0), mask)
        return out

    def _record_edit(self, group: HookGroup, new: torch.Tensor, mask: torch.Tensor) -> None:
        if group.index in self.edits:
            t, m = self.edits[group.index]
            new, mask = torch.cat([t, new], 1), torch.cat([m, mask], 1)
        self.edits[group.index] = (new, mask)

    def _replay(self, group: HookGroup, old: torch.Tensor, start: int) -> torch.Tensor:
        if group.index not in self.edits:
            return old
        target, mask = self.edits[group.index]  # (B, seen, K)
        target, mask = target[:, start:], mask[:, start:]
        old0 = old
        for b in group.saes:
            if b.editor is not None:
                f = b.encode(old)  # (B, n_old, K_s) recomputed pre-intervention values
                mb = mask[..., b.cols]  # (B, n_old, K_s); the first tokens are left out already
                read = b.read(old0) if self.binding.negative_clamp else None
                old = b.editor.apply(old, f, target[..., b.cols], mb if read is None else mb & read)
        return old

    # ---- host side --------------------------------------------------------------------------
    def _after(self, fwd: _Forward, step: Step, flags: Flags) -> None:
        """Act on the step's read: report counts, events, stops and statistics."""
        p = self._prompt_cols(fwd)
        prompt_n, completion_n = flags.prompt, flags.completion
        n_degraded = sum(flags.degraded)
        closed = self.policy.on_error == "fail_closed"
        halt_rows = [
            b
            for b in range(self.B)
            if (flags.halt[b] or (closed and flags.degraded[b])) and b not in self.halt_col
        ]
        phase = "completion" if fwd.n > p else "prompt"
        for b, row in enumerate(self.report.rows):
            row.prompt_tokens += prompt_n[b]
            row.completion_tokens += completion_n[b]
        if step.error is None and not self._all_started:  # state.pos advanced by these
            for b in range(self.B):
                self._pos_floor[b] += prompt_n[b] + completion_n[b]
            self._all_started = all(self._pos_floor)
        tokens = sum(prompt_n) + sum(completion_n)
        if self.health is not None:
            self.health.tick(tokens)
            if fwd.health:
                self._sample_health(fwd)
        events = self._events(fwd, step) if flags.matched else []
        degraded = self._degraded(step, flags.degraded, phase) if n_degraded else []
        halts = self._halt(fwd, step, halt_rows) if halt_rows else []
        exported: dict[str, list[float]] = {}
        if self.policy.export_columns and step.acts is not None:
            exported = flags.exported if flags.exported is not None else self._exported(step)
        self.report.steps += 1
        self.report.overhead_s += fwd.t_host
        self._dispatch(
            fwd,
            StepStats(
                self.policy.name,
                phase,
                tokens,
                n_degraded,
                fwd.t_host,
                exported,
                step.kind,
                halts,
                self.policy.sha256,
            ),
            events,
            degraded,
        )

    def _dispatch(
        self,
        fwd: _Forward,
        stats: StepStats,
        events: list[MatchEvent],
        degraded: list[DegradedEvent],
    ) -> None:
        """Hand the step to the dispatcher. A failing sink never breaks generation; under
        ``fail_closed`` the rows whose events could not be delivered are stopped."""
        try:
            if events:
                self.dispatcher.on_events(events)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log_safely("error", "monitor.dispatch_failed", error=error, events=len(events))
            if self.policy.on_error == "fail_closed":
                self._halt_on_sink_error(events, error)
        try:
            if degraded:
                self.dispatcher.on_degraded(degraded)
            self.dispatcher.on_step(stats)
        except Exception as exc:
            log_safely("error", "monitor.dispatch_failed", error=f"{type(exc).__name__}: {exc}")

    def _sample_health(self, fwd: _Forward) -> None:
        """SAE health on this forward's eligible tokens (see :mod:`monitor.runtime.health`);
        never raises into generation."""
        assert self.health is not None
        if fwd.eligible is None:
            return
        reported = False
        for g in self.binding.groups:
            x = fwd.hidden.get(g.index)
            if x is None:
                continue
            try:
                sample = self.health.collect(g.point.name, x[fwd.eligible.to(x.device)])
                if sample is None:
                    continue
                for b in g.saes:
                    l0, ev = sae_health(b.sae, sample)
                    reported = True
                    on_health = getattr(self.dispatcher, "on_health", None)
                    if on_health is not None:
                        on_health(b.spec.name, l0, ev, int(sample.shape[0]))
            except Exception as exc:
                reported = True  # do not retry on every step
                log_safely("error", "monitor.health_failed", error=f"{type(exc).__name__}: {exc}")
        if reported:
            self.health.done()

    # ---- generation control -----------------------------------------------------------------
    def token_appended(self, input_ids: torch.Tensor, done: torch.Tensor | None) -> torch.Tensor:
        """Stopping criterion: validity of the column just sampled; returns the halted rows.

        ``done`` (B,) are rows other criteria (the caller's) end after this token.
        """
        # (B, 1) throughout: the column just sampled. Its token is monitored unless the row
        # ended (stop_now is all false unless the host set it, which it knows)
        checked = self.alive & ~self.stop_now[:, None] if self.stop_pending else self.alive
        finished = torch.isin(input_ids[:, -1:], self.eos) if self.eos.numel() else None
        if done is not None:
            done = done.to(self.device, torch.bool)[:, None]
            finished = done if finished is None else finished | done
        self.alive = checked if finished is None else checked > finished  # & ~finished
        self._valid.append(checked)
        self._valid_len += 1
        if self.stop_pending:
            self.stop_now = torch.zeros_like(self.stop_now)
            self.stop_pending = False
        return self.halted  # never changed in place (see _halt)

    def finish(self) -> MonitorReport:
        """Mark the report complete and tell the dispatcher."""
        self.report.finished = True
        try:
            self.dispatcher.on_finish(self.report)
        except Exception as exc:
            log_safely("error", "monitor.dispatch_failed", error=f"{type(exc).__name__}: {exc}")
        return self.report


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, without dispatching a copy when it already is."""
    return t if t.device == device else t.to(device)
