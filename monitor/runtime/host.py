"""Host-side actions of a step, once its one read showed something to do: build match events
(and the report's firings), count degraded tokens, end rows that stop or are replaced.

Mixed into :class:`~monitor.runtime.session.Session`; every method here reads device tensors
back, so each runs only when a rule matched, a token was degraded or a row must stop.
"""

from __future__ import annotations

from typing import Any

import torch

from monitor.runtime.events import DegradedEvent, MatchEvent, log_safely
from monitor.runtime.report import Firing
from monitor.runtime.stepping import Step


class HostSide:
    """Methods of :class:`Session` that act on the host (see the module docstring)."""

    policy: Any
    report: Any
    contexts: list[Any]
    L0: int
    keep_ids: bool
    ids: torch.Tensor | None
    tokenizer: Any
    stop_now: torch.Tensor
    halted: torch.Tensor
    stop_pending: bool
    halt_col: dict[int, int]
    _event_cols: list[int]

    @property
    def valid_all(self) -> torch.Tensor:  # (B, L) bool; Session provides it
        raise NotImplementedError

    def _events(self, fwd: Any, step: Step) -> list[MatchEvent]:
        pol = self.policy
        hits = step.match.nonzero().tolist()  # [(b, t, r)]
        self._event_cols = [fwd.start + t for _, t, _ in hits]
        bt = torch.tensor([[b, t] for b, t, _ in hits], dtype=torch.long, device=step.match.device)
        need = sorted({pol.feature_columns[n] for *_, r in hits for n in pol.rules[r].features})
        at = {c: j for j, c in enumerate(need)}  # column → position in the gathered rows
        acts = (
            step.acts_f32[bt[:, 0], bt[:, 1]][:, need].tolist()  # (hits, len(need))
            if step.acts_f32 is not None
            else None
        )
        probes = step.probe_scores[bt[:, 0], bt[:, 1]].tolist()  # (hits, P)
        tok = step.token_index[bt[:, 0], bt[:, 1]].tolist()
        tops = self._probe_tops(step, bt, [pol.rules[r] for *_, r in hits])
        out = []
        for i, (b, t, r) in enumerate(hits):
            rule = pol.rules[r]
            feats = {
                n: float(acts[i][at[pol.feature_columns[n]]]) if acts is not None else float("nan")
                for n in rule.features
                if n in pol.feature_columns
            }
            phase = "prompt" if fwd.start + t < self.L0 else "completion"
            ev = MatchEvent(
                context=self.contexts[b],
                row=b,
                token_index=int(tok[i]),
                phase=phase,
                rule=rule.id,
                severity=rule.severity,
                mode=rule.mode,
                actions=rule.action_kinds,
                features=feats,
                probes={n: float(probes[i][pol.probe(n).index]) for n in rule.probes},
                probe_features=tops[i],
                policy=pol.name,
                revision=pol.revision,
                sha256=pol.sha256,
                text=self._excerpt(b, fwd.start + t),
            )
            out.append(ev)
            self.report.rows[b].fired.append(
                Firing(
                    rule.id,
                    rule.severity,
                    rule.mode,
                    ev.token_index,
                    phase,
                    rule.action_kinds,
                    feats,
                    ev.probes,
                )
            )
        return out

    def _probe_tops(
        self, step: Step, bt: torch.Tensor, rules: list[Any], top: int = 5
    ) -> list[dict[str, dict[str, float]]]:
        """Per hit: for each probe its rule reads, the inputs with the largest contributions
        ``w_i · f_i`` at the matching token (what drove the score there)."""
        pol = self.policy
        out: list[dict[str, dict[str, float]]] = [{} for _ in rules]
        if step.acts_f32 is None or not any(r.probes for r in rules):
            return out
        acts = step.acts_f32[bt[:, 0], bt[:, 1]]  # (hits, K)
        for i, rule in enumerate(rules):
            for name in rule.probes:
                p = pol.probe(name)
                contrib = acts[i] * pol.tensors.probe_w[:, p.index].to(acts.device)  # (K,)
                val, col = contrib.topk(min(top, contrib.numel()))
                own = pol.probe_input_names[p.index]
                out[i][name] = {
                    own.get(c, pol.feature_names[c]): round(float(v), 6)
                    for v, c in zip(val.tolist(), col.tolist(), strict=True)
                    if v > 0
                }
        return out

    def _excerpt(self, b: int, col: int, width: int = 16) -> str | None:
        if not self.keep_ids or self.ids is None:
            return None
        lo = max(0, col + 1 - width)
        keep = self.valid_all[b, lo : col + 1].cpu()
        ids = self.ids[b, lo : col + 1].cpu()[keep].tolist()
        return str(self.tokenizer.decode(ids))

    def _degraded(self, step: Step, per_row: list[int], phase: str) -> list[DegradedEvent]:
        """``per_row`` (B,): the step's degraded tokens of each row (from its read)."""
        reason = step.error or "non-finite feature value"
        out = []
        for b, n in enumerate(per_row):
            if n:
                self.report.rows[b].degraded_tokens += int(n)
                if reason not in self.report.rows[b].errors:
                    self.report.rows[b].errors.append(reason)
                out.append(
                    DegradedEvent(
                        self.contexts[b],
                        b,
                        int(n),
                        phase,
                        reason,
                        step.kind,
                        self.policy.on_error,
                        self.policy.name,
                    )
                )
        log_safely(
            "warning",
            "monitor.degraded",
            policy=self.policy.name,
            reason=reason,
            tokens=sum(per_row),
            on_error=self.policy.on_error,
        )
        return out

    def _halt(self, fwd: Any, step: Step, rows: list[int]) -> list[tuple[int | None, str]]:
        """Stop/replace (or fail_closed) ``rows``: flags for the logits processor and criterion.

        ``halted`` is replaced, never changed in place: the stopping criterion returns it."""
        mask = torch.zeros_like(self.halted)
        mask[rows] = True
        self.stop_now = self.stop_now | mask
        self.halted = self.halted | mask
        self.stop_pending = True
        halts: list[tuple[int | None, str]] = []
        for b in rows:
            row = self.report.rows[b]
            hit = step.halt[b].nonzero().flatten()
            if hit.numel():
                t = int(hit[0])
                is_stop = bool(step.stop[b, t])
                index = int((step.stop_rule if is_stop else step.replace_rule)[b, t])
                rule = self.policy.rules[index]
                row.halt_rule, row.halt_reason = rule.id, "stop" if is_stop else "replace"
                halts.append((index, row.halt_reason))
                if not is_stop:
                    row.replaced, row.replacement = True, rule.replace_message
            else:  # fail_closed on a degraded token
                t = int(step.degraded[b].nonzero().flatten()[0])
                row.halt_rule, row.halt_reason = "on_error", "error"
                halts.append((None, "error"))
            row.stopped = row.halt_reason != "replace"
            row.halt_token = int(step.token_index[b, t])
            self.halt_col[b] = fwd.start + t
        return halts

    def _halt_on_sink_error(self, events: list[MatchEvent], error: str) -> None:
        """``fail_closed``: an audit event that could not be written stops its row."""
        for ev, col in zip(events, self._event_cols, strict=True):
            b = ev.row
            if b in self.halt_col:
                continue
            row = self.report.rows[b]
            row.stopped, row.halt_rule, row.halt_reason = True, "on_error", "error"
            row.halt_token, row.errors = ev.token_index, [*row.errors, error]
            self.halt_col[b] = col
            mask = torch.zeros_like(self.halted)
            mask[b] = True
            self.halted, self.stop_now = self.halted | mask, self.stop_now | mask
            self.stop_pending = True

    def _exported(self, step: Step) -> dict[str, list[float]]:
        """Exported features' values on the step's valid tokens (forwards of several columns;
        a one-column forward has them from its read)."""
        if step.acts_f32 is None:
            return {}
        cols = list(self.policy.export_columns)
        vals = step.acts_f32[step.valid][:, cols].cpu()  # (n_valid, E)
        return {self.policy.feature_names[c]: vals[:, i].tolist() for i, c in enumerate(cols)}
