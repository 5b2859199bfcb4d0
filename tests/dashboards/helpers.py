"""Shared by the dashboard tests: the metric names a fresh exporter registry can produce, and a
small policy over a synthetic SAE whose rules cover every label set the dashboards use."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from monitor.metrics import Metrics
from sae.base import SAE
from sae.loading import save_sae
from sae.registry import create_sae

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum"),
}


@lru_cache(maxsize=1)
def exported_metric_names() -> frozenset[str]:
    """Every sample name of every family a fresh ``Metrics`` registers (no hand list)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in SUFFIXES[family.type])
    return frozenset(names)


def need(tool: str) -> str:
    """The path of a Prometheus tool, or skip (CI installs them: .ci/run)."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian: prometheus / prometheus-alertmanager)")
    return path


def synthetic_sae(
    d_in: int,
    hook: str,
    *,
    center: torch.Tensor | None = None,
    basis: torch.Tensor | None = None,
    seed: int = 0,
) -> SAE:
    """A standard SAE of width 32 reading ``hook``, for the policy of :func:`policy_text`.

    Feature 0 is 1.0 on every token (zero encoder column, bias 1); features 1 and 2 are ReLUs
    of random directions (active on about half the tokens). None of the three reconstructs
    anything (zero decoder rows). With ``basis`` ``(k, d_in)`` (orthonormal rows, k ≤ 14) and
    ``center`` ``(d_in,)``, features 3 .. 2k+2 are ``relu(±u·(x − center))`` with decoder rows
    ``±u``, so the SAE reconstructs the projection on those directions (an explained variance
    that means something); the remaining features are off (bias -10).
    """
    sae = create_sae(d_in=d_in, d_sae=32, architecture="standard", hook_name=hook)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, 32, generator=gen) / d_in**0.5)
        sae.W_dec.zero_()
        sae.b_enc.fill_(-10.0)
        sae.W_enc[:, 0] = 0.0
        sae.b_enc[0] = 1.0
        sae.b_enc[1:3] = 0.0
        if basis is not None and center is not None:
            k = basis.shape[0]
            assert 2 * k + 3 <= 32 and basis.shape[1] == d_in, basis.shape
            sae.b_dec.copy_(center)  # the encoder subtracts it (apply_b_dec_to_input)
            for i, u in enumerate(basis):  # u: (d_in,)
                for j, sign in ((3 + 2 * i, 1.0), (4 + 2 * i, -1.0)):
                    sae.W_enc[:, j] = sign * u
                    sae.W_dec[j] = sign * u
                    sae.b_enc[j] = 0.0
    return sae.eval()


def policy_text(sae_dir: Path, channel_url: str, channel_type: str = "webhook") -> str:
    """A policy with a critical enforce stop rule (fires on every completion token of requests
    whose user is not ``trusted-*``), a high enforce alert rule, a shadow rule, a replace rule
    that never fires, two exported features, an alert channel and ``on_error: fail_closed``."""
    return f"""\
version: 1
policy: {{name: dashboards-it, revision: r1}}
saes:
  main: {{path: {sae_dir}}}
features:
  always: {{index: 0, description: 1.0 on every token}}
  f1: {{index: 1, export: true}}
  f2: {{index: 2, export: true}}
channels:
  oncall: {{type: {channel_type}, url: "{channel_url}", timeout_s: 2.0, retries: 1}}
on_error: fail_closed
audit: {{include_text: false}}
rules:
  - id: critical-stop
    severity: critical
    scope: completion
    condition: {{feature: always, above: 0.5}}
    exceptions: [{{context: {{user: "trusted-*"}}}}]
    actions: [{{type: log}}, {{type: alert, channel: oncall}}, {{type: stop}}]
  - id: f1-alert
    severity: high
    condition: {{feature: f1, above: 0.0}}
    cooldown: 64
    actions: [{{type: log}}, {{type: alert, channel: oncall}}]
  - id: f2-shadow
    severity: medium
    mode: shadow
    condition: {{feature: f2, above: 0.0}}
    actions: [{{type: log}}]
  - id: never-replace
    severity: low
    condition: {{feature: f2, above: 1000.0}}
    actions: [{{type: replace, message: "[withheld]"}}]
"""


def write_policy(folder: Path, sae: SAE, channel_url: str, channel_type: str = "webhook") -> Path:
    """Save ``sae`` and :func:`policy_text` under ``folder``; returns the policy file."""
    save_sae(sae, folder / "sae")
    path = folder / "policy.yaml"
    path.write_text(policy_text(folder / "sae", channel_url, channel_type), encoding="utf-8")
    return path
