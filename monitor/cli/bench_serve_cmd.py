"""``featureguard bench serve``: server throughput, unmonitored vs monitored, side by side.

One process, one model. For each concurrency (1, 4, 16 streaming clients by default) and each
repeat, the same set of benign chat requests (greedy, so both sides generate the same tokens)
is sent through an unmonitored server and through a server guarded by the policy, alternating.
Prints requests/s and completion tokens/s (median and min–max) and the monitored/unmonitored
ratio. Both servers run the same Engine (queue + micro-batching) on 127.0.0.1; the only
difference is the monitor. Run it on a quiet machine: no other job may load the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

WORDS = "bench serve"
HELP = "server requests/s and tokens/s with 1/4/16 streaming clients, monitored vs unmonitored"

PROMPTS = [
    "Write a short note about the history of the bicycle.",
    "Explain how a rainbow forms, in simple words.",
    "Give three tips for keeping houseplants healthy.",
    "Describe a quiet morning in a mountain village.",
    "What are the main parts of a cell?",
    "Suggest a name for a friendly neighbourhood bakery and say why.",
    "Summarise the rules of chess in a few sentences.",
    "Write a haiku about autumn leaves.",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    p.add_argument("--policy", default="default", help="policy file or shipped name")
    p.add_argument("--clients", default="1,4,16", help="concurrent streaming clients")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="one repeat, 8 tokens (a smoke test)")


def _drive(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> tuple:
    """Run ``clients`` threads of ``per_client`` streaming requests; (seconds, tokens, errors)."""
    import openai

    tokens, errors, lock = [0], [0], threading.Lock()

    def client(k: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
        for i in range(per_client):
            prompt = PROMPTS[(k * per_client + i) % len(PROMPTS)]
            try:
                stream = c.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                n = 0
                for chunk in stream:
                    if chunk.usage is not None:
                        n = chunk.usage.completion_tokens
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                tokens[0] += n

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, tokens[0], errors[0]


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from monitor.metrics import Metrics
    from monitor.resources import resolve_policy_path
    from monitor.serve.app import ServeSettings, ServeState, create_app
    from monitor.serve.build import ServeOptions, Service
    from monitor.serve.engine import Engine, PassThrough
    from monitor.serve.server import ServerThread
    from sae.lm import load_model

    repeats = 1 if args.quick else args.repeats
    max_tokens = 8 if args.quick else args.max_tokens
    counts = [int(c) for c in args.clients.split(",")]
    lm = load_model(args.model)
    lm.model.eval()
    name = "bench"
    options = ServeOptions(
        model_name=name, audit_log="/dev/null", max_batch_rows=args.max_batch, preflight="off"
    )
    guarded_svc = Service(lm.model, lm.tokenizer, resolve_policy_path(args.policy), options)
    metrics = Metrics(CollectorRegistry())
    plain = Engine(
        PassThrough(lm.model), lm.tokenizer, max_batch_rows=args.max_batch, metrics=metrics
    ).start()
    plain_app = create_app(ServeState(plain, metrics, ServeSettings(model_name=name)))
    print(
        f"model {args.model}, policy {guarded_svc.watcher.policy.name}, {max_tokens} tokens "
        f"per request (greedy, benign prompts), max batch {args.max_batch} rows, "
        f"{repeats} repeats, alternating"
    )
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    failed = 0
    with guarded_svc, ServerThread(plain_app) as s_plain, ServerThread(guarded_svc.app) as s_mon:
        sides = {"unmonitored": s_plain.url, "monitored": s_mon.url}
        for url in sides.values():  # warm-up, not timed
            _drive(url, name, 1, 1, 4)
        for c in counts:
            for _ in range(repeats):
                for side, url in sides.items():
                    secs, toks, errs = _drive(url, name, c, args.requests_per_client, max_tokens)
                    failed += errs
                    n_req = c * args.requests_per_client
                    results.setdefault((c, side), []).append((n_req / secs, toks / secs))
    plain.close()
    print(
        f"\n  {'clients':>7} {'side':<12} {'req/s':>7} {'tok/s':>8} {'tok/s spread':>17} "
        f"{'ratio':>6}"
    )
    for c in counts:
        base = statistics.median(t for _, t in results[(c, "unmonitored")])
        for side in ("unmonitored", "monitored"):
            rs = results[(c, side)]
            req = statistics.median(r for r, _ in rs)
            tok = [t for _, t in rs]
            med = statistics.median(tok)
            print(
                f"  {c:>7} {side:<12} {req:7.2f} {med:8.1f} {min(tok):8.1f}–{max(tok):<8.1f} "
                f"{med / base:6.3f}"
            )
    if failed:
        print(f"\n{failed} requests failed")
        return 1
    return 0
