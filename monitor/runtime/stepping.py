"""One evaluation of the policy over a forward's new columns, split by phase, and its host read.

A forward's new columns are prompt columns, completion columns, or (in ``scan``) both: the
evaluator advances once per phase (``prompt`` first) and the results are joined back along T.
An exception in the evaluator, or one already raised by an SAE encode, gives a *degraded* step:
nothing matched, every valid token counted as not checked.

Per generated token only :meth:`Evaluator.advance` (conditions and temporal state) and
:meth:`Step.read` (one small tensor, read once) run. Everything else a step can tell (token
indices, precedence winners, ablate/clamp targets) is computed on first use, which happens only
when the read showed a match, a stop or an active intervention.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from monitor.policy.evaluator import Advanced, EvalState, StepResult
from monitor.runtime.binding import PolicyBinding
from monitor.runtime.edits import edit_targets


@dataclass(frozen=True)
class Flags:
    """What the host learns from a step's one read, per row ``b``."""

    prompt: list[int]  # (B,) valid prompt tokens
    completion: list[int]  # (B,) valid completion tokens
    degraded: list[int]  # (B,) valid tokens that were not checked
    halt: list[bool]  # (B,) an active enforce stop/replace rule ends the row
    matched: bool  # some rule matched somewhere
    edit: bool  # some enforce ablate/clamp rule is active somewhere
    exported: dict[str, list[float]] | None  # export feature -> values of the valid tokens


