"""The audit log: one versioned JSON line per rule match, written through its own structlog logger.

The logger is built with ``structlog.wrap_logger`` over the configured sink (stdout or a file
opened for append, line-buffered and flushed per event), with its own processor chain ending in a
``JSONRenderer``. Global logging configuration is neither read nor changed.

Event fields (``"schema": 1``): ``schema``, ``event``, ``time`` (ISO 8601, UTC), ``policy``,
``policy_version``, ``policy_sha256``, ``context`` (the request context as given: request_id,
tenant, user, route ...), ``row``, ``token_index``, ``phase``, ``rule``, ``severity``, ``mode``,
``features`` (name → value at the match, of the features the rule reads directly), ``probes``
(score of each probe the rule reads), ``probe_features`` (per probe, the inputs with the largest
contributions ``w_i · f_i`` at the matching token), ``actions`` (the rule's
action kinds; carried out only when ``mode`` is enforce) and ``text`` only when the policy's
``audit.include_text`` is true, with every ``audit.redact`` pattern replaced by ``[REDACTED]``.

A failing sink never passes silently: the event counts as lost
(``featureguard_audit_events_lost_total``), stderr gets one line per burst of failures (and one
when the sink recovers), and under ``on_error: fail_closed`` :meth:`AuditLog.emit` raises
:class:`AuditSinkError`, which the runtime turns into a stop.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from typing import IO, Any

import structlog

from monitor.closing import Closing
from monitor.metrics import Metrics
from monitor.policy.compiled import CompiledPolicy, CompiledRule
from sae.errors import FeatureguardError

SCHEMA_VERSION = 1
REDACTED = "[REDACTED]"
_FIRST = ("schema", "event", "time")


class AuditSinkError(FeatureguardError):
    """The audit sink failed while the policy says ``on_error: fail_closed``."""


class _LineWriter:
    """The structlog "logger" at the end of the chain: writes one line, flushes. ``None`` means
    whatever ``sys.stdout`` is at write time."""

    def __init__(self, file: IO[str] | None) -> None:
        self.file = file

    def info(self, message: str) -> None:
        out = self.file if self.file is not None else sys.stdout
        out.write(message + "\n")
        flush = getattr(out, "flush", None)
        if flush is not None:
            flush()


def _order(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Processor: ISO 8601 UTC ``time`` (given epoch seconds or now), then ``schema``,
    ``event``, ``time`` first in the JSON line."""
    event["time"] = _iso(event.get("time"))
    head = {k: event.pop(k) for k in _FIRST if k in event}
    return {**head, **event}


