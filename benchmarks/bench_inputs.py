"""Benchmark family 'inputs': python benchmarks/bench_inputs.py [--device cuda] [--threads 2]."""

from invfast.bench import inputs, runner

if __name__ == "__main__":
    runner.main({"inputs": inputs.cases})