class Step:
    """A forward's evaluation: ``parts`` are ``(first column, end column, Advanced)`` per phase,
    or ``None`` for a degraded step. Every tensor is ``(B, n, ...)`` on the state's device."""

    def __init__(
        self,
        binding: PolicyBinding,
        valid: torch.Tensor,
        acts: torch.Tensor | None,
        parts: list[tuple[int, int, Advanced]] | None,
        error: str | None = None,
        kind: str = "nonfinite",
    ) -> None:
        self.binding, self.valid, self.parts = binding, valid, parts
        self.acts = acts if parts is not None else None  # (B, n, K) pre-intervention
        self.error = error
        self.kind = kind  # degraded reason word: sae_error | policy_error | nonfinite
        self._finite: torch.Tensor | None = None  # (B, n, 1) every value finite
        self._active_f: torch.Tensor | None = None  # (B, n, R) active as float32 (read)

    # ---- the per-step read ------------------------------------------------------------------
    def read(self, prompt_cols: int) -> Flags:
        """The step's one device → host read; columns ``[0, prompt_cols)`` are prompt tokens.

        One ``(B, n, C)`` tensor is built and read (summed over the columns of a prefill). Per
        token: valid; degraded (valid and some value NaN/inf; a one-column forward reads "all
        finite" and the host does the "and"); any rule matched; how many enforce stop/replace
        and ablate/clamp rules are active (when the policy has such rules); the exported
        features' values (one-column forwards; a prefill reads them apart)."""
        pol = self.binding.policy
        B, n = self.valid.shape
        parts, acts = self.parts, self.acts
        v = parts[0][2].valid3 if parts and len(parts) == 1 else self.valid.unsqueeze(-1)
        cols = [v]  # (B, n, 1) each, then wider
        roles = export = None
        if parts is not None and acts is not None:
            # degraded = valid & ~finite; for one column the host does the "and"
            cols += [self.finite if n == 1 else v > self.finite]
            cols.append(self.match.any(-1, keepdim=True))
            roles = self.binding.rule_roles(self.valid.device)  # (R, 2) or None
            if roles is not None:
                self._active_f = self.active.to(roles.dtype)  # (B, n, R) float32
                cols.append(self._active_f @ roles)  # (B, n, 2)
            if pol.export_columns and n == 1:
                export = self.binding.export_index(self.valid.device)
                cols.append(acts.index_select(-1, export))  # (B, 1, E)
        X = torch.cat(cols, dim=-1) if len(cols) > 1 else v  # (B, n, C)
        split = 0 < prompt_cols < n
        if split:  # (B, 2, C): prompt, completion
            sums = torch.stack([X[:, :prompt_cols].sum(1), X[:, prompt_cols:].sum(1)], 1)
        else:  # (B, 1, C)
            sums = X if n == 1 else X.sum(1, keepdim=True)
        per_phase: list[list[list[float]]] = sums.tolist()  # the read
        tot = [[sum(c) for c in zip(*rows, strict=True)] for rows in per_phase]  # (B, C)
        prompt = [int(r[0][0]) if split or prompt_cols >= n else 0 for r in per_phase]
        completion = [int(t[0]) - p for t, p in zip(tot, prompt, strict=True)]
        if self.parts is None:  # degraded step: every valid token
            degraded = [int(t[0]) for t in tot]
            return Flags(prompt, completion, degraded, [False] * B, False, False, None)
        exported = None
        if export is not None:
            first = 5 if roles is not None else 3  # column of the first exported feature
            exported = {
                pol.feature_names[c]: [float(t[first + i]) for t in tot if t[0]]
                for i, c in enumerate(pol.export_columns)
            }
        return Flags(
            prompt,
            completion,
            degraded=[int(t[0] and not t[1]) for t in tot] if n == 1 else [int(t[1]) for t in tot],
            halt=[roles is not None and t[3] > 0 for t in tot],
            matched=any(t[2] for t in tot),
            edit=roles is not None and any(t[4] > 0 for t in tot),
            exported=exported,
        )

    # ---- on demand --------------------------------------------------------------------------
    def _join(self, name: str) -> torch.Tensor:
        assert self.parts is not None
        ts = [getattr(adv, name) for _, _, adv in self.parts]
        return ts[0] if len(ts) == 1 else torch.cat(ts, dim=1)

    def _joined(self, name: str) -> torch.Tensor:
        assert self.parts is not None
        ts = [getattr(r, name) for r in self.results]
        return ts[0] if len(ts) == 1 else torch.cat(ts, dim=1)

    def _none(self, dtype: torch.dtype, width: int | None = None, fill: int = 0) -> torch.Tensor:
        shape = tuple(self.valid.shape) + (() if width is None else (width,))
        return torch.full(shape, fill, dtype=dtype, device=self.valid.device)

    @cached_property
    def results(self) -> list[StepResult]:
        """The evaluator's full :class:`StepResult` of each phase part (precedence and all)."""
        assert self.parts is not None
        return [self.binding.evaluator.enforce(adv) for _, _, adv in self.parts]

    @property
    def finite(self) -> torch.Tensor:
        """(B, n, 1) bool: every feature value of the token is finite."""
        assert self.acts is not None
        if self._finite is None:
            self._finite = torch.isfinite(self.acts).all(-1, keepdim=True)
        return self._finite

    @cached_property
    def acts_f32(self) -> torch.Tensor | None:
        """(B, n, K) float32 values for events/exports (None: not encoded)."""
        if self.acts is None or self.acts.dtype == torch.float32:
            return self.acts
        return self.acts.float()

    @cached_property
    def targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(new (B, n, K) in acts' dtype, mask (B, n, K) bool)``: the ablate/clamp targets
        and where they apply, never on a token with a NaN/inf value (degraded, not edited)."""
        assert self.acts is not None and self.acts_f32 is not None
        tables = self.binding.edit_tables(self.valid.device)
        new, intervene = edit_targets(
            tables, self.active, self.acts_f32, self.acts.dtype, self._active_f
        )
        return new, intervene & self.finite

    @cached_property
    def match(self) -> torch.Tensor:
        """(B, n, R) bool: the rule matched here (one event each)."""
        return self._join("match") if self.parts else self._none(torch.bool, self.binding.policy.R)

    @cached_property
    def active(self) -> torch.Tensor:
        """(B, n, R) bool: the rule is active here."""
        return self._join("active") if self.parts else self._none(torch.bool, self.binding.policy.R)

    @cached_property
    def token_index(self) -> torch.Tensor:
        """(B, n) long, -1 on invalid tokens."""
        return self._join("token_index") if self.parts else self._none(torch.long, fill=-1)

    @cached_property
    def probe_scores(self) -> torch.Tensor:
        """(B, n, P) probe scores."""
        if self.parts:
            return self._join("probe_scores")
        return self._none(torch.float32, self.binding.policy.P)

    @cached_property
    def degraded(self) -> torch.Tensor:
        """(B, n) bool: valid tokens that were not checked."""
        if self.parts is None or self.acts is None:
            return self.valid.clone()
        return self.valid & ~torch.isfinite(self.acts).all(-1)

    @cached_property
    def stop(self) -> torch.Tensor:
        """(B, n) bool: an active enforce rule stops the row."""
        return self._joined("stop") if self.parts else self._none(torch.bool)

    @cached_property
    def stop_rule(self) -> torch.Tensor:
        return self._joined("stop_rule") if self.parts else self._none(torch.long, fill=-1)

    @cached_property
    def replace_rule(self) -> torch.Tensor:
        return self._joined("replace_rule") if self.parts else self._none(torch.long, fill=-1)

    @cached_property
    def halt(self) -> torch.Tensor:
        """(B, n) bool: stop or replace."""
        if not self.parts:
            return self._none(torch.bool)
        return self.stop | self._joined("replace")


def evaluate_phases(
    binding: PolicyBinding,
    state: EvalState,
    acts: torch.Tensor | None,
    valid: torch.Tensor,
    prompt_cols: int,
    error: str | None,
) -> Step:
    """Advance ``state`` over ``acts (B, n, K)`` with ``valid (B, n)``: columns
    ``[0, prompt_cols)`` as the prompt phase, the rest as completion. ``acts=None``/``error``
    gives a degraded step."""
    if acts is None or error is not None:
        return Step(binding, valid, None, None, error or "features were not encoded", "sae_error")
    n = valid.shape[1]
    spans = [(0, prompt_cols, "prompt"), (prompt_cols, n, "completion")]
    whole = [s for s in spans if s[1] > s[0]]
    try:
        parts = [
            (
                a,
                b,
                binding.evaluator.advance(
                    acts if len(whole) == 1 else acts[:, a:b],
                    valid if len(whole) == 1 else valid[:, a:b],
                    phase,
                    state,
                ),
            )
            for a, b, phase in whole
        ]
    except Exception as exc:  # evaluator failure: fail mode decides
        return Step(binding, valid, None, None, f"{type(exc).__name__}: {exc}", "policy_error")
    return Step(binding, valid, acts, parts)
