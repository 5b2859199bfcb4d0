"""Policies: schema, strict loading, compilation to tensors, per-token evaluation, hot reload.

Pipeline: :func:`load_policy` (read → strict YAML → schema → meaning → compile) gives a
:class:`CompiledPolicy`; :class:`Evaluator` runs it on ``acts (B, T, K)``; :class:`PolicyWatcher`
swaps in a new compiled policy when the file changes and is valid. Names are imported lazily so
``import monitor.policy`` stays cheap (no torch) for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CompiledPolicy": "monitor.policy.compiled",
    "CompiledRule": "monitor.policy.compiled",
    "CompiledSAE": "monitor.policy.compiled",
    "LEVEL_NAMES": "monitor.policy.compiled",
    "Diagnostic": "monitor.policy.diagnostics",
    "PolicyError": "monitor.policy.diagnostics",
    "EvalState": "monitor.policy.evaluator",
    "Evaluator": "monitor.policy.evaluator",
    "StepResult": "monitor.policy.evaluator",
    "check_policy": "monitor.policy.loader",
    "load_policy": "monitor.policy.loader",
    "load_policy_text": "monitor.policy.loader",
    "PolicyWatcher": "monitor.policy.reload",
    "ReloadEvent": "monitor.policy.reload",
    "PolicySnapshot": "monitor.policy.reload",
    "SAEInfo": "monitor.policy.saes",
    "Catalog": "monitor.policy.catalog",
    "load_catalog": "monitor.policy.catalog",
    "save_catalog": "monitor.policy.catalog",
    "sae_fingerprint": "monitor.policy.catalog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monitor.policy' has no attribute {name!r}")
