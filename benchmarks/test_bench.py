"""pytest-benchmark versions of the benchmark cases (``make bench``; not part of ``make test``).

Every provider of every case becomes one benchmark, grouped by case, so that
``pytest-benchmark compare`` can follow them across commits.
"""

import pytest
import torch

from invfast.bench.families import families

torch.set_num_threads(2)

CASES = [case for make in families().values() for case in make("cpu", quick=False)]
PARAMS = [
    pytest.param(case, provider, id=f"{case.family}-{case.name}-{provider.name}")
    for case in CASES
    for provider in case.providers
]


@pytest.mark.parametrize("case,provider", PARAMS)
def test_bench(benchmark, case, provider):
    benchmark.group = f"{case.family}: {case.name}"
    benchmark.extra_info["items"] = case.items
    benchmark.pedantic(provider.fn, rounds=10, warmup_rounds=1)
