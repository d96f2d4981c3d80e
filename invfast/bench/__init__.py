"""Benchmarks of invfast's ops against their reference and the libraries users pick instead.

Each family module (``warp``, ``augment``, ``inputs``, ``losses``) lists cases;
:mod:`invfast.bench.runner` times them in one process and reports median and
20th/80th percentiles, throughput, ratios to every peer, and the achieved
bandwidth against a memory copy of the same bytes timed in the same run.
``python -m invfast bench`` runs every family; ``benchmarks/bench_*.py`` run one.
"""
