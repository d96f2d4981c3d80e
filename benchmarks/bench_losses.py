"""Fused consistency losses against plain PyTorch, forward + backward.

Providers, for each loss and shape:

- ``fused``: ``invfast.losses`` (the compiled kernels);
- ``eager``: ``invfast.reference.losses`` (plain PyTorch, what the kernels replace);
- ``compiled``: ``torch.compile(eager)``.

Times are per forward + backward call: median, and 20th / 80th percentiles
from ``torch.utils.benchmark``. Memory is what autograd keeps for backward
(bytes of the saved tensors, counted with saved-tensor hooks) and, on CUDA,
the peak allocated during a call. Ratios are eager / fused and compiled / fused.

Run: ``python benchmarks/bench_losses.py [--device cpu|cuda] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.utils.benchmark as tb

import invfast
from invfast import losses
from invfast.reference import losses as ref

SHAPES = [(256, 1000), (4096, 100), (64, 32000)]


def cases(device, dtype):
    """(name, shape, make_inputs, fn by provider)."""
    out = []
    for n, c in SHAPES:

        def pair(n=n, c=c):
            g = torch.Generator().manual_seed(0)
            s = torch.randn(n, c, generator=g).to(device, dtype).requires_grad_()
            t = torch.randn(n, c, generator=g).to(device, dtype)
            return (s, t)

        def three(n=n, c=c):
            g = torch.Generator().manual_seed(0)
            return tuple(
                torch.randn(n, c, generator=g).to(device, dtype).requires_grad_() for _ in range(3)
            )

        def uda(lib):
            return lambda s, t: lib.kl_consistency(s, t, teacher_temperature=0.4)

        out.append(("kl (UDA, T_t=0.4)", (n, c), pair, uda(losses), uda(ref)))
        out.append(
            (
                "symmetric_kl",
                (n, c),
                lambda n=n, c=c: tuple(x.requires_grad_() for x in pair(n, c)),
                losses.symmetric_kl,
                ref.symmetric_kl,
            )
        )
        out.append(("js, 3 views", (n, c), three, losses.js_consistency, ref.js_consistency))
    return out


def saved_bytes(fn, inputs):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return total


def step_fn(fn, inputs):
    def step():
        for x in inputs:
            x.grad = None
        fn(*inputs).backward()

    return step


def measure(fn, inputs, device, min_run_time):
    step = step_fn(fn, inputs)
    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    timer = tb.Timer(stmt="step()", globals={"step": step})
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    peak = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return {
        "median": statistics.median(times),
        "p20": q[0],
        "p80": q[3],
        "saved": saved_bytes(fn, inputs),
        "peak": peak,
    }


def fmt_ms(s):
    return f"{s * 1e3:.3f}"


def fmt_mb(b):
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(eager)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    info = invfast.backend_info()

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"invfast {info['version']}, torch {torch.__version__}, "
        f"python {platform.python_version()}, {platform.machine()}"
    )
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
        f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print()
    header = (
        "| loss | shape | fused ms (p20-p80) | eager ms (p20-p80) | compiled ms (p20-p80) "
        "| eager/fused | compiled/fused | saved MB fused / eager | peak MB fused / eager |"
    )
    print(header)
    print("|" + "---|" * 9)
    for name, shape, make, fused, eager in cases(args.device, dtype):
        inputs = make()
        r_f = measure(fused, inputs, args.device, args.min_run_time)
        r_e = measure(eager, inputs, args.device, args.min_run_time)
        if args.no_compile:
            r_c = None
        else:
            compiled = torch.compile(eager, dynamic=False)
            t0 = time.perf_counter()
            step_fn(compiled, inputs)()
            _ = time.perf_counter() - t0
            r_c = measure(compiled, inputs, args.device, args.min_run_time)

        def cell(r):
            if r is None:
                return "-"
            return f"{fmt_ms(r['median'])} ({fmt_ms(r['p20'])}-{fmt_ms(r['p80'])})"

        ratio_c = "-" if r_c is None else f"{r_c['median'] / r_f['median']:.2f}x"
        print(
            f"| {name} | {shape[0]}x{shape[1]} | {cell(r_f)} | {cell(r_e)} | {cell(r_c)} "
            f"| {r_e['median'] / r_f['median']:.2f}x | {ratio_c} "
            f"| {fmt_mb(r_f['saved'])} / {fmt_mb(r_e['saved'])} "
            f"| {fmt_mb(r_f['peak'])} / {fmt_mb(r_e['peak'])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
