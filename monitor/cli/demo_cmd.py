"""``featureguard demo``: the bundled model end to end (grows with the monitor)."""

from __future__ import annotations

import argparse

WORDS = "demo"
HELP = "run the scripted demo on the bundled model (offline)"

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=40)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import torch

    from sae.lm import is_cached, load_model

    t0 = time.perf_counter()
    first = not is_cached(args.model) if args.model == "smollm2-135m" else False
    print(
        f"loading {args.model}"
        + (" (first run: converting the GGUF once, ~30 s)" if first else ""),
        file=sys.stderr,
        flush=True,
    )
    lm = load_model(args.model)
    print(f"loaded in {time.perf_counter() - t0:.1f} s (from {lm.source})", file=sys.stderr)
    tok = lm.tokenizer
    for prompt in PROMPTS:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = lm.model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
        text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"\n>>> {prompt}\n{text.strip()}")
    return 0
