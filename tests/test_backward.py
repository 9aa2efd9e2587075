"""fastbn.batch_norm_backward: gradients against a float64 analytic
reference, float64 finite differences of the forward, PyTorch autograd
(when installed), bitwise equality over thread counts, out=, and errors.

Every layout of conftest.LAYOUTS, both dtypes and every option: gamma None
or given, fused ReLU (y given), residual, training=False (frozen
statistics).  The loss of the finite-difference checks is a random
projection ``L = sum(P * y)``, so ``dy = P``.
"""

import numpy as np
import pytest

import fastbn
import reference
from conftest import LAYOUTS
from helpers import (assert_bitwise_equal, assert_close, check_directional_derivatives,
                     fd_directional, make_params, make_x)

EPS = 1e-5


def forward(x, gamma, beta, axis, relu, z, training, rmean, rvar):
    """fastbn forward and what backward needs: (y, mean, invstd)."""
    if training:
        return fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=EPS,
                                       relu=relu, residual=z)
    y = fastbn.batch_norm_infer(x, rmean, rvar, gamma, beta, axis=axis, eps=EPS,
                                relu=relu, residual=z)
    invstd = (1.0 / np.sqrt(rvar.astype(np.float64) + EPS)).astype(x.dtype)
    return y, rmean, invstd


def problem(rng, shape, axis, dtype, use_gamma, residual):
    x = make_x(rng, shape, axis, dtype)
    C = x.shape[axis]
    gamma, beta, rmean, rvar = make_params(rng, C, dtype)
    z = rng.standard_normal(shape).astype(dtype) if residual else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, (gamma if use_gamma else None), beta, z, dy, rmean, rvar


OPTIONS = [(g, r, z, t) for g in (False, True) for r in (False, True)
           for z in (False, True) for t in (True, False)]
OPT_IDS = [f"{'g' if g else 'nog'}-{'relu' if r else 'lin'}-{'res' if z else 'nores'}"
           f"-{'train' if t else 'frozen'}" for g, r, z, t in OPTIONS]


# ------------------------------------------------ against the float64 oracle

@pytest.mark.parametrize("use_gamma,relu,residual,training", OPTIONS, ids=OPT_IDS)
def test_backward_matches_reference(layout, dtype, use_gamma, relu, residual,
                                    training, rng):
    shape, axis = layout
    x, gamma, beta, z, dy, rm, rv = problem(rng, shape, axis, dtype, use_gamma,
                                            residual)
    y, mean, invstd = forward(x, gamma, beta, axis, relu, z, training, rm, rv)
    res = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                     y=y if relu else None, training=training,
                                     residual=residual)
    assert len(res) == (4 if residual else 3)
    for a in res:
        assert a.dtype == np.dtype(dtype)
    dx, dgamma, dbeta = res[:3]
    assert dx.shape == x.shape and dx.flags.c_contiguous
    assert dgamma.shape == dbeta.shape == (x.shape[axis],)
    rdx, rdg, rdb, rdz = reference.batch_norm_backward(
        dy, x, mean, invstd, gamma, axis=axis, y=y if relu else None,
        training=training)
    assert_close(dx, rdx, dtype, factor=10)
    assert_close(dgamma, rdg, dtype, factor=10)
    assert_close(dbeta, rdb, dtype, factor=10)
    if residual:
        np.testing.assert_array_equal(res[3], rdz.astype(dtype))


@pytest.mark.parametrize("shape,axis", [((64, 3, 40, 40), 1), ((2048, 96), -1),
                                        ((16, 48, 24, 24), 1), ((30000, 1), 1),
                                        ((8, 20, 20, 3), -1), ((5, 1, 100, 100), 1)],
                         ids=["NCHW-3ch", "NC-wide", "NCHW-48ch", "NC-1ch-long",
                              "NHWC-3ch", "NCHW-1ch"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "frozen"])
