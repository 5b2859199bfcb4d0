"""``featureguard generate``: generate a completion with a model, monitored when ``--policy``
is given (the completion is printed, then each rule match and the row's outcome)."""

from __future__ import annotations

import argparse
import json

WORDS = "generate"
HELP = "generate a completion for a prompt with a model (alias, path or hub name)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the user message (the chat template is applied)")
    parser.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--policy", help="monitor with this policy file (or shipped name)")
    parser.add_argument(
        "--context", default=None, help='request context as JSON, e.g. \'{"tenant": "acme"}\''
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from sae.lm import load_model

    lm = load_model(args.model)
    tok = lm.tokenizer
    if args.raw or tok.chat_template is None:
        enc = tok(args.prompt, return_tensors="pt")
    else:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": args.prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
    prompt_len = enc["input_ids"].shape[1]
    if not args.policy:
        with torch.no_grad():
            out = lm.model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
        print(tok.decode(out[0, prompt_len:], skip_special_tokens=True))
        return 0

    import monitor
    from monitor.runtime import CollectingDispatcher

    events = CollectingDispatcher()
    context = json.loads(args.context) if args.context else None
    with monitor.attach(lm.model, args.policy, dispatcher=events, tokenizer=tok) as guarded:
        with torch.no_grad():
            out = guarded.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                monitor_context=context,
            )
        report = guarded.last_report
    assert report is not None
    print(tok.decode(out[0, prompt_len:], skip_special_tokens=True))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    row = report.rows[0]
    for e in events.events:
        feats = ", ".join(f"{k}={v:.3g}" for k, v in e.features.items())
        print(
            f"-- {e.rule} [{e.severity}, {e.mode}] at token {e.token_index} ({e.phase}): "
            f"{', '.join(e.actions)}; {feats}"
        )
    outcome = (
        f"replaced by {row.halt_rule}"
        if row.replaced
        else f"stopped by {row.halt_rule} at token {row.halt_token}"
        if row.stopped
        else "clean"
        if row.clean
        else "completed"
    )
    print(f"-- {row.tokens_seen} tokens checked, {row.degraded_tokens} degraded; {outcome}")
    return 0
