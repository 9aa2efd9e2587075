"""The backward's activation mask recomputed from x (``beta=``, no ``y``).

Without the forward's output, the backward rebuilds the forward's
per-channel constants from the statistics it returned, gamma and beta, and
runs the forward's own arithmetic on x: the gradients must be bitwise those
of the call given ``y``, for every dtype, layout, activation, thread count,
instruction set, plan and ghost batch, on data made to sit on the mask's
edges (normalised values that are exactly 0 or a few ulps off it, values
that round to 0 or to 6 in the half types, NaN and infinities).  The
training forward can hand out the low part of its double batch mean
(``_api._train(..., want_lo=True)``, what the layer keeps): the backward
given it (``_api._backward(..., mean_lo=)``) skips the second pass over x
for the mean and must give the same bits again.
"""
import numpy as np
import pytest

import fastbn
from fastbn import _kernels
from conftest import ALL_DTYPES
from helpers import assert_bitwise_equal, assert_close, stat_dtype
import reference

AVAILABLE = _kernels.simd_available()
# channel-first planes (short and long runs, fused and two-phase), 2-D,
# channel-last rows of few (folded), some and many (long rows) channels
SHAPES = [((6, 5, 7, 9), 1), ((4, 3, 40, 50), 1), ((64, 12), 1),
          ((6, 5, 7, 19), -1), ((4, 2, 3, 70), -1), ((8, 1100), 1),
          ((2, 3, 5, 600), -1)]


def _channels(a, axis):
    """A view of ``a`` with the channel axis first, as (C, values)."""
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


# the ulp of 1 by (itemsize, name)
_EPS = {(2, "float16"): 2.0 ** -10, (2, "bfloat16"): 2.0 ** -7, (4, "float32"): 2.0 ** -23,
        (8, "float64"): 2.0 ** -52}