def test_backward_reference_parallel_sizes(shape, axis, training, rng,
                                           restore_threads):
    """Sizes large enough for the chunked / row-block / parallel paths."""
    fastbn.set_num_threads(2)
    x, gamma, beta, z, dy, rm, rv = problem(rng, shape, axis, np.float32, True,
                                            True)
    y, mean, invstd = forward(x, gamma, beta, axis, True, z, training, rm, rv)
    dx, dg, db, dz = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                axis=axis, y=y, training=training,
                                                residual=True)
    rdx, rdg, rdb, rdz = reference.batch_norm_backward(
        dy, x, mean, invstd, gamma, axis=axis, y=y, training=training)
    assert_close(dx, rdx, np.float32, factor=10)
    n = x.size // x.shape[axis]
    # sums over n float32 products, accumulated in double in fastbn
    assert_close(dg, rdg, np.float32, factor=10, scale=max(1.0, np.sqrt(n) * 3))
    assert_close(db, rdb, np.float32, factor=10, scale=max(1.0, np.sqrt(n) * 3))
    np.testing.assert_array_equal(dz, rdz.astype(np.float32))


# ---------------------------------------------------- finite differences

@pytest.mark.parametrize("use_gamma,relu,residual,training", OPTIONS, ids=OPT_IDS)
def test_backward_finite_differences(layout, use_gamma, relu, residual, training,
                                     rng):
    """Directional derivatives of the float64 forward along random
    directions for x, gamma, beta and the residual."""
    shape, axis = layout
    x, gamma, beta, z, P, rm, rv = problem(rng, shape, axis, np.float64,
                                           use_gamma, residual)
    C = x.shape[axis]
    g_fd = gamma if use_gamma else np.ones(C)  # dgamma is the gradient at 1
    y, mean, invstd = forward(x, gamma, beta, axis, relu, z, training, rm, rv)
    res = fastbn.batch_norm_backward(P, x, mean, invstd, gamma, axis=axis,
                                     y=y if relu else None, training=training,
                                     residual=residual)
    dx, dgamma, dbeta = res[:3]

    def fy(xx=x, gg=g_fd, bb=beta, zz=z):
        return forward(xx, gg, bb, axis, relu, zz, training, rm, rv)[0]

    checks = [(lambda a: fy(xx=a), x, dx), (lambda a: fy(gg=a), g_fd, dgamma),
              (lambda a: fy(bb=a), beta, dbeta)]
    if residual:
        checks.append((lambda a: fy(zz=a), z, res[3]))
    check_directional_derivatives(checks, P, rng, directions=2)


@pytest.mark.parametrize("shape,axis", [((7, 5), 1), ((4, 3, 11), 1),
                                        ((3, 4, 5, 2), -1), ((9, 1), 1)],
                         ids=["NC", "NCL", "NHWC", "NC-1ch"])
@pytest.mark.parametrize("relu,residual,training",
                         [(False, False, True), (True, True, True),
                          (True, False, False), (False, True, False)],
                         ids=["train", "train-relu-res", "frozen-relu",
                              "frozen-res"])
