"""The shared benchmark runner: timing, ratios, bandwidth, and the three outputs."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

import torch


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


# A measured block repeats a call until it lasts about this long, so that the
# timer's own cost and resolution do not show in the per-call time.
BLOCK_SECONDS = 2e-3


def _block(fn: Callable[[], object], number: int, device: str) -> float:
    """Seconds per call of ``number`` calls in a row."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / number


def time_providers(
    fns: list[Callable[[], object]], device: str, min_time: float, rounds: int = 5
) -> list[list[float] | BaseException]:
    """Seconds per call of every measured block, for each function in turn.

    The functions take turns: each runs for ``min_time / rounds`` seconds per
    round, ``rounds`` times. A machine whose speed drifts while a case is
    measured (other tenants, frequency, a neighbour's build) then slows every
    provider alike, and the ratios between them stay meaningful; measured one
    after the other, the first provider could see a quiet machine and the
    last a busy one. Garbage collection is off while a block runs.

    A function that raises is measured no further; its exception takes its
    place in the result.
    """
    out: list[list[float] | BaseException] = []
    numbers = []
    for fn in fns:
        try:
            fn()  # warm-up: first-call allocation, lazy initialisation, compilation
            once = _block(fn, 1, device)
            numbers.append(max(1, int(BLOCK_SECONDS / max(once, 1e-9))))
            out.append([])
        except Exception as exc:
            numbers.append(0)
            out.append(exc)
    share = min_time / rounds
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                times = out[i]
                if isinstance(times, BaseException):
                    continue
                spent = 0.0
                try:
                    # At least one block per round, however slow the call.
                    while spent < share or not times:
                        t = _block(fn, numbers[i], device)
                        times.append(t)
                        spent += t * numbers[i]
                        if spent >= share:
                            break
                except Exception as exc:
                    out[i] = exc
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def time_fn(fn: Callable[[], object], device: str, min_time: float) -> list[float]:
    """Seconds per call of every measured block of one function (warm-up first)."""
    (times,) = time_providers([fn], device, min_time, rounds=1)
    if isinstance(times, BaseException):
        raise times
    return times


@contextlib.contextmanager
def _quiet_stderr():
    """Silences what C++ libraries print on file descriptor 2 (the profiler's banner)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mib(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory one call allocates above what was allocated before it, in MiB.

    On CUDA from the caching allocator's statistics. On the CPU from the
    profiler's memory events, which follow every allocation of PyTorch's CPU
    allocator; memory that a library allocates behind PyTorch's back (a
    peer's own buffers, a compiled kernel's scratch from malloc) is not seen.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp, _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    memory = [e["args"] for e in events if e.get("name") == "[memory]" and "Bytes" in e["args"]]
    if not memory:
        return 0.0  # the allocator reports every allocation while profiling: there was none
    # NOTE: the running total carries over from earlier profiles (a block
    # freed while no profile runs is never subtracted), so the baseline is the
    # total just before this call's first event.
    base = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in memory) - base) / 2**20


def copy_seconds(nbytes: int, device: str, min_time: float) -> float:
    """Median time of a plain copy that reads and writes ``nbytes`` in all."""
    n = max(1, nbytes // 2 // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device, min_time)
    return float(torch.tensor(times).median())


def quantile_ms(times: list[float], q: float) -> float:
    return float(torch.tensor(times, dtype=torch.float64).quantile(q)) * 1e3


def run_case(case: Case, min_time: float, rounds: int = 5) -> list[Result]:
    """Times every provider of a case, taking turns, and a copy of the same bytes."""
    copy_s = copy_seconds(case.bytes_moved, case.device, min_time)
    timed = time_providers([p.fn for p in case.providers], case.device, min_time, rounds)
    results = []
    for p, times in zip(case.providers, timed):
        peak = None
        if not isinstance(times, BaseException):
            try:
                peak = peak_memory_mib(p.fn, case.device)
            except Exception as exc:
                times = exc
        if isinstance(times, BaseException):  # a peer that cannot run this case is reported
            nan = float("nan")
            error = f"{type(times).__name__}: {times}"
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


def pin_inductor_vector_width() -> int | None:
    """Gives torch.compile's CPU code generator, explicitly, the vector width it would pick.

    NOTE: with ``cpp.simdlen`` left unset, torch 2.14.1's inductor compiled the
    reference KL's forward and backward, on an AVX-512 machine (AMD EPYC,
    Zen 5), into code that corrupted the heap and aborted the process; the
    same width set explicitly (or a narrower one) ran correctly. The peer is
    still timed at the width it would choose itself. Returns that width, or
    None where inductor is unavailable.
    """
    try:
        import torch._inductor.config as config
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:
        return None
    if config.cpp.simdlen is None:
        isa = pick_vec_isa()
        if isa:
            config.cpp.simdlen = isa.bit_width()
    return config.cpp.simdlen


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
    try:
        import torch._inductor.config as inductor_config

        parts.append(f"inductor CPU simdlen {inductor_config.cpp.simdlen}")
    except ImportError:
        pass
    parts.append(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    return ", ".join(parts)


def speedup(ratio: float) -> str:
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def markdown(results: list[Result]) -> str:
    """One table per case, with a ratio column for each of invfast's providers.

    The ratios say how many times faster that provider is than each row; the
    first provider always gets a column.
    """

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = []
    cases: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        cases.setdefault((r.family, r.case, r.device), []).append(r)
    for (family, case, device), rows in cases.items():
        ours = [r for r in rows if r is rows[0] or r.provider.startswith("invfast")]
        ours = [r for r in ours if not r.error]
        head = ["provider", "median ms", "p20-p80 ms", f"{rows[0].unit}/s", "GB/s", "of copy"]
        head += ["peak MiB"] + [f"{o.provider} is" for o in ours]
        out.append(f"\n**{family}: {case}** ({device})\n")
        out.append(line(head))
        out.append(line(["---"] + ["---:"] * (len(head) - 1)))
        for r in rows:
            if r.error:
                out.append(line([r.provider, f"failed: {r.error[:60]}"] + [""] * (len(head) - 2)))
                continue
            ratios = ["-" if r is o else speedup(r.median_ms / o.median_ms) for o in ours]
            peak = "-" if r.peak_mib is None else f"{r.peak_mib:.{0 if r.peak_mib >= 10 else 1}f}"
            cells = [r.provider, f"{r.median_ms:.3f}", f"{r.p20_ms:.3f}-{r.p80_ms:.3f}"]
            cells += [f"{r.per_s:,.0f}", f"{r.gbps:.1f}", f"{r.copy_fraction:.0%}", peak]
            out.append(line(cells + ratios))
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
    pin_inductor_vector_width()
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
