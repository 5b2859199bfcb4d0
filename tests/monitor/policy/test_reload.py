"""Hot reload: atomic swaps under a running evaluation loop; bad files keep the last good."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from monitor.policy.diagnostics import PolicyError
from monitor.policy.reload import PolicyWatcher, ReloadEvent
from tests.monitor.policy.helpers import HEADER


def version(n_rules: int, tag: str) -> str:
    rules = "".join(
        f"  - {{id: {tag}{i}, severity: low, condition: {{feature: a, above: {i}.5}},"
        f" actions: [{{type: log}}]}}\n"
        for i in range(n_rules)
    )
    return HEADER.replace("name: test", f"name: test, revision: {tag.upper()}") + "rules:\n" + rules


VALID = {"A": version(2, "a"), "B": version(5, "b")}
INVALID = [
    "version: 1\npolicy: {name: [broken\n",  # YAML syntax
    VALID["A"].replace("severity: low", "severity: urgent"),  # schema
    VALID["B"].replace("feature: a,", "feature: zz,"),  # unknown feature
    VALID["A"][: len(VALID["A"]) // 2],  # a write cut half-way
]
IDS = {tuple(f"a{i}" for i in range(2)), tuple(f"b{i}" for i in range(5))}


def test_200_reloads_during_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(VALID["A"])
    events: list[ReloadEvent] = []
    watcher = PolicyWatcher(path, d_sae={"main": 64}, on_reload=[events.append])
    stop, problems, steps = threading.Event(), [], [0]

    def evaluate() -> None:
        while not stop.is_set():
            snap = watcher.snapshot  # read once, use for the whole "request"
            p, ev = snap.policy, snap.evaluator
            if ev.compiled is not p or p.rule_ids not in IDS:
                problems.append(f"inconsistent snapshot {p.rule_ids}")
            st = ev.new_state(2)
            for _ in range(3):
                res = ev.step(
                    torch.full((2, 1, p.K), 9.0),
                    torch.ones(2, 1, dtype=torch.bool),
                    "completion",
                    st,
                )
                if res.match.shape != (2, 1, p.R) or res.active[0, 0].sum() != p.R:
                    problems.append(f"bad step for {p.rule_ids}")
            steps[0] += 1

    thread = threading.Thread(target=evaluate)
    thread.start()
    try:
        good = watcher.snapshot
        for i in range(200):
            if i % 2 == 0:
                tag = "B" if i % 4 == 0 else "A"
                path.write_text(VALID[tag])
                ev = watcher.reload_now()
                assert ev.ok and ev.generation == good.generation + 1, ev.error
                good = watcher.snapshot
                assert good.policy.revision == tag and good.sha256 == ev.active_sha256
            else:
                path.write_text(INVALID[(i // 2) % len(INVALID)])
                ev = watcher.reload_now()
                assert not ev.ok and ev.error
                assert watcher.snapshot is good  # the last good policy stays active
                assert ev.active_sha256 == good.sha256
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:5]
    assert steps[0] > 0
    assert (watcher.reloads_ok, watcher.reloads_failed) == (100, 100)
    assert len(events) == 200 and watcher.last_error is not None
    assert watcher.last_error.diagnostics[0].code.startswith("FG")


def test_invalid_first_load_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(INVALID[1])
    with pytest.raises(PolicyError) as info:
        PolicyWatcher(path, d_sae={"main": 64})
    assert info.value.diagnostics[0].code == "FG204"


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_polling_thread_debounces_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID["A"])
    events: list[ReloadEvent] = []
    with PolicyWatcher(
        path, interval_s=0.02, stable_s=0.05, d_sae={"main": 64}, on_reload=[events.append]
    ) as w:
        path.write_text(VALID["B"])
        assert wait_for(lambda: w.snapshot.revision == "B")
        path.write_text(INVALID[0])
        assert wait_for(lambda: w.reloads_failed == 1)
        time.sleep(0.2)  # the same bad bytes are reported once, not on every poll
        assert w.reloads_failed == 1 and w.snapshot.revision == "B"
        path.write_text(VALID["A"])
        assert wait_for(lambda: w.snapshot.revision == "A")
    assert [e.ok for e in events] == [True, False, True]


def test_write_in_progress_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID["A"])
    w = PolicyWatcher(path, stable_s=0.3, d_sae={"main": 64})
    text = VALID["B"]
    with path.open("w") as fh:  # a slow writer: the file grows during the stability wait
        fh.write(text[:100])
        fh.flush()
        timer = threading.Timer(0.1, lambda: (fh.write(text[100:200]), fh.flush()))
        timer.start()
        assert w.check_now() is None  # changed during the wait: not read
        timer.join()
        fh.write(text[200:])
    assert w.check_now() is not None and w.snapshot.revision == "B"


def test_callback_errors_do_not_break_reload(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID["A"])

    def boom(event: ReloadEvent) -> None:
        raise RuntimeError("metrics down")

    w = PolicyWatcher(path, d_sae={"main": 64}, on_reload=[boom])
    path.write_text(VALID["B"])
    assert w.reload_now().ok and w.callback_errors == 1 and w.snapshot.revision == "B"


def test_push_swaps_a_valid_policy_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(VALID["A"])
    events: list[ReloadEvent] = []
    watcher = PolicyWatcher(path, d_sae={"main": 64}, on_reload=[events.append])
    before = watcher.snapshot
    bad = watcher.push(INVALID[1].encode(), source="admin:push")
    assert not bad.ok and watcher.snapshot is before
    assert bad.path == "admin:push" and "admin:push" in (bad.error or "")
    assert "severity" in (bad.error or "")
    good = watcher.push(VALID["B"].encode(), source="admin:push")
    assert good.ok and watcher.policy.revision == "B" and watcher.snapshot.generation == 2
    assert [e.ok for e in events] == [False, True]
    # The file stays the source of truth: the next change to it replaces the pushed policy.
    path.write_text(VALID["A"].replace("revision: A", "revision: A2"))
    assert watcher.reload_now().ok and watcher.policy.revision == "A2"


def test_a_changed_probe_weights_file_is_noticed(tmp_path: Path) -> None:
    """The watcher also watches the weights files its catalogs pin: a changed file no longer
    matches the pin (the reload fails, the last good policy stays) until the catalog is updated."""
    import hashlib

    from monitor.policy.catalog import probe_file_bytes

    def write(weights: list[float]) -> str:
        raw = probe_file_bytes([3, 7], weights)
        (tmp_path / "w.safetensors").write_bytes(raw)
        return hashlib.sha256(raw).hexdigest()

    def catalog(pin: str) -> None:
        (tmp_path / "cat.yaml").write_text(
            f"catalog_version: 1\nsae: {{name: test-sae, sha256: '{'e' * 64}'}}\nprobes:\n"
            f"  p: {{weights_file: w.safetensors, weights_sha256: '{pin}', bias: 0.0,\n"
            f"      link: linear, threshold: 1.0, sae_sha256: '{'e' * 64}'}}\n"
        )

    catalog(write([1.0, 0.5]))
    path = tmp_path / "p.yaml"
    rule = "  - {id: pr, severity: low, condition: {probe: p}, actions: [{type: log}]}\n"
    path.write_text(HEADER + "imports: [{catalog: cat.yaml, sae: main}]\nrules:\n" + rule)
    with PolicyWatcher(path, interval_s=0.02, stable_s=0.05, d_sae={"main": 64}) as w:
        assert str(tmp_path / "w.safetensors") in w.policy.data_files
        first = w.policy.sha256
        pin = write([2.0, -1.0])
        assert wait_for(lambda: w.reloads_failed == 1)
        assert "FG311" in str(w.last_error) and w.policy.sha256 == first
        catalog(pin)
        assert wait_for(lambda: w.policy.sha256 != first)
        assert w.policy.probes[0].weights == (2.0, -1.0)
