"""``featureguard serve``: the OpenAI-compatible guarded HTTP API (see :mod:`monitor.serve`).

Loads the model, the policy (hot-reloaded when its file changes) and the policy's SAEs, runs
the preflight, then serves on 127.0.0.1:8000 by default. When it accepts connections it prints
``featureguard serve: listening on http://HOST:PORT`` to stderr. ``FEATUREGUARD_ADMIN_TOKEN``
in the environment enables ``POST /admin/reload`` and ``PUT /admin/policy``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

WORDS = "serve"
HELP = "serve an OpenAI-compatible API of a model guarded by a policy (127.0.0.1 by default)"
ADMIN_TOKEN_ENV = "FEATUREGUARD_ADMIN_TOKEN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    p.add_argument("--policy", default="default", help="policy file or shipped name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--model-name", help="the model id clients send (default: --model's name)")
    p.add_argument("--audit-log", help="audit JSONL file (default: the policy's audit sink)")
    p.add_argument("--max-batch", type=int, default=8, help="rows per generate call")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests before 429")
    p.add_argument(
        "--hold-back",
        type=int,
        default=1,
        help="stream N tokens late so a stop/replace can suppress the tokens that caused it",
    )
    p.add_argument("--max-tokens-limit", type=int, default=2048)
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--reload-interval", type=float, default=1.0, help="policy file poll, s")
    p.add_argument(
        "--hide-rule-details",
        action="store_true",
        help="responses say only that a choice was filtered, not which rule or action",
    )
    p.add_argument(
        "--preflight",
        choices=["strict", "warn", "off"],
        default="strict",
        help="check each SAE on this model at start: refuse to start, start not-ready, or skip",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from monitor.resources import resolve_policy_path
    from monitor.serve.build import ServeOptions, Service
    from monitor.serve.server import base_url, bind, serve_forever
    from sae.lm import is_cached, load_model

    def say(msg: str) -> None:
        print(f"featureguard serve: {msg}", file=sys.stderr, flush=True)

    path = Path(args.policy)
    policy = path if path.exists() else resolve_policy_path(args.policy)
    sock = bind(args.host, args.port)  # fail fast on a taken port, before loading anything
    t0 = time.perf_counter()
    first = args.model == "smollm2-135m" and not is_cached(args.model)
    say(f"loading {args.model}" + (" (first run: converting the GGUF, ~30 s)" if first else ""))
    lm = load_model(args.model)
    say(f"model loaded in {time.perf_counter() - t0:.1f} s; policy {policy}")
    options = ServeOptions(
        model_name=args.model_name or Path(args.model.rstrip("/")).name,
        audit_log=args.audit_log,
        max_batch_rows=args.max_batch,
        max_queue=args.max_queue,
        hold_back=args.hold_back,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        reload_interval_s=args.reload_interval,
        hide_rule_details=args.hide_rule_details,
        preflight=args.preflight,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
    )
    try:
        service = Service(lm.model, lm.tokenizer, policy, options)
    except BaseException:
        sock.close()
        raise
    url = base_url(sock)
    with service:
        p = service.watcher.policy
        say(
            f"model {options.model_name!r}; policy {p.name} {p.revision or ''} "
            f"sha256 {p.sha256[:12]}; preflight {service.preflight}; admin endpoints "
            + ("on" if options.admin_token else f"off (set {ADMIN_TOKEN_ENV})")
        )
        serve_forever(service.app, sock, lambda: say(f"listening on {url}"))
        say("shutting down")
    return 0
