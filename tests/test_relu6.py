"""ReLU6 (``activation="relu6"``): ``min(max(t, 0), 6)`` fused into the
forward's pass, and the backward's mask ``0 < y < 6``.

Checked against the float64 reference (fastbn._reference with
``activation="relu6"``: ``clip(BN(x) + z, 0, 6)`` and the textbook backward
with that mask) for float32, float64, float16 and
bfloat16, channel-first, channel-last and dense 2-D data, with and without
a residual; the half types also bit for bit against the float32 path on the
widened data (one rounding); bits identical for every thread count and
instruction set; ghost batches equal to ordinary calls on their slices; the
layer; and the argument errors.
"""
import numpy as np
import pytest

import fastbn
import reference
from fastbn import _kernels
from helpers import assert_bitwise_equal, assert_close, make_x

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    ml_dtypes = None

F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16) if ml_dtypes is not None else None
_needs_ml = pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes")
DTYPES = [pytest.param(np.dtype(np.float32), id="f32"),
          pytest.param(np.dtype(np.float64), id="f64"),
          pytest.param(F16, id="f16"),
          pytest.param(BF16, id="bf16", marks=_needs_ml)]
HALVES = [pytest.param(F16, id="f16"), pytest.param(BF16, id="bf16", marks=_needs_ml)]
LAYOUTS = [("NCHW", (4, 6, 9, 7), 1), ("NHWC", (4, 5, 7, 6), -1), ("NC", (37, 21), 1)]
#: tolerance relative to the output scale: float32/float64 as the other
#: tests; the half types: a few units of their machine epsilon
TOL = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-12, F16: 4 * 2.0 ** -10}
if BF16 is not None:
    TOL[BF16] = 4 * 2.0 ** -7


def is_half(dt):
    return np.dtype(dt).itemsize == 2


def params(rng, C):
    """gamma and beta that put many outputs below 0 and many above 6."""
    gamma = rng.uniform(1.5, 4.0, C) * np.where(np.arange(C) % 3 == 0, -1, 1)
    beta = rng.uniform(-1.0, 4.0, C)
    return gamma.astype(np.float32), beta.astype(np.float32)


def data(rng, shape, axis, dt):
    return make_x(rng, shape, axis, np.float32).astype(dt)


def close(actual, expected, dt):
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    tol = TOL[np.dtype(dt)]
    np.testing.assert_allclose(np.asarray(actual).astype(np.float64), expected,
                               rtol=tol, atol=tol * scale)


def ref_train(x, g, b, axis, z):
    return reference.batch_norm_train(x, g, b, axis=axis, residual=z,
                                      activation="relu6")


def ref_backward(dy, x, mean, invstd, g, axis, y, training=True):
    return reference.batch_norm_backward(dy, x, mean, invstd, g, axis=axis, y=y,
                                         training=training, activation="relu6")


def mask6(y):
    """Where the ReLU6 mask is open (0 < y < 6)."""
    yf = np.asarray(y).astype(np.float64)
    return (yf > 0) & (yf < 6)


@pytest.mark.parametrize("lid,shape,axis", LAYOUTS, ids=[s[0] for s in LAYOUTS])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dt", DTYPES)
def test_relu6_train_infer_backward_match_reference(lid, shape, axis, residual, dt):
    rng = np.random.default_rng(6)
    C = shape[axis]
    x = data(rng, shape, axis, dt)
    z = data(rng, shape, axis, dt) if residual else None
    g, b = params(rng, C)
    sdt = np.float32 if is_half(dt) else dt
    g, b = g.astype(sdt), b.astype(sdt)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, residual=z,
                                              activation="relu6")
    ry, rmean, rinv = ref_train(x, g, b, axis, z)
    assert y.dtype == dt
    close(y, ry, dt)
    yf = y.astype(np.float64)
    assert yf.min() == 0.0 and yf.max() == 6.0  # both clamps were exercised
    assert 0 < np.mean(yf == 6.0) < 0.5 and 0 < np.mean(yf == 0.0) < 0.7
    close(mean, rmean, np.float32 if is_half(dt) else dt)

    # inference with the batch's statistics as running ones
    var = (1.0 / np.asarray(invstd, np.float64) ** 2 - 1e-5).astype(sdt)
    yi = fastbn.batch_norm_infer(x, mean, var, g, b, axis=axis, residual=z,
                                 activation="relu6")
    ryi = reference.batch_norm_infer(x, mean, var, g, b, axis=axis, residual=z,
                                     activation="relu6")
    close(yi, ryi, dt)

    # backward: the gradient flows where 0 < y < 6
    dy = data(rng, shape, axis, dt)
    res = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis, y=y,
                                     residual=residual, activation="relu6")
    rdx, rdg, rdb, rdz = ref_backward(dy, x, mean, invstd, g, axis, y)
    close(res[0], rdx, dt)
    close(res[1], rdg, np.float32 if is_half(dt) else dt)
    close(res[2], rdb, np.float32 if is_half(dt) else dt)
    if residual:
        # dz is dy' exactly: dy where the mask is open, +0 elsewhere
        assert_bitwise_equal(res[3], np.where(mask6(y), dy, np.zeros_like(dy)))
    # frozen statistics
    dxf = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis, y=y,
                                     training=False, activation="relu6")[0]
    close(dxf, ref_backward(dy, x, mean, invstd, g, axis, y, training=False)[0], dt)