def test_backward_elementwise_finite_differences(shape, axis, relu, residual,
                                                 training, rng):
    """Every entry of dx, dgamma and dbeta by central differences."""
    x, gamma, beta, z, P, rm, rv = problem(rng, shape, axis, np.float64, True,
                                           residual)
    y, mean, invstd = forward(x, gamma, beta, axis, relu, z, training, rm, rv)
    dx, dgamma, dbeta = fastbn.batch_norm_backward(
        P, x, mean, invstd, gamma, axis=axis, y=y if relu else None,
        training=training, residual=residual)[:3]

    def grad_fd(f, arg):
        out = np.empty(arg.shape)
        for i in np.ndindex(arg.shape):
            e = np.zeros(arg.shape)
            e[i] = 1.0
            out[i] = fd_directional(f, arg, e, P, h=1e-6)
        return out

    np.testing.assert_allclose(
        grad_fd(lambda a: forward(a, gamma, beta, axis, relu, z, training, rm,
                                  rv)[0], x), dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        grad_fd(lambda a: forward(x, a, beta, axis, relu, z, training, rm,
                                  rv)[0], gamma), dgamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        grad_fd(lambda a: forward(x, gamma, a, axis, relu, z, training, rm,
                                  rv)[0], beta), dbeta, rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------- PyTorch

def _torch_grads(torch, x, gamma, beta, z, P, axis, relu, training, rm, rv):
    """dx, dgamma, dbeta, dz by torch autograd in float64 (gamma None is
    gamma = 1, beta None is beta = 0 so that their gradients exist)."""
    F = torch.nn.functional
    C = x.shape[axis]
    ax = reference.normalize_axis(axis, x.ndim)

    def t(a, grad=False):
        return torch.tensor(np.moveaxis(np.asarray(a, np.float64), ax, 1).copy()
                            if a.ndim == x.ndim else np.asarray(a, np.float64),
                            requires_grad=grad)

    xt = t(x, True)
    gt = torch.tensor(np.ones(C) if gamma is None else gamma.astype(np.float64),
                      requires_grad=True)
    bt = torch.tensor(np.zeros(C) if beta is None else beta.astype(np.float64),
                      requires_grad=True)
    zt = t(z, True) if z is not None else None
    if training:
        yt = F.batch_norm(xt, None, None, gt, bt, training=True, eps=EPS)
    else:
        yt = F.batch_norm(xt, torch.tensor(rm.astype(np.float64)),
                          torch.tensor(rv.astype(np.float64)), gt, bt,
                          training=False, eps=EPS)
    if zt is not None:
        yt = yt + zt
    if relu:
        yt = torch.relu(yt)
    (yt * t(P)).sum().backward()

    def back(a):
        return np.moveaxis(a.detach().numpy(), 1, ax)

    return (back(xt.grad), gt.grad.numpy(), bt.grad.numpy(),
            back(zt.grad) if zt is not None else None)


TORCH_OPTIONS = [(True, False, False, True), (False, True, True, True),
                 (True, True, True, True), (True, True, True, False),
                 (False, False, False, False)]


@pytest.mark.parametrize("use_gamma,relu,residual,training", TORCH_OPTIONS,
                         ids=[OPT_IDS[OPTIONS.index(o)] for o in TORCH_OPTIONS])
def test_backward_matches_torch_autograd(torch1, layout, dtype, use_gamma, relu,
                                         residual, training, rng):
    torch = torch1
    shape, axis = layout
    x, gamma, beta, z, dy, rm, rv = problem(rng, shape, axis, dtype, use_gamma,
                                            residual)
    y, mean, invstd = forward(x, gamma, beta, axis, relu, z, training, rm, rv)
    res = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                     y=y if relu else None, training=training,
                                     residual=residual)
    tdx, tdg, tdb, tdz = _torch_grads(torch, x, gamma, beta, z, dy, axis, relu,
                                      training, rm, rv)
    f = 10 if dtype == np.float32 else 1e3
    assert_close(res[0], tdx, dtype, factor=f)
    assert_close(res[1], tdg, dtype, factor=f)
    assert_close(res[2], tdb, dtype, factor=f)
    if residual:
        assert_close(res[3], tdz, dtype, factor=f)


# ------------------------------------------------------------- threads

THREAD_SHAPES = [((16, 64, 32, 32), 1), ((4096, 256), -1), ((64, 3, 64, 64), 1),
                 ((1 << 18, 1), 1), ((32, 16, 16, 5), -1)]


@pytest.mark.parametrize("shape,axis", THREAD_SHAPES,
                         ids=["NCHW-64ch", "NC-256", "NCHW-3ch", "NC-1ch", "NHWC-5ch"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "frozen"])
def test_backward_bitwise_identical_over_threads(shape, axis, training, rng,
                                                 restore_threads):
    x, gamma, beta, z, dy, rm, rv = problem(rng, shape, axis, np.float32, True,
                                            True)
    y, mean, invstd = forward(x, gamma, beta, axis, True, z, training, rm, rv)
    results = []
    for n in (1, 2, 4):
        fastbn.set_num_threads(n)
        results.append(fastbn.batch_norm_backward(
            dy, x, mean, invstd, gamma, axis=axis, y=y, training=training,
            residual=True))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_bitwise_equal(a, b)
    # and the same again (run to run)
    fastbn.set_num_threads(2)
    again = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis, y=y,
                                       training=training, residual=True)
    for a, b in zip(results[0], again):
        assert_bitwise_equal(a, b)


