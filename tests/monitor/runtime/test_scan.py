"""``scan`` and the ``policy test`` text encoder use the runtime's own hook and encode path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import monitor
from monitor.runtime import CollectingDispatcher
from monitor.runtime.texts import messages_pair, text_encoder
from monitor.runtime.textscan import scan_batch
from tests.monitor.runtime.helpers import LOG_RULES, World, events_of


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World("llama", tmp_path_factory.mktemp("scan"))


def unpadded(world: World) -> tuple[list[list[int]], list[list[int]]]:
    prompts, completions = [], []
    for b in range(3):
        prompts.append(world.enc["input_ids"][b, world.pads[b] :].tolist())
        completions.append(world.ref[b, world.L0 :].tolist())
    return prompts, completions


def test_scan_reports_the_same_events_as_generate(world: World) -> None:
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(LOG_RULES), dispatcher=d) as g:
        rows = scan_batch(g, *unpadded(world))
    want = sorted((b, f"r{i}", world.token(i)) for i, (b, _) in enumerate(world.cols))
    assert events_of(d) == want
    assert [r.report.completion_tokens for r in rows] == [World.NEW] * 3
    assert rows[0].completion_acts.shape == (World.NEW, 3)
    cols = g.policy.feature_columns
    assert rows[0].features_max(cols)["f0"] == pytest.approx(1.0, abs=0.05)


def test_scan_with_a_whole_dictionary_probe_lists_named_features_only(world: World) -> None:
    """A weights-file probe reads every feature; scan's output keeps to the named ones, by
    column, even where a probe input shares a named feature's column."""
    import hashlib

    from monitor.policy.catalog import probe_file_bytes, sae_fingerprint
    from sae.loading import save_sae

    d = world.tmp / "fileprobe"
    d.mkdir(exist_ok=True)
    save_sae(world.sae, d / "sae")
    sha = sae_fingerprint(d / "sae")
    n = world.sae.cfg.d_sae
    raw = probe_file_bytes(list(range(n)), [1.0] + [0.0] * (n - 1))  # score = feature 0
    (d / "w.safetensors").write_bytes(raw)
    (d / "cat.yaml").write_text(
        f'catalog_version: 1\nsae: {{name: sae, sha256: "{sha}"}}\nprobes:\n'
        f"  p: {{weights_file: w.safetensors, weights_sha256: {hashlib.sha256(raw).hexdigest()},\n"
        f'      bias: 0.0, link: linear, threshold: 0.5, sae_sha256: "{sha}"}}\n'
    )
    rules = (
        "- {id: pr, severity: high, condition: {probe: p}, actions: [{type: log}]}\n"
        "- {id: r2, severity: low, condition: {feature: f2, above: 0.0}, actions: [{type: log}]}\n"
        "- {id: r0, severity: low, condition: {feature: f0, above: 99.0}, actions: [{type: log}]}\n"
    )
    pol = world.policy(rules, "fileprobe", extra="imports: [{catalog: cat.yaml, sae: main}]\n")
    assert n == pol.K and set(pol.reported_features) == {"f0", "f2"}  # f1: no rule reads it
    assert pol.feature_names[pol.feature_columns["f2"]] == "f2"  # not "p[2]"
    d_ = CollectingDispatcher()
    with monitor.attach(world.model, pol, dispatcher=d_) as g:
        rows = scan_batch(g, *unpadded(world))
    names = {k: pol.feature_columns[k] for k in pol.reported_features}
    got = rows[0].features_max(names)
    assert set(got) == {"f0", "f2"} and got["f0"] == pytest.approx(1.0, abs=0.05)
    fired = {(e.row, e.rule) for e in d_.events}
    assert (0, "pr") in fired and (2, "r2") in fired


def test_scope_is_honoured(world: World) -> None:
    rules = (
        "- {id: c2, severity: low, scope: completion, condition: {feature: f2, above: 0.0}, "
        "actions: [{type: log}]}\n"
        "- {id: p2, severity: low, scope: prompt, condition: {feature: f2, above: 0.0}, "
        "actions: [{type: log}]}"
    )
    d = CollectingDispatcher()
    with monitor.attach(world.model, world.policy(rules, "scope"), dispatcher=d) as g:
        scan_batch(g, *unpadded(world))
    assert [(e.rule, e.phase) for e in d.events] == [("p2", "prompt")]


def test_text_encoder_feeds_policy_tests(world: World) -> None:
    pol = world.policy(LOG_RULES, "enc")
    enc = text_encoder(world.model, world.tok)
    prompt_acts, completion_acts, tokens = enc(pol, [("Hello world", "this is")])[0]
    assert prompt_acts.shape[1] == completion_acts.shape[1] == pol.K
    assert len(tokens) == prompt_acts.shape[0] + completion_acts.shape[0]
    assert torch.equal(prompt_acts[0], torch.zeros(pol.K))  # first token scored at 0


def test_messages_split_prompt_and_completion(world: World) -> None:
    msgs = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "world"}]
    p, c = messages_pair(world.tok, msgs)
    assert world.tok.decode(c) == "world"
    assert world.tok.decode(p).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError):
        messages_pair(world.tok, [{"role": "user"}])


def test_scan_command_writes_one_line_per_input(world: World, tmp_path: Path) -> None:
    from monitor.cli import scan_cmd

    model_dir = tmp_path / "model"
    world.model.save_pretrained(model_dir)
    world.tok.save_pretrained(model_dir)
    pol = world.policy(LOG_RULES, "cli")
    lines = [
        json.dumps({"id": "a", "text": world.tok.decode(unpadded(world)[1][0])}),
        "{not json",
        json.dumps({"id": "c", "messages": [{"role": "user", "content": "Hi"}]}),
        json.dumps({"id": "d", "label": 1}),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    args = argparse.Namespace(
        input=str(src),
        policy=str(world.tmp / "cli" / "policy.yaml"),
        model=str(model_dir),
        output=str(out),
        batch_size=2,
        max_tokens=256,
    )
    assert pol is not None
    assert scan_cmd.run(args) == 1  # bad lines are reported, and make the exit code 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("id") for r in recs] == ["a", None, "c", "d"]
    assert "error" in recs[1] and "error" in recs[3]
    assert set(recs[0]["features"]) == {"f0", "f1", "f2"}
    assert recs[2]["scored"]["completion_tokens"] == [recs[2]["scored"]["prompt_tokens"][1]] * 2


def test_generate_command_prints_events(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import generate_cmd

    model_dir = tmp_path / "model"
    world.model.save_pretrained(model_dir)
    world.tok.save_pretrained(model_dir)
    world.policy(LOG_RULES, "gen")
    args = argparse.Namespace(
        prompt="Hello world, this is",
        model=str(model_dir),
        max_new_tokens=4,
        raw=True,
        policy=str(world.tmp / "gen" / "policy.yaml"),
        context='{"tenant": "a"}',
        json=False,
    )
    assert generate_cmd.run(args) == 0
    assert "tokens checked" in capsys.readouterr().out