def edge_case(rng, shape, axis, dtype, act):
    """``(x, gamma, beta)`` whose normalised values sit on the mask's edges.

    Channel c holds a value ``v`` many times and a few values some ulps
    away, so that its mean is not representable and the forward's ``x - mean``
    of the values ``v`` is the small remainder of the mean (its sign and size
    decide the mask); its beta is 0, or minus the affine of such a value
    (normalised result about 0), tiny (rounds to 0 in float16), or just
    below 6 (rounds to 6 in the half types).  Other channels are ordinary
    data; one holds a NaN and one an infinity."""
    C = shape[axis]
    sdt = stat_dtype(dtype)
    wide = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    x = np.moveaxis(rng.standard_normal(shape), axis, 0).copy()  # (C, ...)
    xc = x.reshape(C, -1)
    n = xc.shape[1]
    beta = rng.standard_normal(C)
    gamma = rng.uniform(0.5, 2.0, C) * np.where(np.arange(C) % 3 == 2, -1, 1)
    base = [1.0, 3.0, -2.5, 0.3, 100.0, 6.0]
    for c in range(C):
        kind = c % 6
        if kind == 5 and c >= 6:
            continue  # ordinary data
        v = np.asarray(base[c % len(base)], dtype)
        ulp = _EPS[np.dtype(dtype).itemsize, str(np.dtype(dtype))] * 2.0 ** np.floor(
            np.log2(abs(float(v))))
        vals = np.full(n, v, np.float64)
        k = max(1, n // 7)
        vals[:k] = (v.astype(np.float64) + ulp * rng.integers(1, 4, k)).astype(dtype)
        vals[k:2 * k] = (v.astype(np.float64) - ulp * rng.integers(1, 3, k)).astype(dtype)
        rng.shuffle(vals)
        xc[c] = vals
        beta[c] = [0.0, 1e-9, -1e-9, 5.999, 2.0 ** -26, 0.0][kind]
        if kind == 4:
            gamma[c] = 1e-6  # the normalised remainder underflows the halves
    if C > 3:
        xc[C - 1, n // 2] = np.nan
        xc[C - 2, n // 3] = np.inf
    x = np.ascontiguousarray(np.moveaxis(x, 0, axis)).astype(wide).astype(dtype)
    if act == "relu6":
        beta = beta + np.where(np.arange(C) % 2 == 0, 5.99, 0.0)
    return x, gamma.astype(sdt), beta.astype(sdt)


def _pair(dy, x, mean, invstd, g, b, y, axis, act, training, vb):
    """The gradients with y and with the mask from x."""
    kw = dict(axis=axis, activation=act, training=training, virtual_batch_size=vb)
    with_y = fastbn.batch_norm_backward(dy, x, mean, invstd, g, y=y, **kw)
    from_x = fastbn.batch_norm_backward(dy, x, mean, invstd, g, beta=b, **kw)
    return with_y, from_x


def _train_lo(x, g, b, axis, act, vb, rn=None):
    """The training forward through ``_api._train(want_lo=True)``:
    ``(y, mean, invstd, mean_lo)`` (and ``r``, ``d`` with ``rn``)."""
    res = fastbn._api._train(x, g, b, axis, 1e-5, False, None, None, None, False, vb,
                             rn, act, True)
    return res[:3] + res[5:]


def _from_lo(dy, x, mean, invstd, g, b, axis, act, training, vb, lo, r=None, d=None):
    """The gradients with the mask from x and the forward's mean_lo."""
    return fastbn._api._backward(dy, x, mean, invstd, g, axis, None, training, False,
                                 None, None, vb, r, d, act, b, lo)


def _forward(x, g, b, axis, act, training, vb, rng):
    """(y, mean, invstd): a training forward, or an inference forward with
    running statistics (invstd as the layer makes it)."""
    C = x.shape[axis]
    sdt = stat_dtype(x.dtype)
    if training:
        return fastbn.batch_norm_train(x, g, b, axis=axis, activation=act,
                                       virtual_batch_size=vb)
    xs = _channels(x.astype(np.float64), axis)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(xs), xs, np.nan), axis=1).astype(sdt)
    mean[::2] = _channels(x, axis)[::2, 0]  # values exactly at the mean
    var = rng.uniform(0.3, 3.0, C).astype(sdt)
    y = fastbn.batch_norm_infer(x, mean, var, g, b, axis=axis, activation=act)
    invstd = (1.0 / np.sqrt(var.astype(np.float64) + 1e-5)).astype(sdt)
    return y, mean, invstd


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=str)
@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_mask_from_x_is_bitwise_the_mask_from_y(shape, axis, act, dtype, rng,
                                                restore_threads):
    dy_wide = np.float64 if dtype == np.float64 else np.float32
    for training in (True, False):
        for vb in ((None, 2) if training else (None,)):
            x, g, b = edge_case(rng, shape, axis, dtype, act)
            dy = rng.standard_normal(shape).astype(dy_wide).astype(dtype)
            y, mean, invstd = _forward(x, g, b, axis, act, training, vb, rng)
            if training:
                y2, mean2, invstd2, lo = _train_lo(x, g, b, axis, act, vb)
                for p, q in ((y, y2), (mean, mean2), (invstd, invstd2)):
                    assert_bitwise_equal(p, q)
                assert lo.shape == mean.shape and lo.dtype == mean.dtype
            else:  # (ignored: the inference forward's mean is mean itself)
                lo = np.full(mean.shape, 0.25, mean.dtype)
            for nth in (1, 2, 4):
                with fastbn.num_threads(nth):
                    with_y, from_x = _pair(dy, x, mean, invstd, g, b, y, axis, act,
                                           training, vb)
                    from_lo = _from_lo(dy, x, mean, invstd, g, b, axis, act, training,
                                       vb, lo)
                for a, c, e in zip(with_y, from_x, from_lo):
                    assert_bitwise_equal(a, c)
                    assert_bitwise_equal(a, e)


@pytest.mark.slow
@pytest.mark.parametrize("isa", AVAILABLE)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_mask_from_x_at_every_simd_level(isa, dtype, simd, rng):
    """Each instruction set gives the mask from y's bits, and the baseline's."""
    want = {}
    for shape, axis in SHAPES:
        for act in ("relu", "relu6"):
            x, g, b = edge_case(rng, shape, axis, dtype, act)
            dy = rng.standard_normal(shape).astype(np.float32).astype(dtype)
            y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, activation=act)
            lo = _train_lo(x, g, b, axis, act, None)[3]
            simd("baseline")
            base = _pair(dy, x, mean, invstd, g, b, y, axis, act, True, None)[0]
            simd(isa)
            with_y, from_x = _pair(dy, x, mean, invstd, g, b, y, axis, act, True, None)
            from_lo = _from_lo(dy, x, mean, invstd, g, b, axis, act, True, None, lo)
            for a, c, e, w in zip(with_y, from_x, from_lo, base):
                assert_bitwise_equal(a, c)
                assert_bitwise_equal(a, e)
                # (the sign of a NaN may differ between instruction sets)
                nan = np.isnan(c.astype(np.float64))
                assert np.array_equal(nan, np.isnan(w.astype(np.float64)))
                assert_bitwise_equal(np.where(nan, 0, c).astype(c.dtype),
                                     np.where(nan, 0, w).astype(w.dtype))
            want[shape, act] = True
    assert len(want) == 2 * len(SHAPES)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis", [((8, 4, 6, 7), 1), ((5, 6, 4, 9), -1)],
                         ids=str)
