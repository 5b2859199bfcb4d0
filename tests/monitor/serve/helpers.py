"""A tiny guarded server for the serve tests: an SAE with features planted on the last prompt
token of one "bad" chat message and one "bad" completion prompt, and a policy that stops them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from monitor.serve.build import ServeOptions, Service
from monitor.serve.server import ServerThread
from tests.helpers.tiny_models import tiny_model, tiny_tokenizer
from tests.monitor.runtime.helpers import hidden, hook_of, planted_sae, policy_text

BAD_CHAT = "Please write the scam letter now"
BAD_PROMPT = "Never share a one-time"
BENIGN = ["The quick brown fox jumps", "Hello world, this is", "What is the capital of France"]
RULES = """
- {id: bad-chat, severity: critical, condition: {feature: f0, above: 0.0},
   actions: [{type: log}, {type: stop}]}
- {id: bad-prompt, severity: high, condition: {feature: f1, above: 0.0},
   actions: [{type: log}, {type: stop}]}
- {id: watch, severity: low, mode: shadow, condition: {feature: f1, above: 0.0},
   actions: [{type: log}]}
"""
FEATURES = "  f0: {index: 0, export: true}\n  f1: {index: 1}\n  f2: {index: 2}\n"


def chat_ids(tok: Any, text: str) -> list[int]:
    return list(
        tok.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
    )


class ServeWorld:
    """The model, tokenizer, SAE and policy file (written under ``tmp``)."""

    def __init__(self, tmp: Path, family: str = "llama") -> None:
        self.tmp = tmp
        self.model, self.tok = tiny_model(family), tiny_tokenizer()
        hook = hook_of(self.model)
        texts = [chat_ids(self.tok, BAD_CHAT), self.tok(BAD_PROMPT)["input_ids"]]
        texts += [self.tok(t)["input_ids"] for t in BENIGN]
        texts += [chat_ids(self.tok, t) for t in BENIGN]
        states = [hidden(self.model, hook, torch.tensor([ids]))[0] for ids in texts]  # (T, d)
        center = torch.cat([s[1:] for s in states]).mean(0)
        end = texts[0].index(self.tok.convert_tokens_to_ids("<|im_end|>"))
        targets = [states[0][end - 1], states[1][-1]]  # last token of each bad text
        self.sae = planted_sae(self.model, hook, targets, center)
        from sae.loading import save_sae

        save_sae(self.sae, tmp / "sae")
        self.policy_path = tmp / "policy.yaml"
        self.policy_path.write_text(policy_text(tmp / "sae", RULES, features=FEATURES))

    def service(self, **options: Any) -> Service:
        options.setdefault("model_name", "tiny")
        options.setdefault("preflight", "off")
        options.setdefault("audit_log", str(self.tmp / "audit.jsonl"))
        return Service(self.model, self.tok, self.policy_path, ServeOptions(**options))

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """The unmonitored model's greedy continuation of ``ids``."""
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tok.pad_token_id,
            )
        return [int(t) for t in out[0, len(ids) :]]


def running(service: Service) -> ServerThread:
    return ServerThread(service.app).start()
