"""``featureguard serve`` as a process: it announces its address, answers, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.monitor.serve.helpers import BAD_PROMPT, ServeWorld
from tests.monitor.serve.http import call

LISTENING = re.compile(r"featureguard serve: listening on (http://127\.0\.0\.1:\d+)")


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def wait_url(proc: subprocess.Popen[str], timeout: float = 180.0) -> tuple[str, list[str]]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        m = LISTENING.search(line)
        if m:
            return m.group(1), lines
    raise AssertionError("serve did not announce its address:\n" + "".join(lines))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ServeWorld]:
    tmp = tmp_path_factory.mktemp("serve-cli")
    world = ServeWorld(tmp)
    world.model.save_pretrained(tmp / "model")
    world.tok.save_pretrained(tmp / "model")
    return tmp / "model", world


def test_serve_process_answers_and_stops_on_sigterm(model_dir: tuple[Path, ServeWorld]) -> None:
    path, world = model_dir
    env = {**os.environ, "FEATUREGUARD_ADMIN_TOKEN": "t0ken", "NO_PROXY": "127.0.0.1"}
    audit = world.tmp / "cli-audit.jsonl"
    args = ["--model", str(path), "--policy", str(world.policy_path), "--port", "0"]
    args += ["--preflight", "off", "--audit-log", str(audit), "--model-name", "tiny"]
    proc = start(args, env)
    try:
        url, lines = wait_url(proc)
        assert "admin endpoints on" in "".join(lines)
        status, _, body = call(url + "/readyz")
        assert status == 200 and body["ready"]
        req = {"model": "tiny", "prompt": BAD_PROMPT, "max_tokens": 4, "temperature": 0}
        status, _, body = call(url + "/v1/completions", "POST", req)
        assert status == 200 and body["choices"][0]["finish_reason"] == "content_filter"
        status, _, text = call(url + "/metrics")
        assert 'featureguard_rule_matches_total{mode="enforce",rule="bad-prompt"' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
    assert "bad-prompt" in audit.read_text()


def test_invalid_policy_is_one_line_and_exit_2(model_dir: tuple[Path, ServeWorld]) -> None:
    path, world = model_dir
    bad = world.tmp / "bad.yaml"
    bad.write_text(world.policy_path.read_text().replace("severity: high", "severity: nope"))
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "serve", "--model", str(path), "--policy", str(bad)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and "severity" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_layer_sae_fails_the_strict_preflight(model_dir: tuple[Path, ServeWorld]) -> None:
    path, world = model_dir  # the planted SAE reconstructs nothing: preflight must refuse it
    args = ["--model", str(path), "--policy", str(world.policy_path), "--port", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "serve", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2 and "does not fit" in proc.stderr, proc.stderr[-2000:]


def test_bench_serve_runs_both_sides(model_dir: tuple[Path, ServeWorld]) -> None:
    path, world = model_dir
    args = ["bench", "serve", "--model", str(path), "--policy", str(world.policy_path)]
    args += ["--quick", "--clients", "1,2", "--requests-per-client", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.strip().startswith(("1 ", "2 "))]
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "unmonitored"),
        ("1", "monitored"),
        ("2", "unmonitored"),
        ("2", "monitored"),
    ]
    assert all(float(r[3]) > 0 for r in rows) and float(rows[0][-1]) == 1.0
