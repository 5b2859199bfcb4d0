"""``featureguard bench policy``: evaluator cost per generated token vs rules, probes, batch.

Each configuration compiles a synthetic policy (:mod:`monitor.policy.synthetic`), then times
``step`` on one new token per row (the decode path), over alternating repeats. Printed: median
and spread (min–max around the median) of microseconds per step, per token (÷ batch), and the
ratio to the smallest configuration of the sweep; cost must grow sub-linearly in rules.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

WORDS = "bench policy"
HELP = "time the policy evaluator per token vs rules (1-1000), probes (1-100) and batch size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rules", default="1,10,100,1000", help="rule counts (default %(default)s)"
    )
    parser.add_argument("--probes", default="1,10,100", help="probe counts (default %(default)s)")
    parser.add_argument("--batch", default="1,32", help="batch sizes (default %(default)s)")
    parser.add_argument("--features", type=int, default=50, help="distinct features (K)")
    parser.add_argument("--steps", type=int, default=40, help="decode steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per configuration")
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="T",
        help="also time one prefill call of T tokens (0: skip)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: leave as is). The evaluator's tensors "
        "are small; on a busy CPU, OpenMP threads mostly wait on each other",
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _time_steps(
    policy: Any, batch: int, steps: int, repeats: int, device: Any, prefill: int
) -> tuple[list[float], list[float]]:
    """Seconds per decode step for each repeat, and per prefill call (if asked)."""
    import torch

    from monitor.policy.evaluator import Evaluator

    ev = Evaluator(policy)
    gen = torch.Generator().manual_seed(0)
    # sparse, SAE-like activations: most features 0, some well over the thresholds
    acts = (
        (torch.rand(steps, batch, 1, policy.K, generator=gen) < 0.2)
        * torch.rand(steps, batch, 1, policy.K, generator=gen)
        * 6
    )
    acts = acts.to(device)
    valid = torch.ones(batch, 1, dtype=torch.bool, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    state = ev.new_state(batch, device)
    for i in range(5):  # warm-up
        ev.step(acts[i], valid, "completion", state)
    per_step, per_prefill = [], []
    for _ in range(repeats):
        state = ev.new_state(batch, device)
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            ev.step(acts[i], valid, "completion", state)
        sync()
        per_step.append((time.perf_counter() - t0) / steps)
        if prefill:
            x = acts[:, :, 0].transpose(0, 1).repeat(1, prefill // steps + 1, 1)[:, :prefill]
            state = ev.new_state(batch, device)
            sync()
            t0 = time.perf_counter()
            ev.step(x, torch.ones(batch, prefill, dtype=torch.bool, device=device), "prompt", state)
            sync()
            per_prefill.append(time.perf_counter() - t0)
    return per_step, per_prefill


def _fmt(samples: list[float]) -> tuple[float, str]:
    med = statistics.median(samples)
    return med, f"{med * 1e6:9.1f} µs  ({min(samples) * 1e6:.0f}–{max(samples) * 1e6:.0f})"


def run(args: argparse.Namespace) -> int:
    import torch

    from monitor.policy.synthetic import synthetic_policy

    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"featureguard bench policy: device {device}, K={args.features} features, "
        f"{args.steps} decode steps × {args.repeats} repeats, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        print("cuda: not measured (no CUDA device)")
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs; figures are noisy")
    sweeps = [("rules", r, 0) for r in _ints(args.rules)] + [
        ("probes", 20, p) for p in _ints(args.probes)
    ]
    for batch in _ints(args.batch):
        base: dict[str, float] = {}
        head = (
            f"{'sweep':<7}{'rules':>6}{'probes':>7}  {'per step: median (min–max)':<34}"
            f"{'per token':>11}{'ratio':>8}"
        )
        print(f"\nbatch {batch}\n{head}" + ("   prefill/token" if args.prefill else ""))
        for sweep, n_rules, n_probes in sweeps:
            policy = synthetic_policy(n_rules=n_rules, n_features=args.features, n_probes=n_probes)
            steps, prefills = _time_steps(
                policy, batch, args.steps, args.repeats, device, args.prefill
            )
            med, text = _fmt(steps)
            base.setdefault(sweep, med)
            line = (
                f"{sweep:<7}{n_rules:>6}{n_probes:>7}  {text:<34}"
                f"{med / batch * 1e6:>8.1f} µs{med / base[sweep]:>7.2f}x"
            )
            if prefills:
                line += f"   {statistics.median(prefills) / args.prefill / batch * 1e6:8.1f} µs"
            print(line, flush=True)
    print(
        "\nratio: median time per step over the first configuration of the same sweep and "
        "batch (1000× the rules at linear cost would be 1000x)."
    )
    return 0
