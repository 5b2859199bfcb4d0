"""Hot reload: watch a policy file, load → validate → compile off the hot path, swap atomically.

The runtime reads :attr:`PolicyWatcher.snapshot` (one attribute read) when a ``generate`` call
starts and keeps that snapshot, with its :class:`Evaluator` and state, until the call ends; the
next call sees the new policy. A new snapshot is built completely before a single reference
assignment publishes it, so no reader ever sees half a policy. An invalid file keeps the last
good policy and records why (counts, last error); the same bad bytes are not retried until they
change. A write in progress is not read half-way: the file (and its imported catalogs) must keep
the same size and mtime for ``stable_s`` before it is read, and it is compiled from exactly the
bytes that were hashed.

Metrics stay outside: pass ``on_reload`` callbacks, which receive a :class:`ReloadEvent`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.policy.compiled import CompiledPolicy
from monitor.policy.diagnostics import Diagnostic, PolicyError
from monitor.policy.evaluator import Evaluator
from monitor.policy.loader import check_policy_bytes


@dataclass(frozen=True)
class PolicySnapshot:
    """An active policy and its evaluator; immutable, swapped as a whole."""

    policy: CompiledPolicy
    evaluator: Evaluator
    loaded_at: float  # time.time() when it became active
    generation: int  # 1 for the first policy, +1 for each successful reload

    @property
    def sha256(self) -> str:
        return self.policy.sha256

    @property
    def revision(self) -> str | None:
        return self.policy.revision


@dataclass(frozen=True)
class ReloadEvent:
    """The outcome of one reload attempt (for metrics and logs)."""

    ok: bool
    path: str
    attempted_sha256: str  # of the bytes read
    active_sha256: str  # of the policy active after the attempt
    active_revision: str | None
    generation: int
    duration_s: float
    diagnostics: tuple[Diagnostic, ...] = field(default=())

    @property
    def error(self) -> str | None:
        errs = [str(d) for d in self.diagnostics if d.severity == "error"]
        return "\n".join(errs) or None


def _stat(paths: Iterable[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


class PolicyWatcher:
    """Keeps the last good compiled policy of ``path`` active, reloading when it changes.

    The first load happens in the constructor and raises :class:`PolicyError` if the file is
    invalid (a service must not start without a policy). ``load_kwargs`` go to the loader
    (``d_sae``, ``resolver``, ``allow_missing_sae``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        interval_s: float = 1.0,
        stable_s: float = 0.25,
        on_reload: Iterable[Callable[[ReloadEvent], Any]] = (),
        **load_kwargs: Any,
    ) -> None:
        self.path = Path(path).resolve()
        self.interval_s, self.stable_s = interval_s, stable_s
        self.callbacks = list(on_reload)
        self.load_kwargs = load_kwargs
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.callback_errors = 0
        self.last_error: ReloadEvent | None = None
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_sha: str | None = None
        raw = self.path.read_bytes()
        policy = self._compile(raw)
        if isinstance(policy, tuple):
            raise PolicyError(policy)
        self._snapshot = PolicySnapshot(policy, Evaluator(policy), time.time(), 1)
        self._active_sha = hashlib.sha256(raw).hexdigest()
        self._seen = _stat(self._watched())

    @property
    def snapshot(self) -> PolicySnapshot:
        """The active policy; read it once per request."""
        return self._snapshot

    @property
    def policy(self) -> CompiledPolicy:
        return self._snapshot.policy

    def _watched(self) -> list[Path]:
        base = self.path.parent
        policy = self._snapshot.policy
        cats = [Path(i.catalog) for i in policy.spec.imports]
        cats = [c if c.is_absolute() else base / c for c in cats]
        return [self.path, *cats, *(Path(f) for f in policy.data_files)]

    def _compile(
        self, raw: bytes, source: str | None = None
    ) -> CompiledPolicy | tuple[Diagnostic, ...]:
        name = source or str(self.path)
        try:
            policy, diags = check_policy_bytes(raw, name, self.path.parent, **self.load_kwargs)
        except Exception as exc:  # a loader bug must not kill the watcher or the service
            return (Diagnostic("FG100", f"internal error while loading: {exc!r}", name),)
        return policy if policy is not None else tuple(diags)

    def reload_now(self) -> ReloadEvent:
        """Read, check and compile the file now; swap it in if valid (no debounce)."""
        with self._lock:
            seen = _stat(self._watched())
            try:
                raw = self.path.read_bytes()
            except OSError as exc:
                event = self._apply(
                    b"",
                    (Diagnostic("FG100", f"cannot read the file: {exc.strerror}", str(self.path)),),
                    str(self.path),
                )
            else:
                event = self._apply(raw, None, str(self.path))
            self._seen = seen
        return self._notify(event)

    def push(self, raw: bytes, source: str = "<pushed>") -> ReloadEvent:
        """Check and compile ``raw`` policy bytes (e.g. from an admin endpoint) and swap them in
        if valid; an invalid policy is refused and the active one stays.

        Imports resolve relative to the watched file's folder, and diagnostics name ``source``.
        The pushed policy stays active until the watched file changes (the file remains the
        source of truth) or the process restarts.
        """
        with self._lock:
            event = self._apply(raw, None, source)
        return self._notify(event)

    def _apply(self, raw: bytes, failed: tuple[Diagnostic, ...] | None, source: str) -> ReloadEvent:
        """Compile ``raw`` (unless ``failed`` already says why it cannot be) and publish it if
        valid. Called with the lock held."""
        start = time.perf_counter()
        result = failed if failed is not None else self._compile(raw, source)
        sha = hashlib.sha256(raw).hexdigest()
        old = self._snapshot
        if isinstance(result, CompiledPolicy):
            self._snapshot = PolicySnapshot(
                result, Evaluator(result), time.time(), old.generation + 1
            )  # the one atomic swap
            self.reloads_ok += 1
            self._failed_sha, self._active_sha = None, sha
            diags: tuple[Diagnostic, ...] = result.warnings
        else:
            self.reloads_failed += 1
            self._failed_sha = sha
            diags = result
        now = self._snapshot
        event = ReloadEvent(
            isinstance(result, CompiledPolicy),
            source,
            sha,
            now.sha256,
            now.revision,
            now.generation,
            time.perf_counter() - start,
            diags,
        )
        if not event.ok:
            self.last_error = event
        return event

    def _notify(self, event: ReloadEvent) -> ReloadEvent:
        for cb in self.callbacks:
            try:
                cb(event)
            except Exception:
                self.callback_errors += 1
        return event

    def check_now(self) -> ReloadEvent | None:
        """One poll: reload if the watched files changed and have been stable for
        ``stable_s``; None when there was nothing (yet) to do."""
        seen = _stat(self._watched())
        if seen == self._seen:
            return None
        time.sleep(self.stable_s)
        if _stat(self._watched()) != seen:
            return None  # still being written: look again at the next poll
        try:
            sha = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            sha = ""
        same_catalogs = seen[1:] == self._seen[1:]
        if sha and same_catalogs and sha in (self._failed_sha, self._active_sha):
            self._seen = seen  # touched but unchanged, or the same bad bytes: nothing new
            return None
        return self.reload_now()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception:
                self.reloads_failed += 1

    def start(self) -> PolicyWatcher:
        """Start polling in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="featureguard-policy-watch", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
