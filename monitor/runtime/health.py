"""Runtime SAE health: a sampled dense encode every N monitored tokens (CONTRACTS "Metrics").

Every ``health_every`` monitored tokens (an ``attach`` option; 0 disables it) the runtime takes
a few of the current forward's *valid* hooked activations at each SAE's hook point (never a
row's first token, never pads or finished rows), runs that SAE's full dense ``encode`` and
``decode`` on them and reports, through :meth:`Dispatcher.on_health`:

- **L0**: mean number of non-zero features per sampled token;
- **explained variance**: ``1 − SSE / SST`` with ``SSE = Σ‖x − x̂‖²`` and ``SST = Σ‖x − x̄‖²``
  about the sample mean ``x̄`` (NaN when ``SST`` is 0).

The first monitored forward is sampled, then the first forward after every ``health_every``
further tokens. A sample holds up to :data:`SAMPLE_TOKENS` tokens (evenly spaced over the
eligible ones, in row then column order); when a forward has fewer than :data:`MIN_TOKENS`
eligible tokens (single-row decoding gives one per step), they are kept and the next forwards
add theirs until there are enough. The decision to sample is a host counter, so forwards that
are not sampled make no extra host read; a sampled forward makes one more. Activations are read
before any intervention and never modified, so outputs are unchanged.
"""

from __future__ import annotations

import math
import threading

import torch

from sae.base import SAE

SAMPLE_TOKENS = 32
"""Most tokens in one health sample."""
MIN_TOKENS = 8
"""Fewest tokens a sample is computed from (fewer are carried over to the next forward)."""


def sae_health(sae: SAE, x: torch.Tensor) -> tuple[float, float]:
    """``(L0, explained variance)`` of ``sae`` on ``x (n, d_in)`` (dense encode and decode in
    the SAE's dtype on its device; the statistics in float32). One host read."""
    with torch.no_grad():
        x_n, norm = sae.normalize(x.to(sae.device))
        f = sae.encode_normalized(x_n)  # (n, d_sae)
        x_hat = sae.denormalize(sae.decode_normalized(f), norm).float()  # (n, d_in)
        xf = x.to(x_hat.device).float()
        l0 = (f != 0).sum(-1).float().mean()
        sse = (xf - x_hat).pow(2).sum()
        sst = (xf - xf.mean(0, keepdim=True)).pow(2).sum()
        l0_v, sse_v, sst_v = torch.stack([l0, sse, sst]).tolist()
    ev = 1.0 - sse_v / sst_v if sst_v > 0 and math.isfinite(sst_v) else math.nan
    return float(l0_v), float(ev)


def spread(x: torch.Tensor, k: int = SAMPLE_TOKENS) -> torch.Tensor:
    """At most ``k`` rows of ``x (n, d)``, evenly spaced (all of them when ``n <= k``)."""
    n = x.shape[0]
    if n <= k:
        return x
    idx = torch.linspace(0, n - 1, k, device=x.device).round().long()
    return x[idx]


class HealthSampler:
    """When to sample (a token counter shared by every call of one guarded model) and the
    tokens carried over between forwards. Thread-safe; ``every <= 0`` never samples."""

    def __init__(
        self, every: int, sample: int = SAMPLE_TOKENS, min_tokens: int = MIN_TOKENS
    ) -> None:
        self.every, self.sample, self.min_tokens = int(every), int(sample), int(min_tokens)
        self._since = self.every  # the first monitored forward is sampled
        self._carry: dict[str, torch.Tensor] = {}  # hook point -> (m, d) eligible tokens kept
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def due(self) -> bool:
        """Should the forward about to run be sampled? (host state only)"""
        with self._lock:
            return self.enabled and self._since >= self.every

    def tick(self, tokens: int) -> None:
        """``tokens`` more monitored tokens."""
        if self.enabled and tokens:
            with self._lock:
                self._since += tokens

    def collect(self, hook: str, x: torch.Tensor) -> torch.Tensor | None:
        """Add the eligible tokens ``x (n, d)`` seen at ``hook``; the sample once there are
        enough (the carried tokens first), else None."""
        with self._lock:
            kept = self._carry.pop(hook, None)
            if kept is not None and kept.shape[-1] == x.shape[-1]:
                x = torch.cat([kept, x.to(kept.device, kept.dtype)])
            if x.shape[0] < self.min_tokens:
                self._carry[hook] = x.detach().clone()
                return None
            return spread(x, self.sample)

    def done(self) -> None:
        """A sample was reported: count again from 0."""
        with self._lock:
            self._since = 0
            self._carry.clear()
