"""Thread settings, bitwise reproducibility across OpenMP thread counts and
runs, and concurrent calls from several Python threads."""

import threading

import numpy as np
import pytest

import fastbn
import reference
from helpers import assert_bitwise_equal, assert_close, make_params, make_x


# ------------------------------------------------------------ settings

def test_get_num_threads_is_positive_int():
    n = fastbn.get_num_threads()
    assert isinstance(n, int) and n >= 1


def test_set_num_threads_returns_previous_and_none_resets(restore_threads):
    fastbn.set_num_threads(None)
    default = fastbn.get_num_threads()
    fastbn.set_num_threads(3)
    old = fastbn.set_num_threads(2)
    assert old == 3
    old = fastbn.set_num_threads(None)
    assert old == 2
    assert fastbn.get_num_threads() == default
    old = fastbn.set_num_threads(1)
    assert old in (None, default)  # "no setting" may read as either
    assert fastbn.get_num_threads() == 1


def test_set_num_threads_is_reported_with_openmp(restore_threads):
    fastbn.set_num_threads(3)
    n = fastbn.get_num_threads()
    # a serial build may report 1; with OpenMP the setting is honoured
    assert n in (1, 3)
    if _have_openmp():
        assert n == 3


def _have_openmp():
    """OpenMP status from show_config(): its returned dict's "openmp" entry
    (fastbn's implementation), else the printed "OpenMP: yes/no" line."""
    import contextlib
    import io
    import re
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cfg = fastbn.show_config()
    if isinstance(cfg, dict) and "openmp" in cfg:
        return bool(cfg["openmp"])
    m = re.search(r"OpenMP:\s*(\w+)", buf.getvalue() + str(cfg))
    assert m, "show_config() does not state OpenMP on/off"
    return m.group(1).lower() in ("yes", "on", "true", "enabled")


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError),
                                     (1.5, TypeError), ("2", TypeError)])
def test_set_num_threads_rejects_bad_values(bad, exc, restore_threads):
    fastbn.set_num_threads(2)
    with pytest.raises(exc):
        fastbn.set_num_threads(bad)
    assert fastbn.get_num_threads() == 2  # unchanged


def test_num_threads_context_manager_restores(restore_threads):
    fastbn.set_num_threads(2)
    with fastbn.num_threads(1):
        assert fastbn.get_num_threads() == 1
    assert fastbn.set_num_threads(2) == 2
    with pytest.raises(RuntimeError):
        with fastbn.num_threads(1):
            assert fastbn.get_num_threads() == 1
            raise RuntimeError("boom")
    assert fastbn.set_num_threads(None) == 2
    with fastbn.num_threads(1):
        pass
    # after the block the "no setting" state is back: None resets again
    default = fastbn.get_num_threads()
    fastbn.set_num_threads(None)
    assert fastbn.get_num_threads() == default


def test_threads_setting_does_not_change_results_small(restore_threads):
    rng = np.random.default_rng(40)
    x = make_x(rng, (4, 3, 5, 5), 1, np.float32)
    with fastbn.num_threads(1):
        a = fastbn.batch_norm_train(x)[0]
    with fastbn.num_threads(4):
        b = fastbn.batch_norm_train(x)[0]
    assert_bitwise_equal(a, b)


# ------------------------------------------- bitwise across thread counts

BIG = [
    ("NCHW-16x64x32x32", (16, 64, 32, 32), 1),
    ("NC-4096x256", (4096, 256), 1),
    ("NCHW-few-64x3x64x64", (64, 3, 64, 64), 1),
    ("NHWC-32x32x32x3", (32, 32, 32, 3), -1),
    ("NCHW-big-slab-64x2x128x128", (64, 2, 128, 128), 1),
    ("NCL-odd-7x5x40001", (7, 5, 40001), 1),
]


def _all_results(x, axis, g, b, z, m, v):
    return (
        fastbn.batch_stats(x, axis=axis)
        + fastbn.moments(x, axis=axis)[1:]
        + fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z)
        + (fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, relu=True),)
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("shape,axis", [b[1:] for b in BIG],
                         ids=[b[0] for b in BIG])