def test_mask_from_x_matches_the_float64_reference(shape, axis, dtype, rng):
    """On ordinary data (no value on the mask's edge), the gradients of the
    mask from x are the reference's with the forward's y."""
    sdt = stat_dtype(dtype)
    wide = np.float64 if dtype == np.float64 else np.float32
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(wide).astype(dtype)
    C = shape[axis]
    g = rng.uniform(0.5, 2, C).astype(sdt)
    b = rng.standard_normal(C).astype(sdt)
    dy = rng.standard_normal(shape).astype(wide).astype(dtype)
    for act in ("relu", "relu6"):
        y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, activation=act)
        dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis,
                                                beta=b, activation=act)
        rdx, rdg, rdb, _ = reference.batch_norm_backward(
            dy.astype(np.float64), x.astype(np.float64), mean.astype(np.float64),
            invstd.astype(np.float64), g.astype(np.float64), axis=axis,
            y=y.astype(np.float64), activation=act)
        if np.dtype(dtype).itemsize == 2:
            tol = 2e-2  # the half types: dx rounded to 8 or 11 bits
            scale = max(1.0, float(np.abs(rdx).max()))
            assert np.abs(dx.astype(np.float64) - rdx).max() <= tol * scale
            assert np.allclose(dg, rdg, rtol=1e-4, atol=1e-3 * np.abs(rdg).max())
            assert np.allclose(db, rdb, rtol=1e-4, atol=1e-3 * np.abs(rdb).max())
        else:
            assert_close(dx, rdx, dtype)
            assert_close(dg, rdg, dtype, scale=max(1.0, float(np.abs(rdg).max())))
            assert_close(db, rdb, dtype, scale=max(1.0, float(np.abs(rdb).max())))


def test_renormalised_layer_and_ghost_batches_keep_no_y(rng):
    """The layer keeps x but not y when the activation has no residual, and
    its gradients are those of the y-path, with batch renormalization and
    ghost batches too; with a residual it keeps y."""
    x = rng.standard_normal((8, 4, 5, 5)).astype(np.float32) + 1
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for kw in ({}, {"virtual_batch_size": 4}, {"renorm": True},
               {"center": False}, {"scale": False}):
        for act in ("relu", "relu6"):
            bn = fastbn.BatchNorm(4, activation=act, **kw)
            if bn.beta is not None:
                bn.beta[...] = rng.standard_normal(4)
            bn.running_var[...] = 2.0  # renorm: r and d away from 1 and 0
            y = bn(x)
            assert bn._cache[1] is None  # y is not kept
            dx = bn.backward(dy)
            x_, _, mean, invstd, _, _, _, k, r, d, beta, lo = bn._cache
            assert lo is not None and lo.shape == mean.shape  # the forward's ml
            want = fastbn._api._backward(dy, x, mean, invstd, bn.gamma, 1, y, True,
                                         False, None, None, k, r, d, act)
            assert_bitwise_equal(dx, want[0])
            if bn.gamma is not None:
                assert_bitwise_equal(bn.dgamma, want[1])
            if bn.beta is not None:
                assert_bitwise_equal(bn.dbeta, want[2])
            bn.eval()
            y = bn(x)
            assert bn._cache[1] is None
            dx = bn.backward(dy)
            x_, _, mean, invstd, frozen, _, _, k, r, d, beta, lo = bn._cache
            assert lo is None  # (an inference forward's mean is exact)
            want = fastbn._api._backward(dy, x, mean, invstd, bn.gamma, 1, y, False,
                                         False, None, None, None, None, None, act)
            assert frozen
            assert_bitwise_equal(dx, want[0])
    bn = fastbn.BatchNorm(4, activation="relu")
    y = bn(x, residual=x)
    assert bn._cache[1] is y and bn._cache[-1] is None
    dx, dz = bn.backward(dy)
    assert_bitwise_equal(dz, np.where(y > 0, dy, 0).astype(np.float32))