def _iso(t: float | None) -> str:
    when = datetime.now(timezone.utc) if t is None else datetime.fromtimestamp(t, timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


@lru_cache(maxsize=64)
def _patterns(redact: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in redact)


def redact_text(text: str, patterns: Sequence[str]) -> str:
    """``text`` with every match of each regex in ``patterns`` replaced by ``[REDACTED]``."""
    for pat in _patterns(tuple(patterns)):
        text = pat.sub(REDACTED, text)
    return text


class AuditLog(Closing):
    """Writes audit events to ``sink``: ``"stdout"``, a file path (appended to), or an open text
    stream (not closed by :meth:`close`).

    ``metrics`` receives written/lost counts; ``stderr`` (default ``sys.stderr`` at report time)
    receives failure reports, at most one per ``report_every_s`` while the sink keeps failing.
    ``written`` and ``lost`` count events since construction (for tests and shutdown logs).
    A path that cannot be opened is retried on the next event, so a sink that recovers (disk
    freed, directory created) is used again.
    """

    def __init__(
        self,
        sink: str | IO[str] = "stdout",
        *,
        metrics: Metrics | None = None,
        stderr: IO[str] | None = None,
        report_every_s: float = 60.0,
    ) -> None:
        self.sink_name = sink if isinstance(sink, str) else getattr(sink, "name", repr(sink))
        self._path = sink if isinstance(sink, str) and sink != "stdout" else None
        self._given = None if isinstance(sink, str) else sink
        self.metrics, self._stderr, self.report_every_s = metrics, stderr, report_every_s
        self.written = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._logger: Any = None if self._path else self._wrap(self._given)
        self._failing_since_lost: int | None = None  # self.lost when the current burst began
        self._last_report = -float("inf")
        self._closed = False

    @classmethod
    def for_policy(cls, policy: CompiledPolicy, **kwargs: Any) -> AuditLog:
        """An audit log writing to ``policy.audit.sink``."""
        return cls(policy.audit.sink, **kwargs)

    @staticmethod
    def _wrap(file: IO[str] | None) -> Any:
        return structlog.wrap_logger(
            _LineWriter(file),
            processors=[
                _order,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(0),
            context_class=dict,
            cache_logger_on_first_use=True,
        ).bind()

    def emit(
        self,
        policy: CompiledPolicy,
        rule: CompiledRule | int | str,
        *,
        row: int,
        token_index: int,
        phase: str,
        features: Mapping[str, float] | Sequence[float] | None = None,
        actions: Sequence[str] | None = None,
        context: Mapping[str, Any] | None = None,
        text: str | Callable[[], str] | None = None,
        probes: Mapping[str, float] | None = None,
        probe_features: Mapping[str, Mapping[str, float]] | None = None,
        at: float | None = None,
        event: str = "rule_match",
    ) -> bool:
        """Write one event for ``rule`` (object, index or id) of ``policy``; True if written.

        ``features``: name → value, or the token's (K,) row of ``acts`` (the rule's features
        are picked from it). ``actions`` default to the rule's action kinds (carried out only when
        ``mode`` is enforce). ``text`` (or a callable giving it, called only when the policy
        includes text) is the sequence so far. ``probes``: probe scores, added when given;
        ``probe_features``: per probe, the inputs that contributed most at this token.
        ``at``: the match time (epoch seconds; default now). Returns False when the event was
        lost (``fail_open``); raises :class:`AuditSinkError` when lost under ``fail_closed``.
        """
        r = _rule(policy, rule)
        if features is None:
            feats: dict[str, float] = {}
        elif isinstance(features, Mapping):
            feats = {k: float(v) for k, v in features.items()}
        else:
            cols = policy.feature_columns
            feats = {n: float(features[cols[n]]) for n in r.features if n in cols}
        fields: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "policy": policy.name,
            "policy_version": policy.revision,
            "policy_sha256": policy.sha256,
            "context": dict(context or {}),
            "row": int(row),
            "token_index": int(token_index),
            "phase": phase,
            "rule": r.id,
            "severity": r.severity,
            "mode": r.mode,
            "features": feats,
            "actions": list(actions) if actions is not None else list(r.action_kinds),
        }
        if probes:
            fields["probes"] = {k: float(v) for k, v in probes.items()}
        if probe_features:
            fields["probe_features"] = {
                p: {k: float(v) for k, v in fs.items()} for p, fs in probe_features.items()
            }
        if at is not None:
            fields["time"] = at
        audit = policy.audit
        if audit.include_text and text is not None:
            raw = text() if callable(text) else text
            fields["text"] = redact_text(raw, audit.redact)
        return self._write(event, fields, fail_closed=policy.on_error == "fail_closed")

    def _write(self, event: str, fields: dict[str, Any], *, fail_closed: bool) -> bool:
        with self._lock:
            try:
                if self._closed:
                    raise ValueError("audit log is closed")
                self._open()
                self._logger.info(event, **fields)
            except Exception as exc:  # any sink or rendering failure loses the event
                self._lost(exc)
                if fail_closed:
                    raise AuditSinkError(
                        f"audit sink {self.sink_name} failed: {type(exc).__name__}: {exc}",
                        hint="the policy is on_error: fail_closed, so generation stops",
                    ) from exc
                return False
            self.written += 1
            if self.metrics is not None:
                self.metrics.record_audit(written=1)
            if self._failing_since_lost is not None:
                n = self.lost - self._failing_since_lost
                self._report(f"audit sink {self.sink_name} recovered; {n} event(s) were lost")
                self._failing_since_lost = None
            return True

    def _open(self) -> None:
        if self._path is None or self._logger is not None:
            return
        self._file = open(self._path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._logger = self._wrap(self._file)

    def _lost(self, exc: BaseException) -> None:
        self.lost += 1
        if self.metrics is not None:
            self.metrics.record_audit(lost=1)
        if self._path is not None:  # reopen on the next event
            self._close_file()
        now = time.monotonic()
        if self._failing_since_lost is None:
            self._failing_since_lost = self.lost - 1
        elif now - self._last_report < self.report_every_s:
            return
        n = self.lost - self._failing_since_lost
        self._report(
            f"audit sink {self.sink_name} failed ({type(exc).__name__}: {exc}); "
            f"{n} event(s) lost so far (counted in featureguard_audit_events_lost_total; "
            f"reported again at most every {self.report_every_s:g}s)"
        )
        self._last_report = now

    def _report(self, message: str) -> None:
        out = self._stderr if self._stderr is not None else sys.stderr
        try:
            out.write(f"featureguard: audit: {message}\n")
            out.flush()
        except Exception:  # stderr itself is gone: the metric still counts the loss
            pass

    def _close_file(self) -> None:
        f, self._file, self._logger = self._file, None, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()

    def close(self) -> None:
        """Close a file sink (a given stream or stdout stays open). Later events are lost."""
        with self._lock:
            self._closed = True
            if self._path is not None:
                self._close_file()


def _rule(policy: CompiledPolicy, rule: CompiledRule | int | str) -> CompiledRule:
    if isinstance(rule, int):
        return policy.rules[rule]
    if isinstance(rule, str):
        return policy.rule(rule)
    return rule
