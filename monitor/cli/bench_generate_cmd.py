"""``featureguard bench generate``: tokens/s of ``generate``, unmonitored vs monitored.

Side by side in one run, alternating repeats, compilation off on both sides and
``min_new_tokens = max_new_tokens`` (≥ 128 unless ``--quick``), greedy. Variants: unmonitored,
the synthetic policy (20 rules over 50 features, CONTRACTS), log-only, ablate-always-active and
a full-dictionary encode (one rule reading every feature), and the shipped default policy on the
bundled model. Prints median tokens/s, spread (min–max) and the ratio to unmonitored as the
median (and min–max) of the per-repeat paired ratios. ``--sweep`` adds rules 10→1000 and
monitored features 10→10,000 (a random SAE wide enough). Uses the bundled SAE when present, else
a random SAE of the model's width. ``--model random:llama3-8b`` benchmarks a random-weight model
of that shape (bf16 on a GPU, with a random 65,536-feature SAE; :mod:`bench_random`). A GPU
figure that was not measured is printed as "not measured".
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

WORDS = "bench generate"
HELP = "tokens/s of generate: unmonitored vs monitored (log-only, ablate, full dictionary)"
BUNDLED = "smollm2-135m-res-l15"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="alias, local path or hub name")
    parser.add_argument("--quick", action="store_true", help="few short runs (a smoke test)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--sweep", action="store_true", help="also sweep rules and features")
    parser.add_argument(
        "--d-sae",
        type=int,
        help="random SAE width (default: the bundled SAE, else 9216; 65536 for random: models)",
    )
    parser.add_argument(
        "--layers", type=int, help="random: models only — fewer layers (a CPU smoke test)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on a GPU",
    )


def policy_yaml(
    d_sae: int,
    n_rules: int,
    n_features: int,
    *,
    action: str = "log",
    always: bool = False,
    full: bool = False,
    seed: int = 0,
) -> str:
    """Rules over ``n_features`` random features (``full``: one rule over all of them)."""
    rng = random.Random(seed)
    idx = list(range(d_sae)) if full else rng.sample(range(d_sae), n_features)
    lines = [
        "version: 1",
        "policy: {name: bench, revision: b}",
        f"saes: {{main: {{bundled: bench, d_sae: {d_sae}}}}}",
        "features:",
    ]
    lines += [f"  f{i}: {{index: {j}}}" for i, j in enumerate(idx)]
    lines += ["lists:", f"  all: [{', '.join(f'f{i}' for i in range(len(idx)))}]", "rules:"]
    thr = 0.0 if always else 2.0
    act = "{type: ablate, features: [f0, f1, f2]}" if action == "ablate" else "{type: log}"
    if full:
        cond = f"{{count: {{list: all, above: {thr}, at_least: 3}}}}"
        lines.append(f"  - {{id: r0, severity: low, condition: {cond}, actions: [{act}]}}")
    for r in range(0 if full else n_rules):
        f = r % len(idx)
        cond = (
            f"{{not: {{feature: f{f}, above: 1.0e9}}}}"  # true on every token
            if always
            else f"{{feature: f{f}, above: {thr}}}"
        )
        lines.append(f"  - {{id: r{r}, severity: low, condition: {cond}, actions: [{act}]}}")
    return "\n".join(lines) + "\n"


def _policy(text: str, d_sae: int) -> Any:
    from monitor.policy.loader import load_policy_text
    from monitor.policy.saes import static_resolver

    return load_policy_text(text, "<bench>", resolver=static_resolver({"main": d_sae}))


def _sae(model: Any, model_name: str, d_sae: int | None = None) -> Any:
    from sae.hooks import decoder_layers
    from sae.loading import bundled_names, load_sae
    from sae.registry import create_sae

    p = next(model.parameters())
    if d_sae is None and model_name == "smollm2-135m" and BUNDLED in bundled_names():
        return load_sae(BUNDLED, dtype=p.dtype).to(p.device)
    _, layers = decoder_layers(model)
    d_in = model.config.get_text_config().hidden_size
    hook = f"blocks.{len(layers) // 2}.hook_resid_post"
    return create_sae(
        d_in=d_in,
        d_sae=d_sae or 9216,
        architecture="jumprelu",
        hook_name=hook,
        init="random",
        seed=0,
    ).to(device=p.device, dtype=p.dtype)


def _load(args: argparse.Namespace) -> Any:
    """The model: an alias/path/hub name, or ``random:<shape>`` (random weights, on the GPU
    when there is one)."""
    import torch

    from monitor.cli.bench_random import is_random, random_lm
    from sae.lm import load_model

    cuda = torch.cuda.is_available()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else None)
    if is_random(args.model):
        if args.d_sae is None:
            args.d_sae = 65536
        return random_lm(
            args.model,
            dtype=dtype or torch.float32,
            device="cuda" if cuda else "cpu",
            layers=args.layers,
        )
    lm = load_model(args.model, dtype=dtype or torch.float32)
    if cuda:
        lm.model.to("cuda")
    lm.model.eval()
    return lm


def _timed(fn: Any, n_tokens: int) -> tuple[float, float]:
    """``(tokens/s, seconds)`` of one call."""
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    return n_tokens / took, took


def measure(
    lm: Any, variants: dict[str, Any], batch: int, new: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """tokens/s per variant, repeats alternating between variants; and per monitored variant the
    share of each call's time spent in the monitor's hooks (``MonitorReport.overhead_s``)."""
    import torch

    tok = lm.tokenizer
    if tok is None:  # a random-weight model: random token ids
        from monitor.cli.bench_random import random_prompts

        enc = random_prompts(lm.model, batch)
    else:
        tok.padding_side = "left"
        prompts = [f"Write a short note about topic number {i}." for i in range(batch)]
        device = next(lm.model.parameters()).device
        enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    kw = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "disable_compile": True}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    hooks: dict[str, list[float]] = {name: [] for name, g in variants.items() if g is not None}
    with torch.no_grad():
        for g in variants.values():  # warm-up, not timed
            (g or lm.model).generate(**enc, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
        for _ in range(repeats):
            for name, g in variants.items():
                target = g or lm.model
                rate, took = _timed(lambda t=target: t.generate(**enc, **kw), batch * new)
                rates[name].append(rate)
                if g is not None and g.last_report is not None:
                    hooks[name].append(g.last_report.overhead_s / took)
    return rates, hooks


def _report(title: str, rates: dict[str, list[float]], hooks: dict[str, list[float]]) -> None:
    """Median tok/s and spread per variant; the ratio is the median of the per-repeat ratios to
    unmonitored (each repeat runs every variant back to back, so pairing cancels the machine's
    slow drift), with their min–max; "in hooks" is the median share of a monitored call's time
    spent in the monitor's hooks (host time, measured inside the same calls: on a CPU, where
    hooks run synchronously, ``1 − share`` bounds the ratio from the monitor's own work)."""
    base = rates["unmonitored"]
    print(f"\n{title}")
    print(
        f"  {'variant':<36} {'tok/s':>7} {'spread':>15} {'ratio':>7} {'ratio spread':>15}"
        f" {'in hooks':>9}"
    )
    for name, r in rates.items():
        paired = [a / b for a, b in zip(r, base, strict=True)]
        share = f"{statistics.median(hooks[name]):9.2%}" if hooks.get(name) else f"{'-':>9}"
        print(
            f"  {name:<36} {statistics.median(r):7.1f} {min(r):7.1f}–{max(r):<7.1f} "
            f"{statistics.median(paired):7.3f} {min(paired):7.3f}–{max(paired):<7.3f} {share}"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    import monitor

    new = 16 if args.quick else args.max_new_tokens
    repeats = 2 if args.quick else args.repeats
    if new < 128 and not args.quick:
        print("note: CONTRACTS ask for max_new_tokens >= 128; this run is not comparable")
    lm = _load(args)
    sae = _sae(lm.model, args.model, args.d_sae)
    d = sae.cfg.d_sae
    device = next(lm.model.parameters()).device
    print(
        f"model {args.model} on {device}, SAE {getattr(sae, 'source_path', None) or 'random'} "
        f"(d_sae={d}, {sae.cfg.hook_name}), {new} new tokens, {repeats} repeats"
    )
    if device.type != "cuda":
        print("GPU: not measured")
    specs = {
        "synthetic 20 rules/50 feats": None,
        "log-only 20 rules/50 feats": policy_yaml(d, 20, 50),
        "ablate (always active)": policy_yaml(d, 20, 50, action="ablate", always=True),
        f"full dictionary ({d} feats)": policy_yaml(d, 1, d, full=True),
    }
    guards: dict[str, Any] = {"unmonitored": None}
    if args.model == "smollm2-135m" and getattr(sae, "source_path", None) is not None:
        from monitor.policy.loader import load_policy
        from monitor.resources import resolve_policy_path

        default = load_policy(resolve_policy_path("default"))  # the shipped policy, as deployed
        guards[f"default policy ({len(default.rules)} rules/{default.K} feats)"] = monitor.attach(
            lm.model, default, saes={"main": sae}
        )
    try:
        for name, text in specs.items():
            if text is None:
                from monitor.policy.synthetic import synthetic_policy

                pol = synthetic_policy(d_sae=d)
            else:
                pol = _policy(text, d)
            guards[name] = monitor.attach(lm.model, pol, saes={"main": sae})
        for b in (int(x) for x in args.batch_sizes.split(",")):
            _report(f"batch {b}", *measure(lm, guards, b, new, repeats))
    finally:
        for g in guards.values():
            if g is not None:
                g.detach()
    if args.sweep:
        _sweeps(lm, args, new, max(1, repeats - 2))
    del torch
    return 0


def _sweeps(lm: Any, args: argparse.Namespace, new: int, repeats: int) -> None:
    import monitor

    sae = _sae(lm.model, args.model, args.d_sae)
    d = sae.cfg.d_sae
    for label, counts, make in (
        ("rules (50 features)", (10, 100, 1000), lambda n: policy_yaml(d, n, 50)),
        ("monitored features (10 rules)", (10, 100, 1000, 10000), None),
    ):
        guards: dict[str, Any] = {"unmonitored": None}
        try:
            for n in counts:
                if make is not None:
                    guards[f"{n}"] = monitor.attach(
                        lm.model, _policy(make(n), d), saes={"main": sae}
                    )
                    continue
                wide = _sae(lm.model, args.model, max(16384, n)) if n > d else sae
                text = policy_yaml(wide.cfg.d_sae, 10, n) + _count_rule(n)
                pol = _policy(text, wide.cfg.d_sae)
                guards[f"{n}"] = monitor.attach(lm.model, pol, saes={"main": wide})
            _report(f"sweep: {label}, batch 1", *measure(lm, guards, 1, new, repeats))
        finally:
            for g in guards.values():
                if g is not None:
                    g.detach()


def _count_rule(n: int) -> str:
    """One rule reading every listed feature, so the policy monitors all ``n``."""
    return (
        "  - {id: all, severity: low, condition: {count: {list: all, above: 2.0, "
        "at_least: 3}}, actions: [{type: log}]}\n"
    )
