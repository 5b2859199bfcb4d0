"""Hooks installed once per attach and gated per call (transformers' own capture pattern).

:class:`HookSet` puts one forward pre-hook on the model (to learn which columns a forward
holds) and one hook per SAE hook point. Each returns at once unless the calling context has an
active :class:`~monitor.runtime.session.Session` of this hook set (a ``ContextVar``, so threads
and nested calls see only their own call). :meth:`HookSet.remove` detaches everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from torch import nn

from monitor.runtime.binding import PolicyBinding
from monitor.runtime.session import Session

_ACTIVE: ContextVar[Session | None] = ContextVar("featureguard_session", default=None)


class HookSet:
    """The monitor's hooks on one model; inert unless a session of theirs is active."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: dict[str, Any] = {}
        self._pre: Any = model.register_forward_pre_hook(self._begin, with_kwargs=True)

    def _session(self) -> Session | None:
        s = _ACTIVE.get()
        return s if s is not None and getattr(s, "hookset", None) is self else None

    def _begin(self, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        s = self._session()
        if s is not None:
            s.begin_forward(args, kwargs)

    def ensure(self, binding: PolicyBinding) -> None:
        """Install hooks for every hook point of ``binding`` not hooked yet (once each)."""
        try:
            for g in binding.groups:
                name = g.point.name
                if name not in self.handles:
                    self.handles[name] = g.point.register(self._layer_hook(name))
        except BaseException:
            self.remove()
            raise

    def _layer_hook(self, name: str) -> Any:
        def hook(x: Any) -> Any:
            s = self._session()
            return None if s is None else s.on_hook(name, x)

        return hook

    @contextmanager
    def active(self, session: Session) -> Iterator[Session]:
        """Gate the hooks open for ``session`` in this context; always closed on exit."""
        session.hookset = self
        token = _ACTIVE.set(session)
        try:
            yield session
        finally:
            _ACTIVE.reset(token)

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self.handles.values():
            h.remove()
        self.handles.clear()
        if self._pre is not None:
            self._pre.remove()
            self._pre = None

    @property
    def installed(self) -> bool:
        return self._pre is not None
