"""Forward benchmarks: training and inference forward + ReLU.

One group per (mode, layout, shape, dtype, threads); cases come from
``fastbn.bench.WORKLOADS`` (see conftest.py).  Run: ``pytest bench/``.
"""

MODES = ("train", "infer")


def test_bench(benchmark, bench_case, bench_run):
    bench_run(benchmark, bench_case)
