"""``featureguard serve`` on 127.0.0.1 with a tiny model, driven by the official ``openai`` client
(and raw HTTP for what a well-behaved client never sends)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

from monitor.serve.build import ServeOptions, Service
from monitor.serve.server import ServerThread
from tests.monitor.serve.helpers import BAD_CHAT, BAD_PROMPT, BENIGN, ServeWorld, chat_ids
from tests.monitor.serve.http import call, sse_events

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    return ServeWorld(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(world: ServeWorld) -> Iterator[tuple[Service, str]]:
    with world.service(admin_token=TOKEN) as svc, ServerThread(svc.app) as srv:
        yield svc, srv.url


@pytest.fixture(scope="module")
def client(server: tuple[Service, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def chat(client: openai.OpenAI, text: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": text}], **kw
    )


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4")
    assert err.value.code == "model_not_found"


def test_benign_chat_is_the_unmonitored_greedy_output(
    world: ServeWorld, client: openai.OpenAI
) -> None:
    out = chat(client, BENIGN[2])
    choice = out.choices[0]
    want = world.tok.decode(
        world.greedy(chat_ids(world.tok, BENIGN[2]), 8), skip_special_tokens=True
    )
    assert choice.message.content == want
    assert choice.finish_reason == "length"
    assert choice.featureguard == {"filtered": False, "action": None, "rules": []}
    assert out.usage.prompt_tokens == len(chat_ids(world.tok, BENIGN[2]))
    assert out.usage.completion_tokens == 8
    assert out.featureguard["policy"] == "t" and len(out.featureguard["policy_sha256"]) == 64


def test_streaming_yields_the_same_text_as_non_streaming(client: openai.OpenAI) -> None:
    full = chat(client, BENIGN[0]).choices[0].message.content
    stream = chat(client, BENIGN[0], stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == full and finish == "length"
    assert usage is not None and usage.completion_tokens == 8


def test_flagged_request_gets_content_filter(client: openai.OpenAI) -> None:
    out = chat(client, BAD_CHAT)
    c = out.choices[0]
    assert c.finish_reason == "content_filter" and c.message.content == ""
    assert c.featureguard == {"filtered": True, "action": "stop", "rules": ["bad-chat"]}
    stream = client.completions.create(
        model="tiny", prompt=BAD_PROMPT, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    last = chunks[-1].choices[0]
    assert last.finish_reason == "content_filter"
    assert last.featureguard["rules"] == ["bad-prompt"]  # shadow rules are not listed
    assert "".join(ch.choices[0].text for ch in chunks) == ""


def test_rule_details_can_be_hidden(world: ServeWorld, tmp_path: Path) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": BAD_CHAT}],
        "max_tokens": 4,
        "temperature": 0,
    }
    audit = str(tmp_path / "a.jsonl")
    with (
        world.service(hide_rule_details=True, audit_log=audit) as svc,
        ServerThread(svc.app) as srv,
    ):
        status, _, out = call(srv.url + "/v1/chat/completions", "POST", body)
    assert status == 200 and out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["featureguard"] == {"filtered": True}


def test_n_stop_and_batch_of_prompts(world: ServeWorld, client: openai.OpenAI) -> None:
    out = chat(client, BENIGN[1], n=3)
    texts = [c.message.content for c in sorted(out.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 1 and [c.index for c in out.choices] == [0, 1, 2]
    full = texts[0]
    stop = full[2:4]
    at = full.find(stop)
    assert stop and at < len(full) - 2
    cut = chat(client, BENIGN[1], stop=[stop])
    assert cut.choices[0].message.content == full[:at] and cut.choices[0].finish_reason == "stop"
    many = client.completions.create(
        model="tiny", prompt=[BENIGN[0], BAD_PROMPT], n=2, max_tokens=4, temperature=0
    )
    reasons = [c.finish_reason for c in sorted(many.choices, key=lambda c: c.index)]
    assert reasons == ["length", "length", "content_filter", "content_filter"]


def test_metrics_count_the_requests_and_audit_equals_matches(
    world: ServeWorld, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    with world.service(audit_log=str(audit)) as svc, ServerThread(svc.app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        for text in [BAD_CHAT, BENIGN[0], BAD_CHAT]:
            chat(c, text, max_tokens=4)
        c.completions.create(model="tiny", prompt=BAD_PROMPT, max_tokens=4, temperature=0)
        status, _, body = call(srv.url + "/metrics")
    reg = svc.registry
    chat_ok = {"endpoint": "/v1/chat/completions", "code": "200"}
    assert metric(reg, "featureguard_http_requests_total", **chat_ok) == 3
    cmpl_ok = {"endpoint": "/v1/completions", "code": "200"}
    assert metric(reg, "featureguard_http_requests_total", **cmpl_ok) == 1
    assert metric(reg, "featureguard_requests_total") == 4
    filtered = metric(reg, "featureguard_responses_filtered_total", endpoint="/v1/chat/completions")
    assert filtered == 2
    matches = {
        rule: metric(reg, "featureguard_rule_matches_total", rule=rule, severity=sev, mode=mode)
        for rule, sev, mode in [
            ("bad-chat", "critical", "enforce"),
            ("bad-prompt", "high", "enforce"),
            ("watch", "low", "shadow"),
        ]
    }
    assert matches == {"bad-chat": 2, "bad-prompt": 1, "watch": 1}
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert len(lines) == sum(matches.values())
    assert sorted(e["rule"] for e in lines) == ["bad-chat", "bad-chat", "bad-prompt", "watch"]
    assert all(e["context"]["request_id"].startswith(("chatcmpl-", "cmpl-")) for e in lines)
    assert status == 200 and "featureguard_http_requests_total" in body


def test_admin_requires_the_token_and_refuses_an_invalid_policy(
    world: ServeWorld, server: tuple[Service, str]
) -> None:
    svc, url = server
    before = svc.watcher.policy.sha256
    yaml = world.policy_path.read_text()
    assert call(url + "/admin/policy", "PUT", yaml)[0] == 401
    bad_auth = {"Authorization": "Bearer wrong"}
    assert call(url + "/admin/policy", "PUT", yaml, headers=bad_auth)[0] == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    broken = yaml.replace("severity: critical", "severity: apocalyptic")
    status, _, body = call(url + "/admin/policy", "PUT", broken, headers=auth)
    assert status == 422 and body["error"]["code"] == "invalid_policy"
    assert "severity" in body["error"]["message"] and body["sha256"] == before
    assert svc.watcher.policy.sha256 == before
    assert call(url + "/readyz")[2]["checks"]["policy"]["sha256"] == before
    newer = yaml.replace("revision: r1", "revision: r2")
    status, _, body = call(url + "/admin/policy", "PUT", newer, headers=auth)
    assert status == 200 and body["ok"] and body["revision"] == "r2"
    assert call(url + "/readyz")[2]["checks"]["policy"]["revision"] == "r2"
    reg = svc.registry
    assert metric(reg, "featureguard_policy_reloads_total", result="failed") >= 1
    info = {"policy": "t", "version": "r2", "sha256": body["sha256"]}
    assert metric(reg, "featureguard_policy_info", **info) == 1
    status, _, body = call(url + "/admin/reload", "POST", b"", headers=auth)  # back to the file
    assert status == 200 and body["revision"] == "r1"


def test_admin_is_off_without_a_token(world: ServeWorld, tmp_path: Path) -> None:
    with world.service(audit_log=str(tmp_path / "a.jsonl")) as svc, ServerThread(svc.app) as srv:
        auth = {"Authorization": "Bearer anything"}
        assert call(srv.url + "/admin/reload", "POST", b"", headers=auth)[0] == 404


BAD_REQUESTS = [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", {"model": "tiny"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user"}]},
        400,
        "messages.0.content",
    ),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "temperature": 7}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "n": 50}, 400, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": []}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "stop": ["a"] * 5}, 400, "stop"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "logprobs": 3}, 400, "logprobs"),
    (
        "/v1/chat/completions",
        {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
        404,
        "model",
    ),
    ("/v1/nothing-here", {"model": "tiny"}, 404, None),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS)
def test_malformed_requests_get_openai_error_bodies(
    server: tuple[Service, str], path: str, body: Any, status: int, param: str | None
) -> None:
    got, _, out = call(server[1] + path, "POST", body, {"Content-Type": "application/json"})
    assert got == status, out
    assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["message"]
    assert out["error"]["param"] == param


def test_prompt_and_max_tokens_must_fit_the_context(server: tuple[Service, str]) -> None:
    svc, url = server
    ctx = svc.settings.context_length
    assert ctx is not None and ctx <= svc.settings.max_tokens_limit
    body = {"model": "tiny", "prompt": "hi", "max_tokens": ctx}
    status, _, out = call(url + "/v1/completions", "POST", body)
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"
    assert out["error"]["param"] == "max_tokens"
    status, _, out = call(url + "/v1/completions", "POST", {"model": "tiny", "prompt": "hi " * ctx})
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"


def test_the_server_still_answers_after_malformed_requests(client: openai.OpenAI) -> None:
    assert chat(client, BENIGN[0]).choices[0].finish_reason == "length"


def test_healthz_and_readyz(server: tuple[Service, str]) -> None:
    url = server[1]
    status, _, body = call(url + "/healthz")
    assert status == 200 and body == {"status": "ok"}
    status, _, body = call(url + "/readyz")
    assert status == 200 and body["ready"] is True
    assert body["checks"]["preflight"] == "skipped" and body["checks"]["worker"] is True


def test_sse_wire_format(server: tuple[Service, str]) -> None:
    body = {"model": "tiny", "prompt": BENIGN[0], "max_tokens": 3, "temperature": 0, "stream": True}
    status, headers, text = call(server[1] + "/v1/completions", "POST", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(text)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


def test_policy_file_change_is_picked_up_while_serving(world: ServeWorld, tmp_path: Path) -> None:
    import shutil
    import time

    policy = tmp_path / "policy.yaml"
    shutil.copy(world.policy_path, policy)
    svc = Service(
        world.model,
        world.tok,
        policy,
        ServeOptions(
            model_name="tiny",
            preflight="off",
            audit_log=str(tmp_path / "a.jsonl"),
            reload_interval_s=0.1,
        ),
    )
    with svc, ServerThread(svc.app) as srv:
        policy.write_text(policy.read_text().replace("revision: r1", "revision: r9"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if call(srv.url + "/readyz")[2]["checks"]["policy"]["revision"] == "r9":
                break
            time.sleep(0.1)
        checks = call(srv.url + "/readyz")[2]["checks"]
        assert checks["policy"]["revision"] == "r9" and checks["policy"]["generation"] == 2
        text = call(srv.url + "/metrics")[2]
        assert 'featureguard_policy_info{policy="t",sha256="' in text and 'version="r9"' in text
        assert 'version="r1"' not in text  # the old policy's info series is gone


def test_replicas_of_one_policy_export_the_same_policy_hash(
    world: ServeWorld, tmp_path: Path
) -> None:
    infos = []
    for i in range(2):
        audit = str(tmp_path / f"r{i}.jsonl")
        with world.service(audit_log=audit) as svc, ServerThread(svc.app) as srv:
            text = call(srv.url + "/metrics")[2]
        infos.append([ln for ln in text.splitlines() if ln.startswith("featureguard_policy_info{")])
    assert len(infos[0]) == 1 and infos[0] == infos[1]