def test_bitwise_equal_for_1_2_4_threads_and_runs(shape, axis, dtype,
                                                  restore_threads):
    rng = np.random.default_rng(41)
    x = make_x(rng, shape, axis, dtype, offset=10.0)
    z = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    g, b, m, v = make_params(rng, c, dtype)
    results = {}
    for n in (1, 2, 4):
        with fastbn.num_threads(n):
            results[n] = _all_results(x, axis, g, b, z, m, v)
            again = _all_results(x, axis, g, b, z, m, v)
        for p, q in zip(results[n], again):  # run to run
            assert_bitwise_equal(p, q)
    for n in (2, 4):
        for p, q in zip(results[n], results[1]):
            assert_bitwise_equal(p, q)
    # and the (parallel) result is right
    mean, var, _, _, y, tmean, invstd, yi = results[4]
    ref_mean, ref_var = reference.batch_stats(x, axis=axis)
    assert_close(mean, ref_mean, dtype)
    assert_close(var, ref_var, dtype)
    ref_y = reference.batch_norm_train(x, g, b, axis=axis, relu=True,
                                       residual=z)[0]
    assert_close(y, ref_y, dtype)
    assert_close(yi, reference.batch_norm_infer(x, m, v, g, b, axis=axis,
                                                relu=True), dtype)


def test_in_place_bitwise_equal_across_threads(restore_threads):
    rng = np.random.default_rng(42)
    x = make_x(rng, (16, 64, 32, 32), 1, np.float32)
    outs = []
    for n in (1, 2, 4):
        xc = x.copy()
        with fastbn.num_threads(n):
            fastbn.batch_norm_train(xc, out=xc, relu=True)
        outs.append(xc)
    assert_bitwise_equal(outs[0], outs[1])
    assert_bitwise_equal(outs[0], outs[2])
    assert_close(outs[0], reference.batch_norm_train(x, relu=True)[0],
                 np.float32)


# ------------------------------------------------ Python threads at once

def test_four_python_threads_match_serial_calls():
    rng = np.random.default_rng(43)
    cases = []
    for i, (shape, axis) in enumerate([((8, 32, 16, 16), 1),
                                       ((2048, 64), 1),
                                       ((16, 3, 32, 32), 1),
                                       ((8, 16, 16, 24), -1)]):
        dtype = np.float32 if i % 2 == 0 else np.float64
        x = make_x(rng, shape, axis, dtype)
        g, b, m, v = make_params(rng, shape[axis], dtype)
        cases.append((x, axis, g, b, m, v))

    def run(case):
        x, axis, g, b, m, v = case
        return (fastbn.batch_norm_train(x, g, b, axis=axis, relu=True)
                + (fastbn.batch_norm_infer(x, m, v, g, b, axis=axis),)
                + fastbn.batch_stats(x, axis=axis))

    serial = [run(c) for c in cases]
    rounds = 5
    barrier = threading.Barrier(4)
    got = [[None] * rounds for _ in cases]
    errors = []

    def worker(k):
        try:
            barrier.wait()
            for r in range(rounds):
                # each thread works through all cases, in a rotated order
                j = (k + r) % len(cases)
                got[j][r] = run(cases[j])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "threads hang"
    assert not errors, errors
    assert all(r is not None for pr in got for r in pr)
    for j, per_round in enumerate(got):
        for res in per_round:
            for p, q in zip(res, serial[j]):
                assert_bitwise_equal(p, q)


def test_python_threads_with_out_arrays():
    """Concurrent in-place calls on different arrays do not interfere."""
    rng = np.random.default_rng(44)
    xs = [make_x(rng, (8, 16, 24, 24), 1, np.float32) for _ in range(4)]
    want = [fastbn.batch_norm_train(x, relu=True)[0] for x in xs]
    work = [x.copy() for x in xs]
    barrier = threading.Barrier(4)

    def worker(k):
        barrier.wait()
        fastbn.batch_norm_train(work[k], relu=True, out=work[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for w, y in zip(work, want):
        assert_bitwise_equal(w, y)