def test_backward_float64_bitwise_over_threads(rng, restore_threads):
    x, gamma, beta, z, dy, rm, rv = problem(rng, (8, 3, 64, 64), 1, np.float64,
                                            False, False)
    y, mean, invstd = forward(x, gamma, beta, 1, False, None, True, rm, rv)
    out = []
    for n in (1, 2, 4):
        fastbn.set_num_threads(n)
        out.append(fastbn.batch_norm_backward(dy, x, mean, invstd, gamma))
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert_bitwise_equal(a, b)


# ----------------------------------------------------- out=, inputs, dtypes

def _args(rng, shape=(4, 3, 5), axis=1, dtype=np.float32):
    x, gamma, beta, z, dy, rm, rv = problem(rng, shape, axis, dtype, True, False)
    y, mean, invstd = fastbn.batch_norm_train(x, gamma, beta, axis=axis, relu=True)
    return dy, x, mean, invstd, gamma, y


@pytest.mark.parametrize("residual", [False, True])
def test_backward_out(rng, dtype, residual):
    dy, x, mean, invstd, gamma, y = _args(rng, dtype=dtype)
    expect = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, y=y,
                                        residual=residual)
    out = np.full_like(x, np.nan)
    res = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, y=y, out=out,
                                     residual=residual)
    assert res[0] is out
    for a, b in zip(expect, res):
        assert_bitwise_equal(a, b)


def test_backward_out_in_place_of_dy(rng):
    dy, x, mean, invstd, gamma, y = _args(rng, shape=(6, 4, 7, 3))
    expect = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, y=y)
    buf = dy.copy()
    res = fastbn.batch_norm_backward(buf, x, mean, invstd, gamma, y=y, out=buf)
    assert res[0] is buf
    assert_bitwise_equal(buf, expect[0])
    assert_bitwise_equal(res[1], expect[1])


def test_backward_leaves_inputs_unchanged_and_accepts_views(rng):
    dy, x, mean, invstd, gamma, y = _args(rng, shape=(5, 3, 4, 6))
    copies = [a.copy() for a in (dy, x, mean, invstd, gamma, y)]
    expect = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, y=y)
    for a, c in zip((dy, x, mean, invstd, gamma, y), copies):
        assert_bitwise_equal(a, c)
    # Fortran-ordered, read-only and strided inputs give the same numbers
    dyf = np.asfortranarray(dy)
    xr = x.copy()
    xr.flags.writeable = False
    ys = np.repeat(y, 2, axis=0)[::2]
    got = fastbn.batch_norm_backward(dyf, xr, mean, invstd, gamma, y=ys)
    for a, b in zip(expect, got):
        assert_bitwise_equal(a, b)


def test_backward_casts_dy_and_per_channel_to_x_dtype(rng):
    dy, x, mean, invstd, gamma, y = _args(rng)
    a = fastbn.batch_norm_backward(dy.astype(np.float64), x, mean.astype(np.float64),
                                   invstd, list(gamma), y=y)
    b = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, y=y)
    for u, v in zip(a, b):
        assert u.dtype == np.float32
        assert_bitwise_equal(u, v)


def test_backward_gamma_none_is_gamma_one(rng, dtype):
    dy, x, mean, invstd, gamma, y = _args(rng, dtype=dtype)
    a = fastbn.batch_norm_backward(dy, x, mean, invstd, None, y=y)
    b = fastbn.batch_norm_backward(dy, x, mean, invstd, np.ones_like(gamma), y=y)
    for u, v in zip(a, b):
        assert_bitwise_equal(u, v)


