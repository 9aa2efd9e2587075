"""batch_norm_train / batch_norm_infer against the float64 reference.

Every layout of conftest.LAYOUTS x dtype x option (gamma/beta None or not,
relu, residual, out=, in place) and the input variants (Fortran order,
non-contiguous, transposed, read-only, big-endian).
"""

import zlib

import numpy as np
import pytest

import fastbn
import reference
from conftest import ALL_DTYPES
from helpers import assert_bitwise_equal, assert_close, make_params, make_x, stat_dtype

AFFINE = [(False, False), (True, False), (False, True), (True, True)]
AFFINE_IDS = ["plain", "gamma", "beta", "affine"]
OUT_MODES = ["new", "out", "inplace"]


def _seed(*parts):
    """A generator seeded from the test parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def _check_output(y, shape, dtype):
    assert isinstance(y, np.ndarray)
    assert y.shape == tuple(shape)
    assert y.dtype == np.dtype(dtype)
    assert y.flags.c_contiguous


def _check_channel_array(a, c, dtype):
    assert isinstance(a, np.ndarray)
    assert a.shape == (c,)
    assert a.dtype == np.dtype(dtype)


def _prepare_out(mode, x):
    """(input to pass, out= argument) for an out mode."""
    if mode == "new":
        return x, None
    if mode == "out":
        return x, np.full(x.shape, np.nan, x.dtype)  # garbage must be overwritten
    xin = x.copy()
    return xin, xin


@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("relu", [False, True], ids=["norelu", "relu"])
@pytest.mark.parametrize("affine", AFFINE, ids=AFFINE_IDS)
def test_train_matches_reference(layout, dtype, affine, relu, residual,
                                 out_mode):
    shape, axis = layout
    c = shape[axis]
    rng = _seed(shape, axis, dtype, affine, relu, residual)
    x = make_x(rng, shape, axis, dtype)
    gamma, beta, _, _ = make_params(rng, c, dtype)
    g = gamma if affine[0] else None
    b = beta if affine[1] else None
    z = make_x(rng, shape, axis, dtype) if residual else None
    inputs = [a for a in (x, g, b, z) if a is not None]
    copies = [a.copy() for a in inputs]

    ref_y, ref_mean, ref_invstd = reference.batch_norm_train(
        x, g, b, axis=axis, relu=relu, residual=z)
    xin, out = _prepare_out(out_mode, x)
    y, mean, invstd = fastbn.batch_norm_train(
        xin, g, b, axis=axis, relu=relu, residual=z, out=out)

    _check_output(y, shape, dtype)
    _check_channel_array(mean, c, dtype)
    _check_channel_array(invstd, c, dtype)
    if out is not None:
        assert np.shares_memory(y, out)
        assert_close(out, ref_y, dtype)
    assert_close(y, ref_y, dtype)
    assert_close(mean, ref_mean, dtype)
    assert_close(invstd, ref_invstd, dtype)
    if relu:
        assert np.all(y >= 0)
    for a, a0 in zip(inputs, copies):
        assert_bitwise_equal(a, a0)  # inputs never modified


@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("relu", [False, True], ids=["norelu", "relu"])
@pytest.mark.parametrize("affine", AFFINE, ids=AFFINE_IDS)
def test_infer_matches_reference(layout, dtype, affine, relu, residual,
                                 out_mode):
    shape, axis = layout
    c = shape[axis]
    rng = _seed("infer", shape, axis, dtype, affine, relu, residual)
    x = make_x(rng, shape, axis, dtype)
    gamma, beta, rmean, rvar = make_params(rng, c, dtype)
    g = gamma if affine[0] else None
    b = beta if affine[1] else None
    z = make_x(rng, shape, axis, dtype) if residual else None
    inputs = [a for a in (x, rmean, rvar, g, b, z) if a is not None]
    copies = [a.copy() for a in inputs]

    ref_y = reference.batch_norm_infer(x, rmean, rvar, g, b, axis=axis,
                                       relu=relu, residual=z)
    xin, out = _prepare_out(out_mode, x)
    y = fastbn.batch_norm_infer(xin, rmean, rvar, g, b, axis=axis,
                                relu=relu, residual=z, out=out)

    _check_output(y, shape, dtype)
    if out is not None:
        assert np.shares_memory(y, out)
    assert_close(y, ref_y, dtype)
    if relu:
        assert np.all(y >= 0)
    for a, a0 in zip(inputs, copies):
        assert_bitwise_equal(a, a0)


@pytest.mark.parametrize("eps", [1e-3, 0.5, 2.0])
def test_eps_is_used(dtype, eps):
    rng = np.random.default_rng(1)
    x = make_x(rng, (8, 3, 5), 1, dtype) * 0.5
    _, _, rmean, rvar = make_params(rng, 3, dtype)
    y, mean, invstd = fastbn.batch_norm_train(x, eps=eps)
    ref_y, _, ref_invstd = reference.batch_norm_train(x, eps=eps)
    assert_close(y, ref_y, dtype)
    assert_close(invstd, ref_invstd, dtype)
    y = fastbn.batch_norm_infer(x, rmean, rvar, eps=eps)
    assert_close(y, reference.batch_norm_infer(x, rmean, rvar, eps=eps),
                 dtype)


def test_default_eps_is_1e_5():
    rng = np.random.default_rng(2)
    x = make_x(rng, (16, 4), 1, np.float64) * 1e-2  # var ~ 1e-4: eps matters
    _, _, invstd = fastbn.batch_norm_train(x)
    assert_close(invstd, reference.batch_norm_train(x, eps=1e-5)[2],
                 np.float64)
    rmean, rvar = np.zeros(4), np.full(4, 1e-4)
    y = fastbn.batch_norm_infer(x, rmean, rvar)
    assert_close(y, reference.batch_norm_infer(x, rmean, rvar, eps=1e-5),
                 np.float64)


def test_invstd_is_one_over_sqrt_var_plus_eps(layout, dtype):
    shape, axis = layout
    rng = np.random.default_rng(3)
    x = make_x(rng, shape, axis, dtype)
    eps = 1e-3
    _, mean, invstd = fastbn.batch_norm_train(x, axis=axis, eps=eps)
    smean, svar = fastbn.batch_stats(x, axis=axis)
    expect = 1.0 / np.sqrt(svar.astype(np.float64) + eps)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(invstd, expect, rtol=tol)
    np.testing.assert_allclose(mean, smean, rtol=tol, atol=tol)


def test_per_channel_arrays_are_cast_to_x_dtype():
    rng = np.random.default_rng(4)
    x = make_x(rng, (5, 4, 3), 1, np.float32)
    g, b, m, v = make_params(rng, 4, np.float64)
    y64 = fastbn.batch_norm_train(x, g, b)[0]
    y32 = fastbn.batch_norm_train(x, g.astype(np.float32),
                                  b.astype(np.float32))[0]
    assert y64.dtype == np.float32
    assert_bitwise_equal(y64, y32)
    yi64 = fastbn.batch_norm_infer(x, m, v, g, b)
    yi32 = fastbn.batch_norm_infer(x, *(a.astype(np.float32)
                                        for a in (m, v, g, b)))
    assert yi64.dtype == np.float32
    assert_bitwise_equal(yi64, yi32)


@pytest.mark.parametrize("inplace", [False, True])
def test_residual_may_be_x(dtype, inplace):
    rng = np.random.default_rng(5)
    x = make_x(rng, (4, 3, 6), 1, dtype)
    g, b, m, v = make_params(rng, 3, dtype)
    ref = reference.batch_norm_train(x, g, b, relu=True, residual=x)[0]
    ref_i = reference.batch_norm_infer(x, m, v, g, b, relu=True, residual=x)
    xa = x.copy()
    y = fastbn.batch_norm_train(xa, g, b, relu=True, residual=xa,
                                out=xa if inplace else None)[0]
    assert_close(y, ref, dtype)
    xb = x.copy()
    y = fastbn.batch_norm_infer(xb, m, v, g, b, relu=True, residual=xb,
                                out=xb if inplace else None)
    assert_close(y, ref_i, dtype)


def test_relu_propagates_nan():
    x = np.array([[1.0, 2.0], [np.nan, -1.0], [3.0, 5.0]])
    y = fastbn.batch_norm_infer(x, np.zeros(2), np.ones(2), relu=True)
    assert np.isnan(y[1, 0])
    assert y[1, 1] == 0.0 and y[0, 0] > 0
    y, mean, _ = fastbn.batch_norm_train(x, relu=True)
    assert np.isnan(mean[0]) and np.all(np.isnan(y[:, 0]))
    assert np.all(np.isfinite(y[:, 1]))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nan_and_inf_stay_in_their_channel(dtype, rng):
    x = rng.standard_normal((8, 4, 6, 6)).astype(np.float32).astype(dtype)
    x[2, 1, 3, 3] = np.nan
    x[5, 2, 0, 0] = np.inf
    y = fastbn.batch_norm_train(x, relu=True)[0].astype(np.float32)
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isnan(y[:, 2]))
    assert np.all(np.isfinite(y[:, [0, 3]]))


def test_output_is_not_an_input():
    rng = np.random.default_rng(6)
    x = make_x(rng, (4, 3, 5), 1, np.float32)
    y = fastbn.batch_norm_train(x)[0]
    assert not np.shares_memory(y, x)
    y = fastbn.batch_norm_infer(x, np.zeros(3, np.float32),
                                np.ones(3, np.float32))
    assert not np.shares_memory(y, x)


# ---------------------------------------------------------------- axes

def test_negative_axis_equals_positive(dtype):
    rng = np.random.default_rng(7)
    x = make_x(rng, (3, 4, 5, 6), 2, dtype)
    g, b, m, v = make_params(rng, 5, dtype)
    a = fastbn.batch_norm_train(x, g, b, axis=2, relu=True)
    n = fastbn.batch_norm_train(x, g, b, axis=-2, relu=True)
    for p, q in zip(a, n):
        assert_bitwise_equal(p, q)
    assert_bitwise_equal(fastbn.batch_norm_infer(x, m, v, g, b, axis=2),
                         fastbn.batch_norm_infer(x, m, v, g, b, axis=-2))


LAYOUT_PAIRS = [  # channel-first shape, permutation to channels-last
    ((4, 6, 5, 7), (0, 2, 3, 1)),
    ((5, 3, 9), (0, 2, 1)),
    ((2, 4, 3, 5, 3), (0, 2, 3, 4, 1)),
    ((16, 24), (0, 1)),
]


@pytest.mark.parametrize("shape,perm", LAYOUT_PAIRS,
                         ids=["NCHW", "NCL", "NCDHW", "NC"])
def test_layout_invariance(shape, perm, dtype):
    """The same data as channels-first (axis=1) or channels-last (axis=-1)
    gives the same numbers within float rounding."""
    rng = np.random.default_rng(8)
    x = make_x(rng, shape, 1, dtype)
    z = make_x(rng, shape, 1, dtype)
    c = shape[1]
    g, b, m, v = make_params(rng, c, dtype)
    xl = np.ascontiguousarray(x.transpose(perm))
    zl = np.ascontiguousarray(z.transpose(perm))
    inv = np.argsort(perm)

    y1, mean1, invstd1 = fastbn.batch_norm_train(x, g, b, axis=1, relu=True,
                                                 residual=z)
    y2, mean2, invstd2 = fastbn.batch_norm_train(xl, g, b, axis=-1,
                                                 relu=True, residual=zl)
    assert_close(y2.transpose(inv), y1, dtype, factor=0.5)
    assert_close(mean2, mean1, dtype, factor=0.5)
    assert_close(invstd2, invstd1, dtype, factor=0.5)

    s1 = fastbn.batch_stats(x, axis=1)
    s2 = fastbn.batch_stats(xl, axis=-1)
    assert_close(s2[0], s1[0], dtype, factor=0.5)
    assert_close(s2[1], s1[1], dtype, factor=0.5)

    i1 = fastbn.batch_norm_infer(x, m, v, g, b, axis=1)
    i2 = fastbn.batch_norm_infer(xl, m, v, g, b, axis=-1)
    assert_close(i2.transpose(inv), i1, dtype, factor=0.5)


# ------------------------------------------------------- input variants

VARIANTS = ["fortran", "strided", "transposed", "readonly", "bigendian",
            "negstride"]


def _variant(a, kind, rng):
    """The same values as ``a`` in another memory layout / byte order."""
    if a is None:
        return None
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        big[..., 1::2] = rng.standard_normal(a.shape)
        v = big[..., ::2]
        assert not v.flags.c_contiguous
        return v
    if kind == "transposed":
        if a.ndim == 1:
            return a.copy()
        rev = tuple(range(a.ndim))[::-1]
        v = np.ascontiguousarray(a.transpose(rev)).transpose(rev)
        assert not v.flags.c_contiguous
        return v
    if kind == "negstride":
        v = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
        assert v.strides[-1] < 0
        return v
    if kind == "readonly":
        v = a.copy()
        v.setflags(write=False)
        return v
    if kind == "bigendian":
        v = a.astype(a.dtype.newbyteorder(">"))
        assert v.dtype.byteorder == ">"
        return v
    raise AssertionError(kind)


#: (variant, dtype): every variant of every dtype (bfloat16 has no
#: byte-swapped form: NumPy makes it a plain 2-byte void)
VARIANT_CASES = [pytest.param(k, d.values[0], id=f"{k}-{d.id}", marks=d.marks)
                 for k in VARIANTS for d in ALL_DTYPES
                 if not (k == "bigendian" and d.id == "bf16")]


@pytest.mark.parametrize("kind,dtype", VARIANT_CASES)
@pytest.mark.parametrize("shape,axis", [((4, 5, 3, 6), 1), ((6, 3, 7), -1),
                                        ((9, 4), 1)],
                         ids=["NCHW", "NLC", "NC"])
def test_input_variants_give_native_results(kind, shape, axis, dtype):
    """Non-contiguous, Fortran-ordered, transposed, read-only and big-endian
    inputs give bitwise the results of contiguous native ones (big-endian is
    converted)."""
    rng = np.random.default_rng(9)
    c = shape[axis]
    sdt = stat_dtype(dtype)
    x = make_x(rng, shape, axis, dtype)
    z = make_x(rng, shape, axis, dtype)
    g, b, m, v = make_params(rng, c, sdt)
    args = [x, z, g, b, m, v]
    xv, zv, gv, bv, mv, vv = [_variant(a, kind, rng) for a in args]
    copies = [a.copy() for a in (xv, zv, gv, bv, mv, vv)]

    want = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z)
    got = fastbn.batch_norm_train(xv, gv, bv, axis=axis, relu=True,
                                  residual=zv)
    for p, q, dt in zip(got, want, (dtype, sdt, sdt)):
        assert p.dtype == np.dtype(dt)  # native byte order
        assert p.dtype.isnative
        assert_bitwise_equal(p, q)
    assert got[0].flags.c_contiguous

    want = fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, residual=z)
    got = fastbn.batch_norm_infer(xv, mv, vv, gv, bv, axis=axis, residual=zv)
    assert got.dtype == np.dtype(dtype) and got.flags.c_contiguous
    assert_bitwise_equal(got, want)

    for p, q in zip(fastbn.batch_stats(xv, axis=axis),
                    fastbn.batch_stats(x, axis=axis)):
        assert p.dtype == sdt
        assert_bitwise_equal(p, q)
    cnt, mean, m2 = fastbn.moments(xv, axis=axis)
    cnt0, mean0, m20 = fastbn.moments(x, axis=axis)
    assert cnt == cnt0
    assert_bitwise_equal(mean, mean0)
    assert_bitwise_equal(m2, m20)

    for a, a0 in zip((xv, zv, gv, bv, mv, vv), copies):
        assert_bitwise_equal(a, a0)
        if kind == "bigendian":
            assert a.dtype.byteorder == ">"


def test_out_receives_result_for_fortran_input(dtype):
    rng = np.random.default_rng(10)
    x = np.asfortranarray(make_x(rng, (5, 3, 4), 1, dtype))
    out = np.empty(x.shape, dtype)
    y, _, _ = fastbn.batch_norm_train(x, out=out)
    assert np.shares_memory(y, out)
    assert_close(out, reference.batch_norm_train(x)[0], dtype)


# --------------------------------------------------------------- empty

@pytest.mark.parametrize("shape,axis", [((0, 3, 4, 4), 1), ((0, 5), 1),
                                        ((2, 0, 3), 1), ((0, 4, 4, 3), -1)])
def test_infer_empty_batch_returns_empty(shape, axis, dtype):
    c = shape[axis]
    x = np.zeros(shape, dtype)
    y = fastbn.batch_norm_infer(x, np.zeros(c, dtype), np.ones(c, dtype),
                                np.ones(c, dtype), np.zeros(c, dtype),
                                axis=axis, relu=True)
    _check_output(y, shape, dtype)
    assert y.size == 0
    out = np.empty(shape, dtype)
    y = fastbn.batch_norm_infer(x, np.zeros(c, dtype), np.ones(c, dtype),
                                axis=axis, out=out)
    assert y.shape == shape


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0, 5), (4, 3, 0)])
def test_train_empty_batch_raises(shape, dtype):
    x = np.zeros(shape, dtype)
    with pytest.raises(ValueError, match=r"\bx\b|empty|values per channel"):
        fastbn.batch_norm_train(x)
