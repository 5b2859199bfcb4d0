"""Texts → token ids the way the runtime sees them, and the ``policy test`` text encoder.

- plain text: a completion with an empty prompt (no special tokens added);
- chat ``messages``: every turn before the last assistant turn is the prompt (chat template,
  generation prompt added), the last assistant turn, if any, is the completion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monitor.policy.compiled import CompiledPolicy

Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)


def _ids(out: Any) -> list[int]:
    ids = out["input_ids"] if isinstance(out, Mapping) or hasattr(out, "keys") else out
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def text_pair(tokenizer: Any, prompt: str, completion: str) -> Pair:
    """Raw prompt and completion text, tokenized separately (as generation produces them)."""
    p = _ids(tokenizer(prompt, add_special_tokens=False)) if prompt else []
    c = _ids(tokenizer(completion, add_special_tokens=False)) if completion else []
    return p, c


def messages_pair(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> Pair:
    """Chat turns → (prompt ids, completion ids); raises ValueError on a malformed list."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content}")
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError("each message needs a 'role' (text) and 'content' (text)")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message with role {m.get('role')!r} has no text 'content'")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; scan plain 'text' instead")
    has_completion = messages[-1]["role"] == "assistant"
    turns = list(messages[:-1] if has_completion else messages)
    prompt: list[int] = []
    if turns:
        prompt = _ids(
            tokenizer.apply_chat_template(
                [dict(m) for m in turns],
                add_generation_prompt=has_completion,
                tokenize=True,
                return_dict=True,
            )
        )
    completion = (
        _ids(tokenizer(messages[-1]["content"], add_special_tokens=False)) if has_completion else []
    )
    return prompt, completion


def text_encoder(model: Any, tokenizer: Any, **attach_kwargs: Any) -> Callable[..., Any]:
    """An ``EncodeTexts`` for :func:`monitor.policy.testing.run_test_file`: the policy's
    features of each ``(prompt, completion)`` through the runtime's hook and encode path."""
    from monitor.runtime.guarded import GuardedModel
    from monitor.runtime.textscan import scan_batch

    def encode(policy: CompiledPolicy, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        with GuardedModel(model, policy, tokenizer=tokenizer, **attach_kwargs) as guarded:
            ids = [text_pair(tokenizer, p, c) for p, c in pairs]
            rows = scan_batch(guarded, [p for p, _ in ids], [c for _, c in ids])
        return [
            (r.prompt_acts, r.completion_acts, [tokenizer.decode([t]) for t in p + c])
            for r, (p, c) in zip(rows, ids, strict=True)
        ]

    return encode


def lazy_text_encoder(model_name: str | None = None) -> Callable[..., Any]:
    """A text encoder that loads its model on first use: ``model_name``, else the model the
    policy's first SAE was trained on (``cfg.model_name``), else ``smollm2-135m``."""
    cache: dict[str, Callable[..., Any]] = {}

    def encode(policy: CompiledPolicy, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        from sae.errors import FeatureguardError

        name = model_name or _sae_model_name(policy) or "smollm2-135m"
        try:
            if name not in cache:
                from sae.lm import load_model

                lm = load_model(name)
                cache[name] = text_encoder(lm.model, lm.tokenizer)
            return list(cache[name](policy, pairs))
        except (FeatureguardError, OSError) as exc:  # reported on the case, not a crash
            raise ValueError(f"cannot encode text with model {name!r}: {exc}") from None

    return encode


def _sae_model_name(policy: CompiledPolicy) -> str | None:
    import json
    from pathlib import Path

    from monitor.policy.saes import bundled_sae_dir

    for s in policy.saes:
        folder = Path(s.path) if s.path else bundled_sae_dir(s.bundled or "")
        cfg = (folder if folder.is_dir() else folder.parent) / "cfg.json"
        if cfg.is_file():
            meta = json.loads(cfg.read_text()).get("metadata") or {}
            name = meta.get("model_name")
            if isinstance(name, str) and name:
                from sae.lm import KNOWN_MODELS

                for alias, known in KNOWN_MODELS.items():  # hub name → offline alias
                    if name in (alias, known.hf_name):
                        return alias
                return name
    return None