def test_mask_from_x_errors():
    x = np.ones((4, 3), np.float32)
    x[0] = 0
    m, s = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"activation='relu' needs the forward's "
                                        r"output y= or its beta=.*pass the "
                                        r"forward's beta, or zeros if it had none"):
        fastbn.batch_norm_backward(x, x, m, s, activation="relu")
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\)"):
        fastbn.batch_norm_backward(x, x, m, s, activation="relu", beta=np.zeros(4))
    with pytest.raises(TypeError, match="beta"):
        fastbn.batch_norm_backward(x, x, m, s, activation="relu", beta="zero")
    with pytest.raises(ValueError, match=r"residual=True needs the forward's output "
                                         r"y="):
        fastbn.batch_norm_backward(x, x, m, s, activation="relu6", residual=True,
                                   beta=np.zeros(3))
    # with y given, beta is not needed (and not used)
    y = fastbn.batch_norm_train(x, relu=True)[0]
    a = fastbn.batch_norm_backward(x, x, m, s, y=y, activation="relu")
    b = fastbn.batch_norm_backward(x, x, m, s, y=y, activation="relu",
                                   beta=np.full(3, 7.0))
    for p, q in zip(a, b):
        assert_bitwise_equal(p, q)
    # without an activation beta changes nothing either
    a = fastbn.batch_norm_backward(x, x, m, s)
    b = fastbn.batch_norm_backward(x, x, m, s, beta=np.ones(3))
    for p, q in zip(a, b):
        assert_bitwise_equal(p, q)


def test_mask_from_x_depends_on_beta(rng):
    """A wrong beta gives another mask (the argument is really used)."""
    x = rng.standard_normal((16, 3, 5)).astype(np.float32)
    dy = np.ones_like(x)
    b = np.array([0.0, 0.5, -0.5], np.float32)
    y, mean, invstd = fastbn.batch_norm_train(x, None, b, relu=True)
    right = fastbn.batch_norm_backward(dy, x, mean, invstd, activation="relu", beta=b)
    wrong = fastbn.batch_norm_backward(dy, x, mean, invstd, activation="relu",
                                       beta=np.zeros(3, np.float32))
    assert_bitwise_equal(right[2], np.sum(y > 0, axis=(0, 2)).astype(np.float32))
    assert not np.array_equal(right[2], wrong[2])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_mean_lo_is_the_low_part_of_the_batch_mean(dtype, rng):
    """mean_lo is the double batch mean's part below mean's precision: 0 for
    float64; for the others at most half an ulp of mean, and mean + mean_lo
    nearer the float64 mean than mean alone (summed over channels)."""
    shape = (64, 6, 33)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32).astype(dtype)
    y, mean, invstd, lo = _train_lo(x, None, None, 1, "relu", None)
    if np.dtype(dtype) == np.float64:
        assert not lo.any()
        return
    exact = x.astype(np.float64).mean(axis=(0, 2))
    m = mean.astype(np.float64)
    assert np.all(np.abs(lo.astype(np.float64)) <= np.spacing(np.abs(mean)) / 2)
    assert lo.any()
    assert np.abs(m + lo - exact).sum() < np.abs(m - exact).sum()


def test_mask_from_x_uses_mean_lo(rng):
    """A wrong mean_lo gives another mask on data whose normalised values sit
    on the mask's edge (the argument is really read), the right one the
    y-path's."""
    x, g, b = edge_case(rng, (24, 6, 40), 1, np.float32, "relu")
    dy = np.ones_like(x)
    y, mean, invstd, lo = _train_lo(x, g, b, 1, "relu", None)
    with_y = fastbn.batch_norm_backward(dy, x, mean, invstd, g, y=y, activation="relu")
    right = _from_lo(dy, x, mean, invstd, g, b, 1, "relu", True, None, lo)
    wrong = _from_lo(dy, x, mean, invstd, g, b, 1, "relu", True, None, -lo)
    assert lo.any()
    assert_bitwise_equal(right[2], with_y[2])
    assert not np.array_equal(right[2], wrong[2])
    with pytest.raises(ValueError, match=r"mean_lo must have shape \(6,\)"):
        _from_lo(dy, x, mean, invstd, g, b, 1, "relu", True, None, lo[:5])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis", [((8, 5, 7, 9), 1), ((8, 3, 5, 70), -1)],
                         ids=str)
def test_mean_lo_with_renorm_and_ghost_batches(shape, axis, dtype, rng):
    """A renormalised forward over ghost batches hands out one mean_lo per
    group; the backward given them has the y-path's bits."""
    x, g, b = edge_case(rng, shape, axis, dtype, "relu")
    C = shape[axis]
    dy = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    rn = (rng.standard_normal(C) * 0.1, rng.uniform(0.8, 1.5, C), 1.5, 0.5)
    for vb in (None, 2, 4):
        y, mean, invstd, r, d, lo = _train_lo(x, g, b, axis, "relu", vb, rn)
        assert lo.shape == mean.shape
        with_y = fastbn._api._backward(dy, x, mean, invstd, g, axis, y, True, False,
                                       None, None, vb, r, d, "relu")
        for nth in (1, 2, 4):
            with fastbn.num_threads(nth):
                got = _from_lo(dy, x, mean, invstd, g, b, axis, "relu", True, vb, lo,
                               r, d)
            for a, c in zip(with_y, got):
                assert_bitwise_equal(a, c)
