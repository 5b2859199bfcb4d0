"""featureguard's runtime: the monitored ``generate``, policies, actions, metrics and the CLI.

``import monitor; guarded = monitor.attach(model, policy="rules/default.yaml")``. ``attach`` is
imported lazily so ``import monitor`` (and the CLI's ``--help``) stays free of torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["attach"]


def __getattr__(name: str) -> Any:
    if name == "attach":
        from monitor.runtime.guarded import attach

        return attach
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")
