"""Per-call overhead: a tiny (8, 16, 8, 8) training forward + ReLU.

Here Python-side validation and thread start-up dominate, not memory.
"""

MODES = ("train",)
TINY = True


def test_bench(benchmark, bench_case, bench_run):
    bench_run(benchmark, bench_case)
