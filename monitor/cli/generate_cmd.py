"""``featureguard generate``: generate a completion with a model (monitored once a policy is given)."""

from __future__ import annotations

import argparse

WORDS = "generate"
HELP = "generate a completion for a prompt with a model (alias, path or hub name)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the user message (the chat template is applied)")
    parser.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")


def run(args: argparse.Namespace) -> int:
    import torch

    from sae.lm import load_model

    lm = load_model(args.model)
    tok = lm.tokenizer
    if args.raw or tok.chat_template is None:
        enc = tok(args.prompt, return_tensors="pt")
    else:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True,
        )
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
    prompt_len = enc["input_ids"].shape[1]
    print(tok.decode(out[0, prompt_len:], skip_special_tokens=True))
    return 0