def test_backward_nan_stays_in_its_channel(rng):
    dy, x, mean, invstd, gamma, y = _args(rng, shape=(6, 4, 5))
    y = np.abs(y) + 1  # no mask: NaN in dy must reach dx of its channel
    dy[2, 1, 3] = np.nan
    dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, invstd, gamma, y=y)
    assert np.isnan(dx[:, 1]).all() and np.isnan(dg[1]) and np.isnan(db[1])
    others = [0, 2, 3]
    assert np.isfinite(dx[:, others]).all() and np.isfinite(dg[others]).all()


def test_backward_frozen_empty_batch(dtype):
    x = np.empty((0, 3), dtype)
    dx, dg, db = fastbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3),
                                            training=False)
    assert dx.shape == (0, 3)
    np.testing.assert_array_equal(dg, 0)
    np.testing.assert_array_equal(db, 0)


# ---------------------------------------------------------------- errors

def _ok(rng):
    dy, x, mean, invstd, gamma, y = _args(rng)
    return dict(dy=dy, x=x, mean=mean, invstd=invstd, gamma=gamma, y=y)


def _call(a, **kw):
    a = dict(a)
    return fastbn.batch_norm_backward(a.pop("dy"), a.pop("x"), a.pop("mean"),
                                      a.pop("invstd"), a.pop("gamma"), **a, **kw)


@pytest.mark.parametrize("name,value,exc,words", [
    ("dy", np.zeros((4, 3, 6), np.float32), ValueError, ["dy", "(4, 3, 5)"]),
    ("dy", np.zeros((4, 3), np.float32), ValueError, ["dy", "shape"]),
    ("dy", [[0.0]], TypeError, ["dy", "ndarray"]),
    ("y", np.zeros((4, 3, 4), np.float32), ValueError, ["y", "(4, 3, 5)"]),
    ("mean", np.zeros(4, np.float32), ValueError, ["mean", "(3,)"]),
    ("mean", None, TypeError, ["mean"]),
    ("invstd", np.zeros((3, 1), np.float32), ValueError, ["invstd", "(3,)"]),
    ("invstd", None, TypeError, ["invstd"]),
    ("gamma", np.ones(2, np.float32), ValueError, ["gamma", "(3,)"]),
    ("x", np.zeros((4, 3, 5), np.int32), TypeError, ["x", "float32"]),
    ("x", np.zeros(5, np.float32), ValueError, ["x", "2 dimensions"]),
], ids=["dy-shape", "dy-ndim", "dy-type", "y-shape", "mean-shape", "mean-none",
        "invstd-shape", "invstd-none", "gamma-shape", "x-dtype", "x-1d"])
def test_backward_error_messages(rng, name, value, exc, words):
    a = _ok(rng)
    a[name] = value
    with pytest.raises(exc) as info:
        _call(a)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("out,exc,words", [
    (np.zeros((4, 3, 4), np.float32), ValueError, ["out", "(4, 3, 5)"]),
    (np.zeros((4, 3, 5), np.float64), TypeError, ["out", "float32"]),
    (np.zeros((5, 3, 4), np.float32).transpose(2, 1, 0), ValueError,
     ["out", "C-contiguous"]),
    ([0.0], TypeError, ["out", "ndarray"]),
], ids=["shape", "dtype", "layout", "type"])
def test_backward_out_mismatch(rng, out, exc, words):
    a = _ok(rng)
    with pytest.raises(exc) as info:
        _call(a, out=out)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_backward_out_read_only_and_overlap(rng):
    a = _ok(rng)
    ro = np.zeros_like(a["x"])
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _call(a, out=ro)
    big = np.zeros((5, 3, 5), np.float32)
    a["dy"] = big[:4]
    with pytest.raises(ValueError, match="overlaps"):
        _call(a, out=big[1:])


def test_backward_axis_and_count_errors(rng):
    a = _ok(rng)
    with pytest.raises(ValueError, match="axis"):
        _call(a, axis=3)
    x = np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        fastbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3))
    # frozen statistics need no batch statistics: one value is fine
    dx, _, _ = fastbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3),
                                          training=False)
    np.testing.assert_array_equal(dx, 1)

