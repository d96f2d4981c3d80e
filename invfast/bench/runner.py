"""The shared benchmark runner: timing, ratios, bandwidth, and the three outputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from collections.abc import Callable

import torch
from torch.utils import benchmark as tbench


@dataclasses.dataclass
class Provider:
    """One way of doing a case's work. ``fn`` runs it once."""

    name: str
    fn: Callable[[], object]


@dataclasses.dataclass
class Case:
    """A piece of work, done by several providers; the first is invfast's."""

    family: str
    name: str
    items: int  # images or rows per call, for throughput
    unit: str  # "images" or "rows"
    bytes_moved: int  # bytes a call must read and write at the least
    providers: list[Provider]
    device: str = "cpu"


@dataclasses.dataclass
class Result:
    family: str
    case: str
    provider: str
    device: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    per_s: float
    unit: str
    peak_mib: float | None
    gbps: float
    copy_fraction: float
    error: str | None = None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, min_time: float) -> list[float]:
    """Seconds per call of every measured block (warm-up first)."""
    fn()
    _sync(device)
    # Timer runs on one thread unless told otherwise.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_time)
    return list(m.times)


def peak_memory_mib(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory the call allocates on a CUDA device; None on the CPU."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_seconds(nbytes: int, device: str, min_time: float) -> float:
    """Median time of a plain copy that reads and writes ``nbytes`` in all."""
    n = max(1, nbytes // 2 // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device, min_time)
    return float(torch.tensor(times).median())


def quantile_ms(times: list[float], q: float) -> float:
    return float(torch.tensor(times, dtype=torch.float64).quantile(q)) * 1e3


def run_case(case: Case, min_time: float) -> list[Result]:
    copy_s = copy_seconds(case.bytes_moved, case.device, min_time)
    results = []
    for p in case.providers:
        try:
            times = time_fn(p.fn, case.device, min_time)
            peak = peak_memory_mib(p.fn, case.device)
        except Exception as exc:  # a peer that cannot run this case is reported, not fatal
            nan = float("nan")
            error = f"{type(exc).__name__}: {exc}"
            row = (case.family, case.name, p.name, case.device, nan, nan, nan, nan, case.unit)
            results.append(Result(*row, None, nan, nan, error))
            continue
        med = quantile_ms(times, 0.5)
        results.append(
            Result(
                family=case.family,
                case=case.name,
                provider=p.name,
                device=case.device,
                median_ms=med,
                p20_ms=quantile_ms(times, 0.2),
                p80_ms=quantile_ms(times, 0.8),
                per_s=case.items / (med / 1e3),
                unit=case.unit,
                peak_mib=peak,
                gbps=case.bytes_moved / (med / 1e3) / 1e9,
                copy_fraction=copy_s * 1e3 / med,
            )
        )
    return results


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"torch {torch.__version__}", f"{torch.get_num_threads()} CPU threads", cpu]
    for mod in ("kornia", "torchvision"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    parts.append(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    return ", ".join(parts)


def speedup(ratio: float) -> str:
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def markdown(results: list[Result]) -> str:
    """One table per case, with a ratio column for each of invfast's providers.

    The ratios say how many times faster that provider is than each row; the
    first provider always gets a column.
    """
    out = []
    cases: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        cases.setdefault((r.family, r.case, r.device), []).append(r)
    for (family, case, device), rows in cases.items():
        ours = [r for r in rows if r is rows[0] or r.provider.startswith("invfast")]
        ours = [r for r in ours if not r.error]
        out.append(f"\n**{family}: {case}** ({device})\n")
        out.append(
            f"| provider | median ms | p20-p80 ms | {rows[0].unit}/s | GB/s | of copy "
            "| peak MiB | " + " | ".join(f"{o.provider} is" for o in ours) + " |"
        )
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(ours))
        for r in rows:
            if r.error:
                out.append(
                    f"| {r.provider} | failed: {r.error[:60]} | | | | | |" + " |" * len(ours)
                )
                continue
            ratios = ["-" if r is o else speedup(r.median_ms / o.median_ms) for o in ours]
            peak = "-" if r.peak_mib is None else f"{r.peak_mib:.0f}"
            out.append(
                f"| {r.provider} | {r.median_ms:.3f} | {r.p20_ms:.3f}-{r.p80_ms:.3f} "
                f"| {r.per_s:,.0f} | {r.gbps:.1f} | {r.copy_fraction:.0%} | {peak} | "
                + " | ".join(ratios)
                + " |"
            )
    return "\n".join(out)


def bar_chart(results: list[Result], path: str) -> None:
    """Throughput of every provider, one panel per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases: dict[str, list[Result]] = {}
    for r in results:
        if not r.error:
            cases.setdefault(f"{r.family}: {r.case} ({r.device})", []).append(r)
    if not cases:
        return
    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 2.2 * len(cases)), squeeze=False)
    for ax, (title, rows) in zip(axes[:, 0], cases.items()):
        names = [r.provider for r in rows][::-1]
        values = [r.per_s for r in rows][::-1]
        ax.barh(names, values, color=["#4c72b0"] * (len(rows) - 1) + ["#dd8452"])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{rows[0].unit}/s (higher is better)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--out", default="outputs/bench", help="prefix of the .jsonl and .png")


def main(families: dict[str, Callable], argv: list[str] | None = None) -> list[Result]:
    """Runs the given families' cases and writes the table, JSON lines and chart."""
    parser = argparse.ArgumentParser(description="invfast benchmarks")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(families, args)


def run(families: dict[str, Callable], args: argparse.Namespace) -> list[Result]:
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}")
    print(f"environment: {environment()}")
    results: list[Result] = []
    for name, make_cases in families.items():
        for case in make_cases(args.device, args.quick):
            print(f"... {name}: {case.name}", file=sys.stderr, flush=True)
            results.extend(run_case(case, args.min_time))
    print(markdown(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(dataclasses.asdict(r)) + "\n")
    bar_chart(results, args.out + ".png")
    print(f"\nwrote {args.out}.jsonl and {args.out}.png")
    return results
