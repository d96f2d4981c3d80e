"""Benchmark family 'augment': python benchmarks/bench_augment.py [--device cuda] [--threads 2]."""

from invfast.bench import augment, runner

if __name__ == "__main__":
    runner.main({"augment": augment.cases})
