"""``featureguard bench sae``: dense encode vs compiled subset encode, side by side, as ratios.

For each SAE shape (d_in 576 and 4096, 16× and 64× dictionaries, random weights) it times one
encode of T tokens with the dense path and with :class:`sae.encode.SubsetEncoder` over 10, 100
and 1000 features, in alternating order, and prints the median time per token, the spread
(min–max over repeats) and the dense/subset ratio. A ``topk`` row shows what monitoring a TopK
SAE costs (full top-k, then gather). Nothing else should load the machine while it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

WORDS = "bench sae"
HELP = "time dense vs subset SAE encoding (10/100/1000 features), as ratios"

# (d_in, expansion, tokens per call): fewer tokens for the big shapes keep the default run short.
FULL = [(576, 16, 256), (576, 64, 128), (4096, 16, 32), (4096, 64, 8)]
QUICK = [(576, 16, 64), (4096, 16, 8)]
SUBSETS = (10, 100, 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="two small shapes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16...")
    parser.add_argument("--no-topk", action="store_true", help="skip the topk rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: every core of the machine)",
    )


def _bench_sae(d_in: int, d_sae: int, arch: str, device: Any, dtype: Any) -> Any:
    """A random SAE for timing encode only: W_dec is a zero-stride view, so it costs no memory."""
    import torch

    from sae.registry import create_sae

    extra: dict[str, Any] = {"k": 64} if arch == "topk" else {}
    sae = create_sae(d_in=d_in, d_sae=d_sae, architecture=arch, device="meta", **extra)
    gen = torch.Generator().manual_seed(0)
    for name, shape in type(sae).param_shapes(sae.cfg).items():
        if name == "W_dec":
            t = torch.zeros(1, dtype=dtype, device=device).expand(*shape)
        else:
            t = torch.rand(shape, generator=gen).sub_(0.5).mul_(0.1).to(device, dtype)
        setattr(sae, name, torch.nn.Parameter(t, requires_grad=False))
    return sae.eval()


def _time(fn: Any, x: Any, sync: Any) -> float:
    import time

    sync()
    t0 = time.perf_counter()
    fn(x)
    sync()
    return time.perf_counter() - t0


def bench_shape(
    d_in: int, expansion: int, tokens: int, *, arch: str, repeats: int, device: str, dtype: Any
) -> dict[str, Any]:
    """Median and spread (seconds per token) of each method on one SAE shape."""
    import statistics

    import torch

    from sae.encode import SubsetEncoder, dense_encode

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    d_sae = d_in * expansion
    sae = _bench_sae(d_in, d_sae, arch, dev, dtype)
    x = torch.randn(1, tokens, d_in, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    gen = torch.Generator().manual_seed(2)
    methods: dict[str, Any] = {"dense": lambda t: dense_encode(sae, t)}
    for k in SUBSETS:
        idx = torch.randperm(d_sae, generator=gen)[:k]
        methods[f"subset{k}"] = SubsetEncoder(sae, idx, dtype=dtype, device=dev)
    names = list(methods)
    for name in names:  # warm-up
        _time(methods[name], x, sync)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order
            times[name].append(_time(methods[name], x, sync) / tokens)
    return {n: (statistics.median(v), min(v), max(v)) for n, v in times.items()}


def _fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:8.1f}" if us < 1e4 else f"{us:8.0f}"


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from sae.base import parse_dtype

    cores = os.cpu_count() or 1
    threads = args.threads or cores
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    shapes = QUICK if args.quick else FULL
    repeats = args.repeats or (3 if args.quick else 7)
    dtype = parse_dtype(args.dtype)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("featureguard: CUDA requested but not available; GPU: not measured")
        return 2
    print(
        f"bench sae: torch {torch.__version__}, {threads} threads, device {args.device}, "
        f"{args.dtype}, {repeats} alternating repeats; µs/token median [min–max]"
    )
    if not args.device.startswith("cuda"):
        print("GPU: not measured (run with --device cuda on a GPU machine)")
    if load > 0.5 * cores:
        print(
            f"WARNING: load average {load:.1f} on {cores} cores: another job is using the CPU, "
            "so these figures are unreliable (multi-threaded kernels suffer most)"
        )
    archs = ["jumprelu"] + ([] if args.no_topk else ["topk"])
    header = f"{'arch':<9}{'d_in':>5}{'d_sae':>8}{'tok':>5}  {'dense µs/tok':>26}"
    header += "".join(f"  {f'subset {k}: µs/tok, ×faster':>32}" for k in SUBSETS)
    print(header)
    for arch in archs:
        for d_in, expansion, tokens in shapes:
            res = bench_shape(
                d_in, expansion, tokens, arch=arch, repeats=repeats, device=args.device, dtype=dtype
            )
            med, lo, hi = res["dense"]
            line = (
                f"{arch:<9}{d_in:>5}{d_in * expansion:>8}{tokens:>5}  "
                f"{_fmt_us(med)} [{_fmt_us(lo).strip()}–{_fmt_us(hi).strip()}]".ljust(58)
            )
            for k in SUBSETS:
                s_med, s_lo, s_hi = res[f"subset{k}"]
                cell = (
                    f"{_fmt_us(s_med)} [{_fmt_us(s_lo).strip()}–{_fmt_us(s_hi).strip()}] "
                    f"{med / s_med:6.1f}×"
                )
                line += f"  {cell:>32}"
            print(line, flush=True)
    if not args.no_topk:
        print("topk subset = full pre-activations + full top-k + gather (exact), so ≈ dense.")
    return 0
