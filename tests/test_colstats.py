"""The per-column kernels behind fastbn.sklearn (csrc/colstats_impl.h), against
a float64 NumPy reference: moments that skip NaN, with and without row
weights, and the standardisation y = (x - mean) / scale (and its inverse)
in the data's dtype; C and Fortran order, every instruction set, bitwise
the same for every thread count.  No scikit-learn needed."""
import numpy as np
import pytest

import fastbn
import reference
from fastbn import _kernels
from helpers import assert_bitwise_equal

SHAPES = [(1, 1), (1, 5), (7, 1), (63, 3), (100, 16), (257, 17), (300, 64),
          (5000, 3), (4097, 2), (1000, 130), (40, 1000)]


def make(rng, shape, dtype, nan=0.0, order="C", offset=5.0):
    n, p = shape
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, p) + rng.uniform(-offset, offset, p)
    if nan:
        x[rng.random(shape) < nan] = np.nan
    return np.asarray(x, dtype=dtype, order=order)


def colstats(x, w=None, threads=None):
    colmajor = bool(x.flags.f_contiguous and (not x.flags.c_contiguous or x.shape[1] == 1))
    n, p = x.shape
    return _kernels.colstats(x, n, p, colmajor, w,
                             threads or fastbn.get_num_threads())


def standardize(x, mean, scale, inverse=False, out=None, threads=None):
    colmajor = bool(x.flags.f_contiguous and (not x.flags.c_contiguous or x.shape[1] == 1))
    n, p = x.shape
    y = np.empty_like(x, order="F" if colmajor else "C") if out is None else out
    bad = _kernels.standardize(x, n, p, colmajor, mean, scale, inverse, y,
                               threads or fastbn.get_num_threads())
    return y, bad


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("nan", [0.0, 0.05], ids=["finite", "nan"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_moments_match_reference(shape, order, nan, weighted, dtype, rng):
    x = make(rng, shape, dtype, nan, order)
    w = rng.uniform(0.0, 3.0, shape[0]) if weighted else None
    k, m, q = colstats(x, w)
    rk, rm, rq = reference.column_moments(x, w)
    assert k.dtype == m.dtype == q.dtype == np.float64
    if weighted:
        np.testing.assert_allclose(k, rk, rtol=1e-13)
    else:  # exact counts
        np.testing.assert_array_equal(k, rk)
    empty = rk == 0
    assert np.isnan(m[empty]).all() and (q[empty] == 0).all()
    np.testing.assert_allclose(m[~empty], rm[~empty], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(q[~empty], rq[~empty], rtol=1e-11, atol=1e-12)


def test_moments_keep_accuracy_at_a_large_offset(rng):
    # E[x^2] - E[x]^2 would lose every digit here; two passes per block do not
    x = (1e8 + rng.standard_normal((20000, 4)))
    k, m, q = colstats(x)
    rk, rm, rq = reference.column_moments(x)
    np.testing.assert_allclose(q / k, rq / rk, rtol=1e-9)
    x32 = (1e4 + rng.standard_normal((20000, 4))).astype(np.float32)
    _, m, q = colstats(x32)
    _, rm, rq = reference.column_moments(x32)
    np.testing.assert_allclose(q, rq, rtol=1e-9)


def test_all_nan_column_and_zero_weights(rng):
    x = rng.standard_normal((50, 3))
    x[:, 1] = np.nan
    k, m, q = colstats(x)
    assert k.tolist() == [50, 0, 50]
    assert np.isnan(m[1]) and q[1] == 0
    # zero weight for every row that has a value: no values
    w = np.zeros(50)
    k, m, q = colstats(x, w)
    assert (k == 0).all() and np.isnan(m).all() and (q == 0).all()
    # weight 0 rows contribute nothing: the same as leaving them out
    w = np.ones(50)
    w[10:20] = 0
    x[:, 1] = rng.standard_normal(50)
    k, m, q = colstats(x, w)
    k2, m2, q2 = colstats(np.delete(x, np.s_[10:20], axis=0))
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_allclose(m, m2, rtol=1e-14)
    np.testing.assert_allclose(q, q2, rtol=1e-12)


def test_integer_weights_equal_repeated_rows(rng):
    x = make(rng, (200, 7), np.float64, nan=0.05)
    w = rng.integers(0, 4, 200).astype(np.float64)
    k, m, q = colstats(x, w)
    rk, rm, rq = colstats(np.ascontiguousarray(np.repeat(x, w.astype(int), axis=0)))
    np.testing.assert_array_equal(k, rk)
    np.testing.assert_allclose(m, rm, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(q, rq, rtol=1e-11)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("weighted", [False, True])
def test_moments_bitwise_same_for_every_thread_count(order, weighted, dtype, rng):
    # large enough to run on several threads (>= 32768 values, many blocks)
    x = make(rng, (6001, 37), dtype, nan=0.01, order=order)
    w = rng.uniform(0, 2, 6001) if weighted else None
    ref = colstats(x, w, threads=1)
    for t in (2, 3, 4):
        for a, b in zip(colstats(x, w, threads=t), ref):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("isa", _kernels.simd_available())
def test_every_simd_level_gives_the_same_bits(isa, dtype, rng):
    x = make(rng, (3001, 21), dtype, nan=0.02)
    xf = np.asfortranarray(x)
    w = rng.uniform(0, 2, 3001)
    old = _kernels.simd()
    try:
        _kernels.set_simd("baseline")
        base = [colstats(x), colstats(x, w), colstats(xf, w)]
        mean, scale = base[0][1], np.sqrt(base[0][2] / base[0][0])
        ybase = [standardize(x, mean, scale)[0], standardize(xf, mean, scale, True)[0]]
        _kernels.set_simd(isa)
        got = [colstats(x), colstats(x, w), colstats(xf, w)]
        y = [standardize(x, mean, scale)[0], standardize(xf, mean, scale, True)[0]]
    finally:
        _kernels.set_simd(old)
    for g, b in zip(got, base):
        for a, c in zip(g, b):
            assert_bitwise_equal(a, c)
    for a, c in zip(y, ybase):
        assert_bitwise_equal(a, c)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_standardize_is_numpys_arithmetic(shape, order, dtype, rng):
    x = make(rng, shape, dtype, nan=0.05, order=order)
    mean = rng.standard_normal(shape[1])
    scale = rng.uniform(0.1, 3, shape[1])
    y, bad = standardize(x, mean, scale)
    assert not bad and y.dtype == x.dtype
    # scikit-learn's transform: X -= mean.astype(dtype); X /= scale.astype(dtype)
    expect = (x - mean.astype(dtype)) / scale.astype(dtype)
    assert_bitwise_equal(y, expect)
    inv, _ = standardize(x, mean, scale, inverse=True)
    assert_bitwise_equal(inv, x * scale.astype(dtype) + mean.astype(dtype))
    # without centring / scaling the values are left as they are
    assert_bitwise_equal(standardize(x, None, scale)[0], x / scale.astype(dtype))
    assert_bitwise_equal(standardize(x, mean, None)[0], x - mean.astype(dtype))
    assert_bitwise_equal(standardize(x, None, None)[0], x)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["C", "F"])
def test_standardize_in_place_large_and_threads(order, dtype, rng):
    # large enough for several threads and many items
    x = make(rng, (70000, 33), dtype, nan=0.001, order=order)
    mean = rng.standard_normal(33)
    scale = rng.uniform(0.1, 3, 33)
    expect = (x - mean.astype(dtype)) / scale.astype(dtype)
    for t in (1, 2, 4):
        y, bad = standardize(x, mean, scale, threads=t)
        assert not bad
        assert_bitwise_equal(y, expect)
    xi = x.copy(order=order)
    _, bad = standardize(xi, mean, scale, out=xi)
    assert not bad
    assert_bitwise_equal(xi, expect)


@pytest.mark.parametrize("order", ["C", "F"])
def test_standardize_reports_infinities(order, dtype, rng):
    x = make(rng, (5000, 9), dtype, nan=0.01, order=order)
    mean, scale = np.zeros(9), np.ones(9)
    assert standardize(x, mean, scale)[1] is False
    assert _kernels.standardize(x, 5000, 9, order == "F", None, None, False, None, 2) \
        is False
    for pos, val in [((4999, 8), np.inf), ((0, 0), -np.inf), ((2500, 4), np.inf)]:
        xb = x.copy(order=order)
        xb[pos] = val
        assert standardize(xb, mean, scale)[1] is True
        # the search alone writes nothing
        before = xb.copy(order=order)
        assert _kernels.standardize(xb, 5000, 9, order == "F", None, None, False, None,
                                    2) is True
        assert_bitwise_equal(xb, before)


def test_empty_and_bad_sizes():
    x = np.zeros((0, 3))
    k, m, q = _kernels.colstats(x, 0, 3, False, None, 1)
    assert (k == 0).all() and np.isnan(m).all() and (q == 0).all()
    with pytest.raises(ValueError, match="invalid argument"):
        _kernels.colstats(np.zeros((2, 2)), -1, 2, False, None, 1)
    with pytest.raises(ValueError, match="invalid argument"):
        _kernels.standardize(np.zeros((2, 2)), 2, -2, False, None, None, False,
                             np.zeros((2, 2)), 1)


def test_tuning_thresholds_change_no_bits(rng):
    # serial=0, wake=0: even small calls split over threads and wake the
    # helpers.  None of it changes a bit.
    # 25600 values (under the default serial threshold) in 2 row blocks
    x = make(rng, (400, 64), np.float32, nan=0.02)
    w = rng.uniform(0, 2, 400)
    mean, scale = rng.standard_normal(64), rng.uniform(0.5, 2, 64)
    ref = colstats(x, w, threads=1), standardize(x, mean, scale, threads=1)[0]
    old = _kernels.set_tuning(serial=0, wake=0)
    try:
        got = colstats(x, w, threads=4), standardize(x, mean, scale, threads=4)[0]
    finally:
        _kernels.set_tuning(**old)
    for a, b in zip(got[0], ref[0]):
        assert_bitwise_equal(a, b)
    assert_bitwise_equal(got[1], ref[1])
