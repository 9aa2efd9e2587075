"""Every SIMD variant of the kernels the CPU supports (baseline, AVX2,
AVX-512 as FASTBN_SIMD selects them) against the float64 reference, not
only the one chosen at import.

Uses fastbn._kernels.set_simd / simd_available (the in-process form of the
FASTBN_SIMD environment variable)."""

import numpy as np
import pytest

import fastbn
import reference
from conftest import ALL_DTYPES
from fastbn import _kernels
from helpers import assert_bitwise_equal, assert_close, make_inputs, make_params, make_x

AVAILABLE = _kernels.simd_available()

SHAPES = [((5, 7, 3, 9), 1), ((6, 5, 7, 19), -1), ((33, 17), 1),
          ((4, 3, 1, 1), 1), ((64, 3, 40, 40), 1), ((2048, 24), 1),
          ((3, 2, 5001), 1)]


def test_baseline_is_always_available():
    assert "baseline" in AVAILABLE
    assert _kernels.simd() in AVAILABLE


def test_unknown_simd_raises(simd):
    with pytest.raises(ValueError, match="FASTBN_SIMD"):
        simd("no-such-isa")


@pytest.mark.parametrize("isa", AVAILABLE)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=str)
def test_each_simd_variant_matches_reference(isa, shape, axis, dtype, simd):
    simd(isa)
    assert _kernels.simd() == isa
    rng = np.random.default_rng(60)
    c = shape[axis]
    x = make_x(rng, shape, axis, dtype)
    z = make_x(rng, shape, axis, dtype)
    g, b, m, v = make_params(rng, c, dtype)

    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                              residual=z)
    ry, rmean, rinvstd = reference.batch_norm_train(x, g, b, axis=axis,
                                                    relu=True, residual=z)
    assert_close(y, ry, dtype)
    assert_close(mean, rmean, dtype)
    assert_close(invstd, rinvstd, dtype)
    y2, _, _ = fastbn.batch_norm_train(x, axis=axis)
    assert_close(y2, reference.batch_norm_train(x, axis=axis)[0], dtype)

    yi = fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, relu=True)
    assert_close(yi, reference.batch_norm_infer(x, m, v, g, b, axis=axis,
                                                relu=True), dtype)
    smean, svar = fastbn.batch_stats(x, axis=axis)
    assert_close(svar, reference.batch_stats(x, axis=axis)[1], dtype)
    n, mm, m2 = fastbn.moments(x, axis=axis)
    np.testing.assert_allclose(m2 / n, reference.batch_stats(x, axis)[1],
                               rtol=1e-12)

    # threads stay bitwise reproducible within each variant
    with fastbn.num_threads(1):
        one = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True)
    with fastbn.num_threads(4):
        four = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True)
    for p, q in zip(one, four):
        assert_bitwise_equal(p, q)


@pytest.mark.parametrize("isa", AVAILABLE)
def test_each_simd_variant_large_offset_and_nan(isa, simd):
    simd(isa)
    rng = np.random.default_rng(61)
    x = (1e4 + rng.standard_normal((32, 4, 24, 24))).astype(np.float32)
    rvar = reference.batch_stats(x)[1]
    assert np.all(np.abs(fastbn.batch_stats(x)[1] / rvar - 1) <= 1e-4)
    x[:, 1] = 1e7
    y = fastbn.batch_norm_train(x)[0]
    assert np.all(np.isfinite(y)) and np.all(np.abs(y[:, 1]) <= 1e-3)
    xn = x.copy()
    xn[3, 2, 5, 5] = np.nan
    yn = fastbn.batch_norm_train(xn, relu=True)[0]
    y = fastbn.batch_norm_train(x, relu=True)[0]
    assert np.all(np.isnan(yn[:, 2]))
    assert_bitwise_equal(yn[:, [0, 1, 3]], y[:, [0, 1, 3]])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis", [((5, 7, 3, 9), 1), ((6, 5, 7, 19), -1),
                                        ((64, 3, 40, 40), 1), ((2048, 24), 1),
                                        ((3, 2, 5001), 1), ((40, 6, 7, 7), 1),
                                        ((5, 3, 33, 31), 1), ((600, 200), 1),
                                        ((3, 9, 31, 150), -1), ((9, 2100), 1),
                                        ((4, 3, 5, 40), -1)], ids=str)
def test_bitwise_identical_across_threads_and_simd_levels(shape, axis, dtype, rng,
                                                          restore_threads):
    """Every function, every dtype: the bits of the baseline kernels on one
    thread, on every instruction set and 1, 2 and 4 threads."""
    x, z, dy, g, b, m, v = make_inputs(rng, shape, axis, dtype)

    def run():
        y, mean, inv = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                               residual=z)
        res = [y, mean, inv]
        res += list(fastbn.batch_norm_backward(dy, x, mean, inv, g, axis=axis, y=y,
                                               residual=True))
        res.append(fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, residual=z))
        res += list(fastbn.batch_stats(x, axis=axis))
        return res

    old = _kernels.simd()
    try:
        _kernels.set_simd("baseline")
        with fastbn.num_threads(1):
            ref = run()
        for isa in _kernels.simd_available():
            _kernels.set_simd(isa)
            for threads in (1, 2, 4):
                with fastbn.num_threads(threads):
                    got = run()
                for i, (p, q) in enumerate(zip(ref, got)):
                    assert p.dtype == q.dtype
                    assert np.array_equal(p.view(np.uint8), q.view(np.uint8)), (
                        isa, threads, i)
    finally:
        _kernels.set_simd(old)