@pytest.mark.parametrize("lid,shape,axis", LAYOUTS, ids=[s[0] for s in LAYOUTS])
@pytest.mark.parametrize("dt", DTYPES)
def test_relu6_is_relu_clamped_at_6_bit_for_bit(lid, shape, axis, dt):
    """The same pass with the upper clamp: min(relu's y, 6) exactly (the
    half types round once after the clamp, and 6 is a half value)."""
    rng = np.random.default_rng(7)
    x = data(rng, shape, axis, dt)
    z = data(rng, shape, axis, dt)
    g, b = params(rng, shape[axis])
    y6, m6, s6 = fastbn.batch_norm_train(x, g, b, axis=axis, residual=z,
                                         activation="relu6")
    y1, m1, s1 = fastbn.batch_norm_train(x, g, b, axis=axis, residual=z, relu=True)
    assert_bitwise_equal(y6, np.minimum(y1, np.asarray(6, dt)))
    assert_bitwise_equal(m6, m1)
    assert_bitwise_equal(s6, s1)
    # relu=True and activation="relu" are the same call
    y2 = fastbn.batch_norm_train(x, g, b, axis=axis, residual=z, relu=True,
                                 activation="relu")[0]
    assert_bitwise_equal(y2, y1)


@pytest.mark.parametrize("lid,shape,axis", LAYOUTS, ids=[s[0] for s in LAYOUTS])
@pytest.mark.parametrize("dt", HALVES)
def test_relu6_half_is_the_float32_path_rounded_once(lid, shape, axis, dt):
    """Inference and backward on half data compute what the float32 kernels
    compute on the widened values, rounded once."""
    rng = np.random.default_rng(8)
    x = data(rng, shape, axis, dt)
    z = data(rng, shape, axis, dt)
    g, b = params(rng, shape[axis])
    mean = rng.standard_normal(shape[axis]).astype(np.float32)
    var = rng.uniform(0.3, 3.0, shape[axis]).astype(np.float32)
    yh = fastbn.batch_norm_infer(x, mean, var, g, b, axis=axis, residual=z,
                                 activation="relu6")
    yf = fastbn.batch_norm_infer(x.astype(np.float32), mean, var, g, b, axis=axis,
                                 residual=z.astype(np.float32), activation="relu6")
    assert_bitwise_equal(yh, yf.astype(dt))

    y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, activation="relu6")
    dy = data(rng, shape, axis, dt)
    for training in (True, False):
        rh = fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y, residual=True,
                                        training=training, activation="relu6")
        rf = fastbn.batch_norm_backward(dy.astype(np.float32), x.astype(np.float32),
                                        m, s, g, axis=axis, y=y.astype(np.float32),
                                        residual=True, training=training,
                                        activation="relu6")
        assert_bitwise_equal(rh[0], rf[0].astype(dt))
        assert_bitwise_equal(rh[3], rf[3].astype(dt))
        assert_bitwise_equal(rh[1], rf[1])
        assert_bitwise_equal(rh[2], rf[2])


def _all_results(x, z, g, b, dy, axis, k=None):
    """Every ReLU6 result of one data set (forward, inference, backward)."""
    y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, residual=z,
                                      activation="relu6", virtual_batch_size=k)
    out = [y, m, s]
    if k is None:
        var = np.ones_like(m)
        out.append(fastbn.batch_norm_infer(x, m, var, g, b, axis=axis, residual=z,
                                           activation="relu6"))
    out += list(fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                           residual=True, activation="relu6",
                                           virtual_batch_size=k))
    return out


