"""Backward benchmarks: backward + ReLU (dx, dgamma, dbeta).

The fastbn cases skip until ``fastbn.batch_norm_backward`` exists; NumPy,
np.copyto and PyTorch cases always run.  Note the floor: the backward must
read dy, x and y and write dx (3 reads + 1 write), while np.copyto moves
1 read + 1 write, so about 2x the floor is the best possible.
"""

MODES = ("backward",)


def test_bench(benchmark, bench_case, bench_run):
    bench_run(benchmark, bench_case)
