"""Benchmark family 'losses': python benchmarks/bench_losses.py [--device cuda] [--threads 2]."""

from invfast.bench import losses, runner

if __name__ == "__main__":
    runner.main({"losses": losses.cases})