BIG = [((8, 16, 24, 24), 1), ((48, 12, 12, 20), -1), ((3000, 40), 1)]


@pytest.mark.slow
@pytest.mark.parametrize("shape,axis", BIG, ids=["NCHW", "NHWC", "NC"])
@pytest.mark.parametrize("dt", DTYPES)
def test_relu6_same_bits_for_every_thread_count_and_simd_level(shape, axis, dt):
    rng = np.random.default_rng(9)
    x = data(rng, shape, axis, dt)
    z = data(rng, shape, axis, dt)
    dy = data(rng, shape, axis, dt)
    g, b = params(rng, shape[axis])
    old_simd = _kernels.simd()
    ref = None
    try:
        for isa in _kernels.simd_available():
            _kernels.set_simd(isa)
            for n in (1, 2, 4):
                with fastbn.num_threads(n):
                    got = _all_results(x, z, g, b, dy, axis)
                if ref is None:
                    ref = got
                    continue
                for a, r in zip(got, ref):
                    assert_bitwise_equal(a, r)
    finally:
        _kernels.set_simd(old_simd)  # (FASTBN_SIMD's level, or the best)
    assert _kernels.simd() == old_simd


@pytest.mark.parametrize("shape,axis", [((12, 5, 6, 7), 1), ((12, 4, 5, 9), -1),
                                        ((24, 19), 1)], ids=["NCHW", "NHWC", "NC"])
@pytest.mark.parametrize("dt", DTYPES)
def test_relu6_ghost_batches_are_their_slices(shape, axis, dt):
    """Each ghost batch of k samples is an ordinary ReLU6 call on its slice,
    bit for bit (forward, and the backward's dx and dz)."""
    rng = np.random.default_rng(10)
    k = 4
    x = data(rng, shape, axis, dt)
    z = data(rng, shape, axis, dt)
    dy = data(rng, shape, axis, dt)
    g, b = params(rng, shape[axis])
    y, m, s, dx, dg, db, dz = _all_results(x, z, g, b, dy, axis, k)
    G = shape[0] // k
    assert m.shape == (G, shape[axis])
    dgs = np.zeros(shape[axis])
    for i in range(G):
        sl = slice(i * k, (i + 1) * k)
        yi, mi, si = fastbn.batch_norm_train(x[sl], g, b, axis=axis, residual=z[sl],
                                             activation="relu6")
        assert_bitwise_equal(y[sl], yi)
        assert_bitwise_equal(m[i], mi)
        assert_bitwise_equal(s[i], si)
        dxi, dgi, _, dzi = fastbn.batch_norm_backward(
            dy[sl], x[sl], mi, si, g, axis=axis, y=yi, residual=True,
            activation="relu6")
        assert_bitwise_equal(dx[sl], dxi)
        assert_bitwise_equal(dz[sl], dzi)
        dgs += dgi.astype(np.float64)
    close(dg, dgs, np.float32 if is_half(dt) else dt)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_relu6_layer(dt):
    rng = np.random.default_rng(11)
    shape, C = (6, 5, 4, 3), 5
    x = data(rng, shape, 1, dt)
    z = data(rng, shape, 1, dt)
    g, b = params(rng, C)
    bn = fastbn.BatchNorm(C, activation="relu6", dtype=dt)
    assert bn.activation == "relu6" and not bn.relu and "relu6" in repr(bn)
    bn.gamma[...] = g
    bn.beta[...] = b
    y = bn(x, z)
    ry, m, s = fastbn.batch_norm_train(x, bn.gamma, bn.beta, residual=z,
                                       activation="relu6")
    assert_bitwise_equal(y, ry)
    dy = data(rng, shape, 1, dt)
    dx, dz = bn.backward(dy)
    rdx, rdg, rdb, rdz = fastbn.batch_norm_backward(dy, x, m, s, bn.gamma, y=ry,
                                                    residual=True,
                                                    activation="relu6")
    assert_bitwise_equal(dx, rdx)
    assert_bitwise_equal(dz, rdz)
    assert_bitwise_equal(bn.dgamma, rdg)
    # eval mode: the running statistics, clamped the same way
    bn.eval()
    ye = bn(x)
    assert_bitwise_equal(ye, fastbn.batch_norm_infer(
        x, bn.running_mean, bn.running_var, bn.gamma, bn.beta, activation="relu6"))
    assert bn._copy_config().activation == "relu6"
    # ghost batches in the layer
    bg = fastbn.BatchNorm(C, activation="relu6", dtype=dt, virtual_batch_size=3)
    yg = bg(x)
    assert_bitwise_equal(yg, fastbn.batch_norm_train(
        x, bg.gamma, bg.beta, activation="relu6", virtual_batch_size=3)[0])
    assert float(np.max(yg)) <= 6.0


