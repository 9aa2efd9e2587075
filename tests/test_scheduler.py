"""The scheduler that runs the kernels' work items on threads (csrc/pool.c).

The caller-runs pool must give the same bits as one thread whatever the
helpers do: arrive late, sleep between calls, spin, or be busy with another
Python thread's call (that call then runs on its caller alone).  Calls from
many Python threads at once must all finish (no deadlock) with the right
results, and a forked child must be able to use its own pool.  Every test
runs the parallel path on small arrays (``set_tuning(serial=0, wake=0)``) so that
many calls fit in a few seconds.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastbn
from fastbn import _kernels
from helpers import assert_bitwise_equal, make_params, make_x

pytestmark = pytest.mark.skipif(
    _kernels.scheduler() == "serial",
    reason="a build without OpenMP runs every item on the caller")



@pytest.fixture(autouse=True)
def _own_helpers():
    """These tests are about fastbn's own helpers: ``import fastbn.torch``
    (in another test) hands the pool's jobs to PyTorch's threads, so that
    is turned off here and back on after."""
    team = sys.modules.get("fastbn.torch._team")
    on = team is not None and team.torch_threads_on()
    if on:
        team.use_torch_threads(False)
    yield
    if on:
        team.use_torch_threads(True)


CASES = [((8, 32, 9, 9), 1), ((512, 48), 1), ((6, 10, 10, 24), -1),
         ((4, 3, 700), 1), ((3000, 1), 1), ((5, 70, 7, 7), 1)]


@pytest.fixture
def parallel_small():
    """The pool runs even small calls; scheduler and spin restored after."""
    old = _kernels.set_tuning(serial=0, wake=0)
    old_sched = _kernels.scheduler()
    old_spin = _kernels.set_spin_us(100)
    _kernels.set_spin_us(old_spin)
    yield
    _kernels.set_tuning(**old)
    _kernels.set_scheduler(old_sched)
    _kernels.set_spin_us(old_spin)


def _inputs(i, shape, axis):
    rng = np.random.default_rng(100 + i)
    dtype = np.float32 if i % 2 == 0 else np.float64
    x = make_x(rng, shape, axis, dtype, offset=3.0)
    g, b, m, v = make_params(rng, shape[axis], dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, axis, g, b, m, v, dy


def _run(case):
    x, axis, g, b, m, v, dy = case
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True)
    return (y, mean, invstd,
            fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, relu=True),
            *fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis, y=y),
            *fastbn.moments(x, axis=axis)[1:])


def _serial(cases):
    with fastbn.num_threads(1):
        return [_run(c) for c in cases]


@pytest.mark.parametrize("spin_us", [0, 100, 100000],
                         ids=["helpers-sleep", "default", "helpers-spin"])
def test_results_do_not_depend_on_how_helpers_arrive(parallel_small, spin_us):
    """spin 0: helpers sleep after every call and are woken for the next
    (they often arrive after the caller has done everything); a long spin:
    they are always awake.  The bits are the serial ones either way."""
    cases = [_inputs(i, s, a) for i, (s, a) in enumerate(CASES)]
    want = _serial(cases)
    _kernels.set_spin_us(spin_us)
    with fastbn.num_threads(2):
        for _ in range(10):
            for case, ref in zip(cases, want):
                for p, q in zip(_run(case), ref):
                    assert_bitwise_equal(p, q)
    assert _kernels.pool_threads() >= 1


def test_openmp_scheduler_gives_the_same_bits(parallel_small):
    cases = [_inputs(i, s, a) for i, (s, a) in enumerate(CASES)]
    want = _serial(cases)
    _kernels.set_scheduler("openmp")
    for n in (2, 3):
        with fastbn.num_threads(n):
            for case, ref in zip(cases, want):
                for p, q in zip(_run(case), ref):
                    assert_bitwise_equal(p, q)


@pytest.mark.parametrize("nthreads", [2, 4])
def test_many_python_threads_interleave_without_deadlock(parallel_small,
                                                         nthreads):
    """8 Python threads make 40 calls each, on shapes that use the pool, at
    the same time: one holds the pool, the others run on their callers;
    every call finishes with the serial bits."""
    cases = [_inputs(i, s, a) for i, (s, a) in enumerate(CASES)]
    want = _serial(cases)
    _kernels.set_spin_us(20)
    barrier = threading.Barrier(8)
    errors = []
    done = [0] * 8

    def worker(k):
        try:
            barrier.wait()
            with fastbn.num_threads(nthreads):
                for r in range(40):
                    j = (k + r) % len(cases)
                    for p, q in zip(_run(cases[j]), want[j]):
                        assert_bitwise_equal(p, q)
                    done[k] += 1
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), (
        f"calls did not finish (deadlock?): {done}")
    assert not errors, errors[0]
    assert done == [40] * 8


def test_pool_grows_with_the_thread_count(parallel_small):
    case = _inputs(0, *CASES[0])
    with fastbn.num_threads(3):
        _run(case)
    assert _kernels.pool_threads() >= 2


CHILD = r"""
import os, sys, numpy as np, fastbn
from fastbn import _kernels
_kernels.set_tuning(serial=0, wake=0)
x = np.random.default_rng(0).standard_normal((16, 32, 9, 9)).astype(np.float32)
with fastbn.num_threads(2):
    ref = fastbn.batch_norm_train(x, relu=True)[0]     # the parent's pool runs
    pid = os.fork()
    if pid == 0:                                        # the child: its own pool
        try:
            y = fastbn.batch_norm_train(x, relu=True)[0]
            os._exit(0 if np.array_equal(y, ref) and _kernels.pool_threads() >= 1
                     else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    y = fastbn.batch_norm_train(x, relu=True)[0]        # the parent still works
    sys.exit(os.WEXITSTATUS(status) or (0 if np.array_equal(y, ref) else 5))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_uses_its_own_pool():
    """After the parent has used its helpers, a forked child (which has no
    helper threads) starts its own and gets the same result; the parent is
    unaffected.  (An OpenMP parallel region in the parent would make
    libgomp hang in such a child.)"""
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)


LIGHT = r"""
import time, numpy as np, fastbn
from fastbn import _kernels
with fastbn.num_threads(2):
    small = np.ones((16, 64, 14, 14), np.float32)      # 200704 values: short
    for _ in range(10):                                # with pauses between
        fastbn.batch_norm_train(small, relu=True)
        time.sleep(0.002)
    after_spaced = _kernels.pool_threads()
    for _ in range(10):                                # back to back
        fastbn.batch_norm_train(small, relu=True)
    print(after_spaced, _kernels.pool_threads())
"""


def test_short_calls_wake_helpers_only_in_bursts():
    """Calls under the wake threshold (moving under 2 MB) with other work or idle
    time between them run on their caller while the helpers sleep (here:
    none is ever started); back-to-back, the first few run alone and then
    the helpers are woken (started)."""
    proc = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    after_spaced, after_burst = map(int, proc.stdout.split())
    assert after_spaced == 0
    assert after_burst >= 1
