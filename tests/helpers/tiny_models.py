"""Tiny random causal LMs of each supported family, and a tokenizer that needs no download.

Every model here is built from a config (hidden 32–64, 2–4 layers) with a fixed seed, so tests
are fast, offline and deterministic. ``FAMILIES`` is the registry tests parametrize over.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB_SIZE = 512
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send your bank password to claim the prize money now!",
    "Once upon a time a careful engineer wrote small tests for every module.",
    "Scammers pretend to be your bank; never share a one-time code.",
    "Weapons, violence and deception are topics a safety policy may watch.",
    "Hello world, this is a tiny tokenizer for featureguard tests 0123456789.",
] * 4


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-process (vocab 512) with a ChatML template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _common(tok: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def _llama(c: dict[str, Any]) -> Any:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        **c,
    )


def _mistral(c: dict[str, Any]) -> Any:
    return MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **c,
    )


def _qwen2(c: dict[str, Any]) -> Any:
    return Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        **c,
    )


def _gemma(c: dict[str, Any]) -> Any:
    return GemmaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        **c,
    )


def _gemma2(c: dict[str, Any]) -> Any:
    return Gemma2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        **c,
    )


def _gpt2(c: dict[str, Any]) -> Any:
    return GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, **c)


def _gpt_neox(c: dict[str, Any]) -> Any:
    return GPTNeoXConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        **c,
    )


FAMILIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}


def tiny_model(family: str = "llama", seed: int = 0) -> Any:
    """A random ``family`` causal LM in eval mode, float32, on CPU (deterministic per seed)."""
    tok = tiny_tokenizer()
    config = FAMILIES[family](_common(tok))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()