def test_relu6_errors():
    x = np.ones((4, 3), np.float32)
    x[0] = 0
    m, s = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"activation must be None, 'relu' or "
                                         r"'relu6', got 'relu7'"):
        fastbn.batch_norm_train(x, activation="relu7")
    with pytest.raises(ValueError, match="activation must be"):
        fastbn.batch_norm_infer(x, m, s, activation=6)
    with pytest.raises(ValueError, match=r"relu=True and activation='relu6'"):
        fastbn.batch_norm_train(x, relu=True, activation="relu6")
    with pytest.raises(ValueError, match=r"relu=True and activation='relu6'"):
        fastbn.batch_norm_infer(x, m, s, relu=True, activation="relu6")
    with pytest.raises(ValueError, match=r"relu=True and activation='relu6'"):
        fastbn.BatchNorm(3, relu=True, activation="relu6")
    with pytest.raises(ValueError, match="activation must be"):
        fastbn.BatchNorm(3, activation="tanh")
    with pytest.raises(TypeError, match=r"activation='relu6' needs the forward's "
                                        r"output y= or its beta="):
        fastbn.batch_norm_backward(x, x, m, s, activation="relu6")
    with pytest.raises(ValueError, match="activation must be"):
        fastbn.batch_norm_backward(x, x, m, s, y=x, activation="sigmoid")


def test_relu6_nan_and_infinity():
    """NaN stays NaN through the clamps; +-inf clamp to 6 and 0; the
    backward's mask is closed for NaN, 0, 6 and infinities."""
    x = np.array([[0.0, 1.0], [1.0, 2.0], [np.nan, 3.0], [2.0, 4.0]], np.float32)
    m = np.array([1.0, 0.0], np.float32)
    v = np.array([1.0, 1e-30], np.float32)
    y = fastbn.batch_norm_infer(x, m, v, eps=1e-5, activation="relu6")
    assert np.isnan(y[2, 0])
    assert y[0, 0] == 0 and y[1, 0] == 0 and y[3, 0] > 0
    assert np.all(y[:, 1] == 6)  # large values clamp to exactly 6
    yb = np.array([[np.nan, 0.0], [6.0, 5.5], [np.inf, -np.inf], [3.0, 1e-30]],
                  np.float32)
    dy = np.ones_like(yb)
    dx, _, _, dz = fastbn.batch_norm_backward(dy, np.zeros_like(yb), m,
                                              np.ones(2, np.float32),
                                              y=yb, training=False, residual=True,
                                              activation="relu6")
    np.testing.assert_array_equal(dz, [[0, 0], [0, 1], [0, 0], [1, 1]])


def test_relu6_absorb_scale_refuses():
    """The scale cannot move past a ReLU6 (its clamp at 6 would move)."""
    bn = fastbn.BatchNorm(3, activation="relu6", dtype=np.float64)
    with pytest.raises(ValueError, match="ReLU6"):
        fastbn.absorb_scale(bn, np.ones((2, 3)))



def test_layer_relu_attribute_follows_activation():
    """``bn.relu`` reads and sets the fused activation (a layer whose relu
    was switched on after construction fuses it)."""
    x = np.random.default_rng(12).standard_normal((8, 3)).astype(np.float32)
    bn = fastbn.BatchNorm(3)
    assert not bn.relu and bn.activation is None
    assert float(np.min(bn(x))) < 0
    bn.relu = True
    assert bn.activation == "relu"
    assert float(np.min(bn(x))) == 0.0
    bn.relu = False
    assert bn.activation is None
    b6 = fastbn.BatchNorm(3, activation="relu6")
    b6.relu = False  # (it has no ReLU to remove)
    assert b6.activation == "relu6" and not b6.relu
