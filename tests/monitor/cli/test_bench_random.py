"""``bench generate --model random:<shape>``: random-weight models of real shapes for GPU runs."""

from __future__ import annotations

import pytest
import torch

from monitor.cli import main
from monitor.cli.bench_random import SHAPES, random_lm, random_prompts


def test_llama3_8b_shape_has_the_published_parameter_count() -> None:
    lm = random_lm("random:llama3-8b", dtype=torch.bfloat16, device="meta")
    n = sum(p.numel() for p in lm.model.parameters())
    assert n == 8_030_261_248  # Meta-Llama-3-8B
    assert lm.tokenizer is None and lm.model.dtype == torch.bfloat16


def test_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'gpt5'"):
        random_lm("random:gpt5", dtype=torch.float32, device="meta")


def test_bench_generate_runs_on_a_random_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = {**SHAPES["llama3-8b"], "hidden_size": 64, "intermediate_size": 128}
    tiny |= {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
    monkeypatch.setitem(SHAPES, "tiny", tiny)
    lm = random_lm("random:tiny", dtype=torch.float32, device="cpu", layers=2)
    enc = random_prompts(lm.model, 3)
    assert enc["input_ids"].shape == (3, 16) and int(enc["input_ids"].min()) >= 3
    argv = ["bench", "generate", "--model", "random:tiny", "--layers", "2", "--quick"]
    assert main([*argv, "--d-sae", "256", "--batch-sizes", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "model random:tiny on cpu, SAE random (d_sae=256" in out
    assert "GPU: not measured" in out
    for line in ("batch 1", "batch 2", "full dictionary (256 feats)"):
        assert line in out
