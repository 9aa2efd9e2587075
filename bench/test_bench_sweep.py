"""Shape-sweep benchmarks: fastbn against the copies and PyTorch eager on the
batch-norm shapes of real networks (``fastbn.bench.sweep_workloads``).

``--bench-sweep quick`` (default) runs the sweep's --quick subset,
``--bench-sweep all`` every row (long), ``--bench-sweep none`` nothing.  For
the loss table and the ratios use ``python -m fastbn.bench --sweep``.
"""

SWEEP = True


def test_bench(benchmark, bench_case, bench_run):
    bench_run(benchmark, bench_case)
