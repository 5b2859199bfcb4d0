"""Audit log: schema fields, text policy and redaction, sinks, and failing sinks never silent."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from monitor.audit import SCHEMA_VERSION, AuditLog, AuditSinkError
from monitor.metrics import Metrics
from monitor.policy.compiled import CompiledPolicy
from monitor.policy.loader import load_policy_text
from sae.errors import FeatureguardError

POLICY = """\
version: 1
policy: {name: guard, revision: r7}
saes:
  main: {bundled: test-sae, d_sae: 64}
features:
  tox: {index: 3}
  pii: {index: 7}
  other: {index: 1}
rules:
  - id: toxic
    severity: high
    condition: {feature: tox, above: 1.0}
    actions: [{type: log}, {type: stop}]
  - id: pii-shadow
    severity: medium
    mode: shadow
    condition: {feature: pii, above: 0.5}
    actions: [{type: log}]
"""
FIELDS = {
    "schema",
    "event",
    "time",
    "policy",
    "policy_version",
    "policy_sha256",
    "context",
    "row",
    "token_index",
    "phase",
    "rule",
    "severity",
    "mode",
    "features",
    "actions",
}


def make_policy(extra: str = "") -> CompiledPolicy:
    return load_policy_text(POLICY + extra, "t.yaml", d_sae={"main": 64})


def emit(log: AuditLog, policy: CompiledPolicy, **kw: Any) -> bool:
    args: dict[str, Any] = dict(row=1, token_index=5, phase="completion", features={"tox": 2.5})
    return log.emit(policy, "toxic", **{**args, **kw})


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_event_has_schema_fields_and_no_text_by_default(registry: CollectorRegistry) -> None:
    p, sink = make_policy(), io.StringIO()
    calls: list[int] = []

    def text() -> str:
        calls.append(1)
        return "secret"

    log = AuditLog(sink, metrics=Metrics(registry))
    ctx = {"request_id": "req-1", "tenant": "acme", "user": "u9"}
    acts_row = [0.0] * p.K  # the token's (K,) row of acts: the rule's features are picked
    acts_row[p.feature_columns["tox"]] = 2.5
    assert log.emit(
        p,
        "toxic",
        row=1,
        token_index=5,
        phase="completion",
        features=acts_row,
        context=ctx,
        text=text,
    )
    assert log.emit(p, 1, row=0, token_index=0, phase="prompt", features={"pii": 0.9})
    first, shadow = lines(sink.getvalue())
    assert set(first) == FIELDS  # no "text": include_text is false by default
    assert calls == []  # the text was never even built
    assert first["schema"] == SCHEMA_VERSION == 1
    assert first["event"] == "rule_match"
    assert first["time"].endswith("Z")
    assert (first["policy"], first["policy_version"], first["policy_sha256"]) == (
        "guard",
        "r7",
        p.sha256,
    )
    assert first["context"] == ctx
    assert (first["row"], first["token_index"], first["phase"]) == (1, 5, "completion")
    assert (first["rule"], first["severity"], first["mode"]) == ("toxic", "high", "enforce")
    assert first["features"] == {"tox": 2.5}
    assert first["actions"] == ["log", "stop"]
    # a shadow rule's actions are listed; its mode says they were not carried out
    assert (shadow["rule"], shadow["mode"], shadow["actions"]) == ("pii-shadow", "shadow", ["log"])
    assert log.written == 2
    assert registry.get_sample_value("featureguard_audit_events_total") == 2
    assert registry.get_sample_value("featureguard_audit_events_lost_total") == 0


def test_given_time_probes_and_actions_are_recorded() -> None:
    sink = io.StringIO()
    emit(AuditLog(sink), make_policy(), at=0.0, probes={"jailbreak": 0.75}, actions=["log"])
    (event,) = lines(sink.getvalue())
    assert event["time"] == "1970-01-01T00:00:00Z"
    assert event["probes"] == {"jailbreak": 0.75}
    assert event["actions"] == ["log"]


def test_text_is_redacted_when_included() -> None:
    p = make_policy("audit:\n  include_text: true\n  redact: ['\\d{3}-\\d{4}', 'secret\\w*']\n")
    sink = io.StringIO()
    emit(AuditLog(sink), p, text="call 555-1234 about secrets now")
    (event,) = lines(sink.getvalue())
    assert event["text"] == "call [REDACTED] about [REDACTED] now"


def test_file_sink_appends_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    p = make_policy(f"audit: {{sink: {json.dumps(str(path))}}}\n")
    with AuditLog.for_policy(p) as log:
        emit(log, p)
        emit(log, p)
        assert len(path.read_text().splitlines()) == 2  # flushed per event, before close
    with AuditLog(str(path)) as log:
        emit(log, p)
    assert [e["rule"] for e in lines(path.read_text())] == ["toxic"] * 3


def test_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    emit(AuditLog("stdout"), make_policy())
    (event,) = lines(capsys.readouterr().out)
    assert event["rule"] == "toxic"


def test_global_structlog_configuration_is_neither_used_nor_changed() -> None:
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50), processors=[])
    try:
        sink = io.StringIO()
        emit(AuditLog(sink), make_policy())
        assert lines(sink.getvalue())[0]["schema"] == 1  # not filtered, still JSON
    finally:
        structlog.configure(**before)


class Broken(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def write(self, s: str) -> int:
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().write(s)


def _closed() -> io.StringIO:
    s = io.StringIO()
    s.close()
    return s


def _sinks(tmp_path: Path) -> dict[str, Any]:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sinks: dict[str, Any] = {
        "closed": _closed(),
        "missing-dir": str(tmp_path / "no" / "such" / "dir" / "audit.jsonl"),
        "parent-is-a-file": str(blocker / "audit.jsonl"),
        "write-raises": Broken(),
    }
    if os.path.exists("/dev/full"):
        sinks["disk-full"] = "/dev/full"
    return sinks


@pytest.mark.parametrize(
    "kind", ["closed", "missing-dir", "parent-is-a-file", "write-raises", "disk-full"]
)
def test_failing_sink_counts_lost_and_reports_once(
    kind: str, tmp_path: Path, registry: CollectorRegistry
) -> None:
    sinks = _sinks(tmp_path)
    if kind not in sinks:
        pytest.skip("/dev/full is not available")
    p, err = make_policy("on_error: fail_open\n"), io.StringIO()
    log = AuditLog(sinks[kind], metrics=Metrics(registry), stderr=err)
    results = [emit(log, p) for _ in range(5)]
    assert results == [False] * 5  # generation goes on
    assert log.lost == 5 and log.written == 0
    assert registry.get_sample_value("featureguard_audit_events_lost_total") == 5
    reports = err.getvalue().splitlines()
    assert len(reports) == 1 and "audit sink" in reports[0] and "lost" in reports[0]


def test_read_only_directory_counts_lost(tmp_path: Path, registry: CollectorRegistry) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        log = AuditLog(str(ro / "audit.jsonl"), metrics=Metrics(registry), stderr=io.StringIO())
        assert not emit(log, make_policy("on_error: fail_open\n"))
        assert registry.get_sample_value("featureguard_audit_events_lost_total") == 1
    finally:
        ro.chmod(0o700)


def test_sink_recovery_is_reported_and_a_new_burst_reported_again() -> None:
    sink, err = Broken(), io.StringIO()
    log, p = AuditLog(sink, stderr=err, report_every_s=3600), make_policy("on_error: fail_open\n")
    assert not emit(log, p) and not emit(log, p)
    sink.fail = False
    assert emit(log, p)
    sink.fail = True
    assert not emit(log, p)
    reports = err.getvalue().splitlines()
    assert len(reports) == 3
    assert "failed" in reports[0] and "recovered; 2 event(s) were lost" in reports[1]
    assert "failed" in reports[2]
    assert log.written == 1 and log.lost == 3
    assert len(sink.getvalue().splitlines()) == 1


def test_fail_closed_raises_a_clear_error(registry: CollectorRegistry) -> None:
    p = make_policy()  # a stop rule in enforce mode: on_error defaults to fail_closed
    assert p.on_error == "fail_closed"
    log = AuditLog(Broken(), metrics=Metrics(registry), stderr=io.StringIO())
    with pytest.raises(AuditSinkError, match=r"audit sink .* failed") as info:
        emit(log, p)
    assert isinstance(info.value, FeatureguardError)
    assert registry.get_sample_value("featureguard_audit_events_lost_total") == 1


def test_events_after_close_are_lost_not_silent() -> None:
    err = io.StringIO()
    log = AuditLog(io.StringIO(), stderr=err)
    log.close()
    assert not emit(log, make_policy("on_error: fail_open\n"))
    assert log.lost == 1 and "closed" in err.getvalue()
