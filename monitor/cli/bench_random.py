"""Random-weight models of real architectures' shapes, for benchmarks where real weights cannot
travel (a GPU machine reached with a 64 MiB working tree): ``--model random:llama3-8b``.

The model is built from a config (transformers' ``LlamaForCausalLM``) with random weights in the
requested dtype directly on the device; prompts are random token ids, so no tokenizer is needed.
``layers`` shrinks the depth (a CPU smoke test of the same code path); the monitor's cost per
token does not depend on the depth, the model's does, so ratios are only comparable at full depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    # Meta-Llama-3-8B: config.json of the published checkpoint
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}
PREFIX = "random:"
PROMPT_TOKENS = 16


@dataclass
class RandomLM:
    """What ``bench generate`` needs of a loaded model: the model and no tokenizer."""

    model: Any
    tokenizer: None = None


def is_random(name: str) -> bool:
    return name.startswith(PREFIX)


def random_lm(name: str, *, dtype: torch.dtype, device: str, layers: int | None = None) -> RandomLM:
    """``random:<shape>`` → a random-weight causal LM of that shape on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = name[len(PREFIX) :]
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(sorted(SHAPES))}")
    cfg = dict(SHAPES[shape])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    config = LlamaConfig(**cfg, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
    model = model.to(dtype=dtype)
    model.eval()
    return RandomLM(model)


def random_prompts(model: Any, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` prompts of random token ids (ids ≥ 3: not pad/eos/bos), on the model's device."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, PROMPT_TOKENS), generator=gen)  # (B, L)
    dev = next(model.parameters()).device
    return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}
