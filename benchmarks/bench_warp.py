"""Benchmark family 'warp': python benchmarks/bench_warp.py [--device cuda] [--threads 2]."""

from invfast.bench import runner, warp

if __name__ == "__main__":
    runner.main({"warp": warp.cases})
