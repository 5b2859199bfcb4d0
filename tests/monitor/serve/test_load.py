"""Load: 16 concurrent streaming clients, 208 requests, loopback only, bounded in count and
time. Every request completes and no audit event is lost (audit lines = rule matches)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import openai
import pytest

from monitor.serve.server import ServerThread
from tests.monitor.serve.helpers import BAD_CHAT, BENIGN, ServeWorld

CLIENTS, PER_CLIENT = 16, 13  # 208 requests


def test_sixteen_streaming_clients(tmp_path: Path) -> None:
    world = ServeWorld(tmp_path)
    audit = tmp_path / "load-audit.jsonl"
    results: list[tuple[str, str | None, str]] = []
    errors: list[str] = []
    lock = threading.Lock()
    with world.service(audit_log=str(audit)) as svc, ServerThread(svc.app) as srv:

        def client(k: int) -> None:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=300)
            for i in range(PER_CLIENT):
                text = BAD_CHAT if (k + i) % 4 == 0 else BENIGN[(k + i) % len(BENIGN)]
                try:
                    stream = c.chat.completions.create(
                        model="tiny",
                        messages=[{"role": "user", "content": text}],
                        max_tokens=6,
                        temperature=0.7,
                        stream=True,
                        user=f"client-{k}",
                    )
                    finish, out = None, ""
                    for chunk in stream:
                        for ch in chunk.choices:
                            out += ch.delta.content or ""
                            finish = ch.finish_reason or finish
                except Exception as exc:
                    with lock:
                        errors.append(f"client {k} request {i}: {exc!r}")
                    continue
                with lock:
                    results.append((text, finish, out))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "clients did not finish within 10 min"
        batches = svc.engine.batches if svc.engine else 0
        reg = svc.registry
    assert not errors, errors[:5]
    assert len(results) == CLIENTS * PER_CLIENT
    for text, finish, _ in results:
        want = {"content_filter"} if text == BAD_CHAT else {"length", "stop"}  # sampled: EOS ok
        assert finish in want, (text, finish)
    n_bad = sum(text == BAD_CHAT for text, _, _ in results)
    matches = sum(
        s.value
        for fam in reg.collect()
        if fam.name == "featureguard_rule_matches"
        for s in fam.samples
        if s.name.endswith("_total")
    )
    lines = audit.read_text().splitlines()
    assert len(lines) == matches >= n_bad
    assert sum(json.loads(x)["rule"] == "bad-chat" for x in lines) == n_bad
    ok = reg.get_sample_value(
        "featureguard_http_requests_total", {"endpoint": "/v1/chat/completions", "code": "200"}
    )
    assert ok == CLIENTS * PER_CLIENT
    assert reg.get_sample_value("featureguard_audit_events_lost_total") == 0
    # Requests were batched, not run one by one (same sampling settings, 16 waiting).
    assert batches < CLIENTS * PER_CLIENT


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
