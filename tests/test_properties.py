"""Hypothesis property tests over shapes, axes, dtypes and options."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastbn
import reference
from helpers import assert_bitwise_equal, assert_close, make_params, make_x

SETTINGS = settings(max_examples=150, deadline=None, database=None)
# 150 examples per property: seconds in all, so outside the fast tier
pytestmark = pytest.mark.slow


@st.composite
def problems(draw, min_count=1):
    """(shape, axis, dtype, seed) with small dims."""
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim,
                                max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    count = int(np.prod(shape)) // shape[axis]
    if count < min_count:
        # make the first non-channel axis long enough
        k = 0 if axis % ndim != 0 else 1
        shape = shape[:k] + (shape[k] * min_count,) + shape[k + 1:]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, axis, dtype, seed


@SETTINGS
@given(problems(min_count=2), st.booleans(), st.booleans(), st.booleans(),
       st.booleans())
def test_train_property(prob, use_gamma, use_beta, relu, residual):
    shape, axis, dtype, seed = prob
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis, dtype)
    g, b, _, _ = make_params(rng, shape[axis], dtype)
    g = g if use_gamma else None
    b = b if use_beta else None
    z = make_x(rng, shape, axis, dtype) if residual else None
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=relu,
                                              residual=z)
    ry, rmean, rinvstd = reference.batch_norm_train(x, g, b, axis=axis,
                                                    relu=relu, residual=z)
    assert y.dtype == x.dtype and y.flags.c_contiguous
    assert mean.dtype == x.dtype and mean.shape == (shape[axis],)
    # a channel of 2 values: (x-mean)*invstd is +-1/sqrt(1+eps/var), whose
    # float32 rounding can be relatively larger when var ~ eps; data here
    # has std >= 0.5 so the standard tolerance holds
    assert_close(y, ry, dtype)
    assert_close(mean, rmean, dtype)
    assert_close(invstd, rinvstd, dtype)


@SETTINGS
@given(problems(min_count=1), st.booleans(), st.booleans())
def test_infer_property(prob, relu, residual):
    shape, axis, dtype, seed = prob
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis, dtype)
    g, b, m, v = make_params(rng, shape[axis], dtype)
    z = make_x(rng, shape, axis, dtype) if residual else None
    y = fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, relu=relu,
                                residual=z)
    assert y.dtype == x.dtype and y.shape == shape
    assert_close(y, reference.batch_norm_infer(x, m, v, g, b, axis=axis,
                                               relu=relu, residual=z), dtype)


@SETTINGS
@given(problems(min_count=1), st.data())
def test_stats_and_merge_property(prob, data):
    shape, axis, dtype, seed = prob
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis, dtype, offset=100.0)
    mean, var = fastbn.batch_stats(x, axis=axis)
    rmean, rvar = reference.batch_stats(x, axis=axis)
    assert mean.dtype == x.dtype and var.dtype == x.dtype
    assert np.all(var >= 0)
    assert_close(mean, rmean, dtype)
    assert_close(var, rvar, dtype)

    # split along any non-channel axis, merge: equals the whole
    ndim = len(shape)
    others = [k for k in range(ndim) if k != axis % ndim]
    split_axis = data.draw(st.sampled_from(others))
    pieces = data.draw(st.integers(1, max(1, shape[split_axis])))
    parts = [fastbn.moments(ch, axis=axis)
             for ch in np.array_split(x, pieces, axis=split_axis)]
    n = sum(p[0] for p in parts)
    assert n == x.size // shape[axis]
    mmean, mvar = fastbn.merge_moments(parts)
    np.testing.assert_allclose(mmean, rmean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mvar, rvar, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(problems(min_count=1))
def test_train_needs_two_values_property(prob):
    shape, axis, dtype, seed = prob
    count = int(np.prod(shape)) // shape[axis]
    x = make_x(np.random.default_rng(seed), shape, axis, dtype)
    if count < 2:
        with pytest.raises(ValueError):
            fastbn.batch_norm_train(x, axis=axis)
    else:
        y, _, _ = fastbn.batch_norm_train(x, axis=axis)
        # per channel the output is standardised: mean 0, var/(var+eps)
        ym, yv = reference.batch_stats(y, axis=axis)
        _, var = reference.batch_stats(x, axis=axis)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert np.all(np.abs(ym) <= 10 * tol)
        np.testing.assert_allclose(yv, var / (var + 1e-5), rtol=10 * tol,
                                   atol=10 * tol)


@SETTINGS
@given(problems(min_count=2))
def test_layout_invariance_property(prob):
    """Moving the channel axis (and the data with it) gives the same numbers
    within float rounding."""
    shape, axis, dtype, seed = prob
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis, dtype)
    g, b, _, _ = make_params(rng, shape[axis], dtype)
    ndim = len(shape)
    new_axis = int(rng.integers(0, ndim))
    xm = np.ascontiguousarray(np.moveaxis(x, axis, new_axis))
    y1, m1, i1 = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True)
    y2, m2, i2 = fastbn.batch_norm_train(xm, g, b, axis=new_axis, relu=True)
    assert_close(np.moveaxis(y2, new_axis, axis), y1, dtype)
    assert_close(m2, m1, dtype)
    assert_close(i2, i1, dtype)


@SETTINGS
@given(problems(min_count=2), st.sampled_from(["fortran", "reversed",
                                               "permuted", "bigendian"]))
def test_memory_layout_does_not_change_bits_property(prob, kind):
    """Any strided view / byte order of the same values gives bitwise the
    result of the C-contiguous native array."""
    shape, axis, dtype, seed = prob
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis, dtype)
    if kind == "fortran":
        xv = np.asfortranarray(x)
    elif kind == "reversed":
        xv = np.ascontiguousarray(x[::-1, ..., ::-1])[::-1, ..., ::-1]
    elif kind == "permuted":
        perm = rng.permutation(len(shape))
        xv = np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))
    else:
        xv = x.astype(x.dtype.newbyteorder(">"))
    np.testing.assert_array_equal(xv, x)
    for p, q in zip(fastbn.batch_norm_train(xv, axis=axis, relu=True),
                    fastbn.batch_norm_train(x, axis=axis, relu=True)):
        assert_bitwise_equal(p, q)
    for p, q in zip(fastbn.batch_stats(xv, axis=axis),
                    fastbn.batch_stats(x, axis=axis)):
        assert_bitwise_equal(p, q)
