"""Ghost (virtual) batches and batch renormalization (docs/contract.md, "Ghost
(virtual) batches" and "Batch renormalization").

Oracles: the float64 reference (fastbn._reference), in which every ghost
batch is an independent batch norm and which holds the renormalization
formula of Ioffe 2017, finite differences of the float64 forward with r
and d held constant, identities (k = N is
ordinary batch norm bit for bit; each group equals an ordinary call on its
slice bit for bit; unclipped renormalization is normalisation with the
running statistics; rmax = 1, dmax = 0 is ordinary batch norm), and
tf-keras 2's ``BatchNormalization(virtual_batch_size=k)`` where installed.
"""
import math

import numpy as np
import pytest

import fastbn
import reference
from conftest import ALL_DTYPES, HALVES
from fastbn import _kernels
from helpers import (assert_bitwise_equal, assert_close, check_directional_derivatives,
                     make_params, make_x, stat_dtype)

EPS = 1e-5

# (id, shape, axis, k): every layout of conftest.LAYOUTS but axis 0, with a
# batch that k divides into several groups (k = 1: one sample per group)
GHOST_LAYOUTS = [
    ("NC", (12, 5), 1, 4),
    ("NC-wide", (12, 37), 1, 3),
    ("NC-1ch", (12, 1), 1, 6),
    ("NCL", (6, 3, 11), 1, 2),
    ("NCHW", (6, 5, 4, 6), 1, 3),
    ("NCHW-k1", (6, 5, 4, 6), 1, 1),
    ("NCHW-odd", (4, 7, 5, 3), 1, 2),
    ("NCHW-1ch", (6, 1, 5, 7), 1, 2),
    ("NCHW-1x1", (12, 4, 1, 1), 1, 4),
    ("NCDHW", (4, 3, 3, 4, 5), 1, 2),
    ("NHWC", (6, 4, 6, 5), -1, 2),
    ("NHWC-3ch", (4, 5, 7, 3), -1, 2),
    ("NHWC-1ch", (8, 3, 3, 1), -1, 4),
    ("NHWC-1x1", (16, 1, 1, 6), -1, 4),
    ("axis2-4d", (6, 4, 5, 6), 2, 3),
    ("axis-2-4d", (4, 3, 5, 4), -2, 2),
]

# larger shapes that take every strategy of the kernels (fused and
# two-phase channel-first tiles, channel-last row blocks with folded rows
# and rows left over, one channel), with k
STRATEGY_CASES = [
    ((12, 37, 5, 9), 1, 4),      # channel-first, short runs
    ((64, 3, 33, 17), 1, 16),    # few channels, several chunks per group
    ((9, 70, 7, 7), 1, 3),       # more channels than a tile holds
    ((3, 5, 3001), 1, 1),        # runs cross chunk boundaries
    ((700, 45), 1, 100),         # channel-last: 16 rows folded, 4 left over
    ((10, 9, 11, 40), -1, 5),    # NHWC
    ((300, 70), 1, 60),          # channel-last, not folded
    ((16, 20, 20, 3), -1, 4),    # NHWC, 3 channels
    ((6, 1, 2000), 1, 2),        # one channel
    ((9000, 1), 1, 3000),        # one channel, (N, 1)
]

OPTIONS = [  # (gamma, beta, relu, residual)
    (False, False, False, False),
    (True, True, False, False),
    (True, True, True, False),
    (True, False, True, True),
    (False, True, False, True),
]
OPT_IDS = ["plain", "affine", "affine-relu", "scale-relu-res", "shift-res"]


# --------------------------------------------------- the float64 reference

def ref_ghost(x, gamma, beta, axis, k, relu=False, residual=None, eps=EPS):
    """(y, mean (G, C), invstd (G, C)) of the float64 ghost forward."""
    return reference.batch_norm_train(x, gamma, beta, axis=axis, eps=eps, relu=relu,
                                      residual=residual, virtual_batch_size=k)


def ref_renorm(x, gamma, beta, axis, rm, rv, rmax=math.inf, dmax=math.inf, k=None,
               relu=False, residual=None, eps=EPS, rd=None):
    """(y, r (G, C), d (G, C)) of the float64 renormalised forward."""
    return reference.batch_renorm_train(x, gamma, beta, rm, rv, axis=axis, eps=eps,
                                        rmax=rmax, dmax=dmax, relu=relu,
                                        residual=residual, virtual_batch_size=k,
                                        rd=rd)


def _problem(rng, shape, axis, dtype, use_gamma=True, use_beta=True, residual=False):
    """x (and residual) of dtype; per-channel arrays of its stat_dtype."""
    C = shape[axis]
    x = make_x(rng, shape, axis, dtype)
    gamma, beta, rm, rv = make_params(rng, C, stat_dtype(dtype))
    z = make_x(rng, shape, axis, dtype) if residual else None
    return (x, gamma if use_gamma else None, beta if use_beta else None, z, rm, rv)


# ------------------------------------------------------- ghost: the functions

@pytest.mark.parametrize("use_gamma,use_beta,relu,residual", OPTIONS, ids=OPT_IDS)
@pytest.mark.parametrize("lid,shape,axis,k", GHOST_LAYOUTS,
                         ids=[c[0] for c in GHOST_LAYOUTS])
def test_ghost_forward_matches_reference(lid, shape, axis, k, use_gamma, use_beta,
                                         relu, residual, dtype, rng):
    x, g, b, z, _, _ = _problem(rng, shape, axis, dtype, use_gamma, use_beta,
                                residual)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=relu,
                                              residual=z, virtual_batch_size=k)
    ry, rmean, rinv = ref_ghost(x, g, b, axis, k, relu, z)
    G, C = shape[0] // k, shape[axis]
    assert y.dtype == dtype and mean.dtype == dtype and invstd.dtype == dtype
    assert mean.shape == (G, C) and invstd.shape == (G, C)
    assert_close(y, ry, dtype)
    assert_close(mean, rmean, dtype)
    assert_close(invstd, rinv, dtype, scale=float(np.max(rinv)))
    if G > 1:  # not ordinary batch norm: the groups' statistics differ
        assert not np.allclose(mean, mean[0])


@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)],
                         ids=["plain", "relu", "relu-res"])
@pytest.mark.parametrize("lid,shape,axis,k", GHOST_LAYOUTS,
                         ids=[c[0] for c in GHOST_LAYOUTS])
def test_ghost_backward_matches_reference(lid, shape, axis, k, relu, residual, dtype,
                                          rng):
    x, g, b, z, _, _ = _problem(rng, shape, axis, dtype, residual=residual)
    dy = rng.standard_normal(shape).astype(dtype)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=relu,
                                              residual=z, virtual_batch_size=k)
    res = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis,
                                     y=y if relu else None, residual=residual,
                                     virtual_batch_size=k)
    rdx, rdg, rdb, _ = reference.batch_norm_backward(
        dy, x, mean, invstd, g, axis=axis, y=y if relu else None,
        virtual_batch_size=k)
    assert_close(res[0], rdx, dtype, factor=10)
    assert_close(res[1], rdg, dtype, factor=10)
    assert_close(res[2], rdb, dtype, factor=10)
    if residual:
        mask = (y > 0) if relu else np.ones(shape, bool)
        assert_bitwise_equal(res[3], np.where(mask, dy, 0).astype(dtype))


def test_ghost_backward_finite_differences(rng):
    """Directional derivatives of the float64 ghost forward (statistics
    recomputed for every perturbation) in x, gamma and beta."""
    shape, axis, k = (6, 3, 4, 5), 1, 2
    x, g, b, _, _, _ = _problem(rng, shape, axis, np.float64)
    P = rng.standard_normal(shape)

    def f(xx=x, gg=g, bb=b):
        return fastbn.batch_norm_train(xx, gg, bb, axis=axis, relu=True,
                                       virtual_batch_size=k)[0]

    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                              virtual_batch_size=k)
    dx, dg, db = fastbn.batch_norm_backward(P, x, mean, invstd, g, axis=axis, y=y,
                                            virtual_batch_size=k)
    check_directional_derivatives([(lambda a: f(xx=a), x, dx),
                                   (lambda a: f(gg=a), g, dg),
                                   (lambda a: f(bb=a), b, db)], P, rng)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis", [((8, 5), 1), ((4, 6, 7, 9), 1),
                                        ((4, 6, 7, 9), -1), ((6, 3, 3001), 1),
                                        ((700, 45), 1)], ids=str)
def test_k_equals_n_is_ordinary_batch_norm_bitwise(shape, axis, dtype, rng):
    sdt = stat_dtype(dtype)
    x, g, b, z, _, _ = _problem(rng, shape, axis, dtype, residual=True)
    dy = rng.standard_normal(shape).astype(dtype)
    N = shape[0]
    y0, m0, s0 = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z)
    y1, m1, s1 = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z,
                                         virtual_batch_size=N)
    assert y1.dtype == dtype and m1.dtype == sdt and s1.dtype == sdt
    assert m1.shape == (1, shape[axis])
    assert_bitwise_equal(y0, y1)
    assert_bitwise_equal(m0, m1[0])
    assert_bitwise_equal(s0, s1[0])
    r0 = fastbn.batch_norm_backward(dy, x, m0, s0, g, axis=axis, y=y0, residual=True)
    r1 = fastbn.batch_norm_backward(dy, x, m1, s1, g, axis=axis, y=y1, residual=True,
                                    virtual_batch_size=N)
    assert r1[0].dtype == dtype and r1[1].dtype == sdt
    for a, c in zip(r0, r1):
        assert_bitwise_equal(a, c)
    # (C,) statistics are accepted for a single group too
    r2 = fastbn.batch_norm_backward(dy, x, m0, s0, g, axis=axis, y=y0,
                                    virtual_batch_size=N)
    for a, c in zip(r0, r2):
        assert_bitwise_equal(a, c)


def _slices_result(x, g, b, z, dy, axis, k, training=True):
    """Ghost forward and backward, and the same from ordinary calls on each
    group's slice."""
    y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z,
                                      virtual_batch_size=k)
    dx, dg, db, dz = fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                                residual=True, training=training,
                                                virtual_batch_size=k)
    return y, m, s, dx, dg, db, dz


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis,k", STRATEGY_CASES, ids=str)
def test_each_group_is_an_ordinary_call_on_its_slice_bitwise(shape, axis, k, dtype):
    """The ghost kernels give every group the numbers of an ordinary call on
    its slice, bit for bit (forward, dx); dgamma and dbeta are the sums."""
    rng = np.random.default_rng(3)
    sdt = stat_dtype(dtype)
    x, g, b, z, _, _ = _problem(rng, shape, axis, dtype, residual=True)
    dy = rng.standard_normal(shape).astype(dtype)
    y, m, s, dx, dg, db, dz = _slices_result(x, g, b, z, dy, axis, k)
    assert y.dtype == dtype and dx.dtype == dtype and dz.dtype == dtype
    assert m.dtype == sdt and dg.dtype == sdt
    dgs, dbs = [], []
    for i in range(shape[0] // k):
        sl = slice(i * k, (i + 1) * k)
        yi, mi, si = fastbn.batch_norm_train(x[sl], g, b, axis=axis, relu=True,
                                             residual=z[sl])
        assert_bitwise_equal(y[sl], yi)
        assert_bitwise_equal(m[i], mi)
        assert_bitwise_equal(s[i], si)
        dxi, dgi, dbi = fastbn.batch_norm_backward(dy[sl], x[sl], mi, si, g,
                                                   axis=axis, y=yi)
        assert_bitwise_equal(dx[sl], dxi)
        dgs.append(dgi)
        dbs.append(dbi)
    assert_close(dg, np.sum(np.array(dgs, np.float64), axis=0), sdt, factor=10)
    assert_close(db, np.sum(np.array(dbs, np.float64), axis=0), sdt, factor=10)


@pytest.mark.parametrize("shape,axis,k", STRATEGY_CASES, ids=str)
def test_ghost_same_bits_for_every_plan_and_thread_count(shape, axis, k, tuning,
                                                         restore_threads):
    rng = np.random.default_rng(4)
    x, g, b, z, rm, rv = _problem(rng, shape, axis, np.float32, residual=True)
    dy = rng.standard_normal(shape).astype(np.float32)
    with fastbn.num_threads(1):
        ref = _slices_result(x, g, b, z, dy, axis, k)
        bn = fastbn.BatchNorm(shape[axis], axis=axis, virtual_batch_size=k,
                              renorm=True, renorm_clipping={"rmax": 1.5, "dmax": 0.5})
        bn.running_mean[...] = rm
        bn.running_var[...] = rv
        ref_rn = (bn(x), bn.backward(dy))
    for settings in (dict(), dict(fuse=1 << 50), dict(fuse=1 << 50, nt=0),
                     dict(fuse=0, tile=1), dict(fuse=0, nt=0)):
        tuning(serial=0, wake=0, **settings)
        for threads in (1, 2, 4):
            with fastbn.num_threads(threads):
                got = _slices_result(x, g, b, z, dy, axis, k)
                bn.running_mean[...] = rm
                bn.running_var[...] = rv
                got_rn = (bn(x), bn.backward(dy))
            for a, c in zip(ref + ref_rn, got + got_rn):
                assert_bitwise_equal(a, c)


@pytest.mark.parametrize("isa", _kernels.simd_available())
def test_ghost_same_bits_on_every_simd_level(isa, tuning):
    old = _kernels.simd()
    try:
        for shape, axis, k in [((12, 37, 5, 9), 1, 4), ((700, 45), 1, 100),
                               ((16, 20, 20, 3), -1, 4)]:
            rng = np.random.default_rng(5)
            x, g, b, z, _, _ = _problem(rng, shape, axis, np.float32, residual=True)
            dy = rng.standard_normal(shape).astype(np.float32)
            _kernels.set_simd("baseline")
            with fastbn.num_threads(1):
                ref = _slices_result(x, g, b, z, dy, axis, k)
            _kernels.set_simd(isa)
            tuning(serial=0, wake=0)
            with fastbn.num_threads(2):
                got = _slices_result(x, g, b, z, dy, axis, k)
            for a, c in zip(ref, got):
                assert_bitwise_equal(a, c)
    finally:
        _kernels.set_simd(old)


def test_many_small_groups_share_one_parallel_job():
    """TabNet-like (16384, 64) in groups of 128 rows: each group alone is
    too small for a second thread, the ghost call as a whole uses both."""
    if _kernels.scheduler() == "serial":
        pytest.skip("a build without OpenMP has one thread")
    alone = _kernels.plan("train", 128, 64, 1, 4, 2)
    ghost = _kernels.plan("train", 128, 64, 1, 4, 2, groups=128)
    assert alone["threads"] == 1 and ghost["threads"] == 2
    ghost = _kernels.plan("backward_relu", 32, 64, 784, 4, 2, groups=8)
    assert ghost["threads"] == 2 and ghost["strategy"] == "fused tiles"


def test_ghost_in_place_out_and_frozen_backward(rng, dtype):
    shape, axis, k = (8, 3, 5), 1, 2
    x, g, b, _, _, _ = _problem(rng, shape, axis, dtype)
    y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, virtual_batch_size=k)
    xi = x.copy()
    out = fastbn.batch_norm_train(xi, g, b, axis=axis, out=xi, virtual_batch_size=k)
    assert out[0] is xi
    assert_bitwise_equal(xi, y)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dg, db = fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, training=False,
                                            virtual_batch_size=k)
    rdx, rdg, rdb, _ = reference.batch_norm_backward(dy, x, m, s, g, axis=axis,
                                                     training=False,
                                                     virtual_batch_size=k)
    assert_close(dx, rdx, dtype)
    assert_close(dg, rdg, dtype, factor=10)
    assert_close(db, rdb, dtype, factor=10)


def test_ghost_nan_stays_in_its_group_and_channel(rng):
    x, g, b, _, _, _ = _problem(rng, (8, 3, 6), 1, np.float32)
    y0 = fastbn.batch_norm_train(x, g, b, virtual_batch_size=2)[0]
    x[5, 1, 2] = np.nan
    y1 = fastbn.batch_norm_train(x, g, b, virtual_batch_size=2)[0]
    assert np.all(np.isnan(y1[4:6, 1]))
    keep = np.ones(y0.shape, bool)
    keep[4:6, 1] = False
    assert_bitwise_equal(y1[keep], y0[keep])


# -------------------------------------------------------------- ghost: layer

@pytest.mark.parametrize("lid,shape,axis,k", [c for c in GHOST_LAYOUTS
                                              if c[0] in ("NC", "NCHW", "NHWC")],
                         ids=["NC", "NCHW", "NHWC"])
def test_layer_ghost_running_stats_and_backward(lid, shape, axis, k, dtype, rng):
    C = shape[axis]
    bn = fastbn.BatchNorm(C, axis=axis, dtype=dtype, relu=True, momentum=0.25,
                          virtual_batch_size=k)
    x = make_x(rng, shape, axis, dtype)
    y = bn(x)
    ry, rmean, rinv = ref_ghost(x, bn.gamma, bn.beta, axis, k, relu=True)
    assert_close(y, ry, dtype)
    G = shape[0] // k
    n = x.size // C // G
    gvar = 1.0 / rinv ** 2 - EPS
    assert_close(bn.running_mean, 0.25 * rmean.mean(axis=0), dtype)
    assert_close(bn.running_var, 0.75 + 0.25 * (gvar * n / (n - 1)).mean(axis=0), dtype)
    assert bn.num_batches_tracked == 1
    dy = rng.standard_normal(shape).astype(dtype)
    dx = bn.backward(dy)
    _, m, s = fastbn.batch_norm_train(x, bn.gamma, bn.beta, axis=axis, relu=True,
                                      virtual_batch_size=k)
    want = fastbn.batch_norm_backward(dy, x, m, s, bn.gamma, axis=axis, y=y,
                                      virtual_batch_size=k)
    assert_bitwise_equal(dx, want[0])
    assert_bitwise_equal(bn.dgamma, want[1])
    assert_bitwise_equal(bn.dbeta, want[2])
    # eval: the running statistics, as without ghost batches
    bn.eval()
    ye = bn(x)
    assert_bitwise_equal(ye, fastbn.batch_norm_infer(
        x, bn.running_mean, bn.running_var, bn.gamma, bn.beta, axis=axis, relu=True))
    assert "virtual_batch_size=" in repr(bn)


def test_layer_ghost_k_equals_n_is_the_ordinary_layer(rng):
    x = make_x(rng, (8, 4, 5, 5), 1, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    a = fastbn.BatchNorm(4, relu=True)
    b = fastbn.BatchNorm(4, relu=True, virtual_batch_size=8)
    for _ in range(3):
        assert_bitwise_equal(a(x), b(x))
        assert_bitwise_equal(a.backward(dy), b.backward(dy))
        assert_bitwise_equal(a.dgamma, b.dgamma)
    assert_bitwise_equal(a.running_mean, b.running_mean)
    assert_bitwise_equal(a.running_var, b.running_var)


def test_layer_ghost_without_running_stats_uses_groups_in_eval(rng):
    x = make_x(rng, (6, 3, 4), 1, np.float64)
    bn = fastbn.BatchNorm(3, track_running_stats=False, virtual_batch_size=3,
                          dtype=np.float64).eval()
    assert_close(bn(x), ref_ghost(x, bn.gamma, bn.beta, 1, 3)[0], np.float64)
    dy = rng.standard_normal(x.shape)
    dx = bn.backward(dy)
    y, m, s = fastbn.batch_norm_train(x, bn.gamma, bn.beta, virtual_batch_size=3)
    assert_bitwise_equal(dx, fastbn.batch_norm_backward(dy, x, m, s, bn.gamma,
                                                        virtual_batch_size=3)[0])


# ---------------------------------------------------------- renormalization

def _renorm_layer(C, axis, dtype, rm, rv, clipping=None, **kw):
    bn = fastbn.BatchNorm(C, axis=axis, dtype=dtype, renorm=True,
                          renorm_clipping=clipping, **kw)
    bn.gamma[...] = np.linspace(0.5, 1.5, C)
    bn.beta[...] = np.linspace(-1, 1, C)
    bn.running_mean[...] = rm
    bn.running_var[...] = rv
    return bn


CLIPS = [None, {"rmax": 1.2, "dmax": 0.3}, {"rmax": 3.0}, {"dmax": 0.0}]


@pytest.mark.parametrize("clipping", CLIPS, ids=["none", "both", "rmax", "dmax0"])
@pytest.mark.parametrize("lid,shape,axis,k", [c for c in GHOST_LAYOUTS
                                              if c[0] in ("NC", "NCHW", "NHWC",
                                                          "NCHW-1ch", "axis2-4d")],
                         ids=["NC", "NCHW", "NCHW-1ch", "NHWC", "axis2-4d"])
def test_renorm_forward_matches_formula(lid, shape, axis, k, clipping, dtype, rng):
    C = shape[axis]
    x = make_x(rng, shape, axis, dtype)
    rm = rng.standard_normal(C)
    rv = rng.uniform(0.2, 4.0, C)
    for vbs in (None, k):
        bn = _renorm_layer(C, axis, dtype, rm, rv, clipping, relu=True,
                           virtual_batch_size=vbs)
        z = make_x(rng, shape, axis, dtype)
        y = bn(x, residual=z)
        c = clipping or {}
        ry, r, d = ref_renorm(x, bn.gamma, bn.beta, axis, rm, rv,
                              c.get("rmax", math.inf), c.get("dmax", math.inf),
                              k=vbs, relu=True, residual=z)
        assert_close(y, ry, dtype, factor=3)
        if clipping == CLIPS[1] and C > 1:  # both clippings are active here
            assert np.any(np.abs(d) == 0.3)
            assert np.any((r == 1.2) | (r == 1 / 1.2))
        if clipping == CLIPS[3]:
            assert np.all(d == 0)
        # the running statistics are updated from the batch statistics as
        # without renormalization
        plain = fastbn.BatchNorm(C, axis=axis, dtype=dtype, virtual_batch_size=vbs)
        plain.running_mean[...] = rm
        plain.running_var[...] = rv
        plain(x)
        assert_bitwise_equal(bn.running_mean, plain.running_mean)
        assert_bitwise_equal(bn.running_var, plain.running_var)


def test_renorm_unclipped_is_normalisation_with_running_stats(rng, dtype):
    """r = sigma_B/sigma, d = (mu_B - mu)/sigma: y = gamma*(x - mu)/sigma + beta
    with the running statistics before the update."""
    shape = (16, 5, 6, 6)
    x = make_x(rng, shape, 1, dtype)
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    bn = _renorm_layer(5, 1, dtype, rm, rv)
    want = fastbn.batch_norm_infer(x.astype(np.float64), rm, rv, bn.gamma, bn.beta)
    assert_close(bn(x), want, dtype, factor=3)
    assert not np.allclose(bn.running_mean, rm)  # updated after use


def test_renorm_with_rmax_1_dmax_0_is_ordinary_batch_norm(rng, dtype):
    """r = 1, d = 0: the forward and the whole gradient are batch norm's."""
    shape = (8, 5, 7, 3)
    x = make_x(rng, shape, -1, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    bn = _renorm_layer(3, -1, dtype, rm, rv, {"rmax": 1, "dmax": 0}, relu=True)
    plain = fastbn.BatchNorm(3, axis=-1, dtype=dtype, relu=True)
    plain.gamma[...] = bn.gamma
    plain.beta[...] = bn.beta
    assert_bitwise_equal(bn(x), plain(x))
    assert_bitwise_equal(bn.backward(dy), plain.backward(dy))
    assert_close(bn.dgamma, plain.dgamma, dtype)
    assert_close(bn.dbeta, plain.dbeta, dtype)


@pytest.mark.parametrize("clipping", CLIPS[:2], ids=["none", "both"])
@pytest.mark.parametrize("shape,axis,k", [((8, 4), 1, None), ((6, 3, 4, 5), 1, 2),
                                          ((4, 3, 5, 4), -1, None)], ids=str)
def test_renorm_backward_finite_differences(shape, axis, k, clipping, rng):
    """The layer's gradients against central differences of the float64
    renormalised forward with r and d held at the values of the call."""
    C = shape[axis]
    x = make_x(rng, shape, axis, np.float64)
    z = make_x(rng, shape, axis, np.float64)
    rm, rv = rng.standard_normal(C), rng.uniform(0.2, 4.0, C)
    bn = _renorm_layer(C, axis, np.float64, rm, rv, clipping, relu=True,
                       virtual_batch_size=k)
    y = bn(x, residual=z)
    P = rng.standard_normal(shape)
    dx, dz = bn.backward(P)
    c = clipping or {}
    rmax, dmax = c.get("rmax", math.inf), c.get("dmax", math.inf)
    _, r, d = ref_renorm(x, bn.gamma, bn.beta, axis, rm, rv, rmax, dmax, k=k)
    g, b = bn.gamma.copy(), bn.beta.copy()

    def f(xx=x, gg=g, bb=b, zz=z):
        return ref_renorm(xx, gg, bb, axis, rm, rv, k=k, relu=True, residual=zz,
                          rd=(r, d))[0]

    assert_close(y, f(), np.float64, factor=100)
    check_directional_derivatives([(lambda a: f(xx=a), x, dx),
                                   (lambda a: f(gg=a), g, bn.dgamma),
                                   (lambda a: f(bb=a), b, bn.dbeta),
                                   (lambda a: f(zz=a), z, dz)], P, rng)


def test_renorm_float32_gradients_match_float64(rng):
    shape, axis = (6, 4, 5, 5), 1
    x = make_x(rng, shape, axis, np.float64)
    dy = rng.standard_normal(shape)
    rm, rv = rng.standard_normal(4), rng.uniform(0.2, 4.0, 4)
    res = []
    for dt in (np.float64, np.float32):
        bn = _renorm_layer(4, axis, dt, rm, rv, {"rmax": 1.3, "dmax": 0.4},
                           virtual_batch_size=3)
        bn(x.astype(dt))
        res.append((bn.backward(dy.astype(dt)), bn.dgamma, bn.dbeta))
    for a, b in zip(res[1], res[0]):
        assert_close(a, b, np.float32, factor=10)


def test_renorm_eval_is_unchanged(rng):
    x = make_x(rng, (8, 3, 4), 1, np.float32)
    bn = fastbn.BatchNorm(3, renorm=True, renorm_clipping={"rmax": 2, "dmax": 1})
    plain = fastbn.BatchNorm(3)
    bn(x)
    plain(x)
    bn.eval()
    plain.eval()
    assert_bitwise_equal(bn(x), plain(x))
    dy = np.ones_like(x)
    assert_bitwise_equal(bn.backward(dy), plain.backward(dy))
    assert "renorm=True" in repr(bn)


# -------------------------------------------------------------------- errors

def test_ghost_errors(rng):
    x = make_x(rng, (6, 3, 4), 1, np.float32)
    with pytest.raises(ValueError, match=r"virtual_batch_size=4 must divide the "
                                         r"batch size.*6 samples"):
        fastbn.batch_norm_train(x, virtual_batch_size=4)
    with pytest.raises(ValueError, match="virtual_batch_size must be >= 1"):
        fastbn.batch_norm_train(x, virtual_batch_size=0)
    with pytest.raises(ValueError, match="virtual_batch_size must be >= 1"):
        fastbn.BatchNorm(3, virtual_batch_size=-2)
    for bad in (2.0, "2", True):
        with pytest.raises(TypeError, match="virtual_batch_size must be a positive"):
            fastbn.batch_norm_train(x, virtual_batch_size=bad)
    with pytest.raises(ValueError, match="channel axis must not be 0"):
        fastbn.batch_norm_train(x, axis=0, virtual_batch_size=3)
    with pytest.raises(ValueError, match="channel axis must not be 0"):
        fastbn.batch_norm_train(x, axis=-3, virtual_batch_size=3)
    with pytest.raises(ValueError, match="channel axis must not be 0"):
        fastbn.BatchNorm(6, axis=0, virtual_batch_size=3)
    with pytest.raises(ValueError, match="channel axis must not be 0"):
        fastbn.BatchNorm(6, axis=-3, virtual_batch_size=3)(x)
    with pytest.raises(ValueError, match="cannot be combined with comm"):
        fastbn.batch_norm_train(x, virtual_batch_size=3, comm=object())
    y, m, s = fastbn.batch_norm_train(x, virtual_batch_size=3)
    with pytest.raises(ValueError, match="cannot be combined with comm"):
        fastbn.batch_norm_backward(x, x, m, s, virtual_batch_size=3, comm=object())
    with pytest.raises(ValueError, match="cannot be combined with comm"):
        fastbn.BatchNorm(3, virtual_batch_size=3, comm=object())
    with pytest.raises(ValueError, match=r"mean must have shape \(3, 3\)"):
        fastbn.batch_norm_backward(x, x, m, s, virtual_batch_size=2)
    with pytest.raises(ValueError, match=r"invstd must have shape \(2, 3\)"):
        fastbn.batch_norm_backward(x, x, m, s[0], virtual_batch_size=3)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        fastbn.batch_norm_train(np.ones((6, 3), np.float32), virtual_batch_size=1)
    bn = fastbn.BatchNorm(3, virtual_batch_size=4)
    with pytest.raises(ValueError, match="must divide"):
        bn(x)
    assert bn.num_batches_tracked == 0 and bn._cache is None  # state unchanged


def test_renorm_errors():
    with pytest.raises(ValueError, match="renorm=True needs running statistics"):
        fastbn.BatchNorm(3, renorm=True, track_running_stats=False)
    with pytest.raises(ValueError, match=r"renorm_clipping\['rmax'\] must be >= 1"):
        fastbn.BatchNorm(3, renorm=True, renorm_clipping={"rmax": 0.5})
    with pytest.raises(ValueError, match=r"renorm_clipping\['rmax'\] must be >= 1"):
        fastbn.BatchNorm(3, renorm=True, renorm_clipping={"rmax": float("nan")})
    with pytest.raises(ValueError, match=r"renorm_clipping\['dmax'\] must be >= 0"):
        fastbn.BatchNorm(3, renorm=True, renorm_clipping={"dmax": -0.1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rmin'\]"):
        fastbn.BatchNorm(3, renorm=True, renorm_clipping={"rmin": 0.5, "rmax": 2})
    with pytest.raises(TypeError, match="renorm_clipping must be a dict"):
        fastbn.BatchNorm(3, renorm=True, renorm_clipping=(3, 5))
    with pytest.raises(TypeError, match=r"renorm_clipping\['dmax'\] must be a number"):
        fastbn.BatchNorm(3, renorm=True, renorm_clipping={"dmax": "big"})
    with pytest.raises(ValueError, match="not supported together with comm"):
        fastbn.BatchNorm(3, renorm=True, comm=object())
    bn = fastbn.BatchNorm(3, renorm=True, renorm_clipping={"rmax": 3, "dmax": 5})
    assert bn.renorm_clipping == {"rmax": 3.0, "dmax": 5.0}
    with pytest.raises(ValueError, match=r"renorm_clipping\['rmax'\] must be >= 1"):
        bn.renorm_clipping = {"rmax": 0}
    assert bn.renorm_clipping == {"rmax": 3.0, "dmax": 5.0}  # unchanged


def test_renorm_clipping_may_change_between_steps(rng):
    """Ioffe's schedule: start as batch norm (rmax=1, dmax=0), relax."""
    x = make_x(rng, (8, 3, 5), 1, np.float64)
    rm, rv = rng.standard_normal(3), rng.uniform(0.2, 4.0, 3)
    bn = _renorm_layer(3, 1, np.float64, rm, rv, {"rmax": 1, "dmax": 0})
    y0 = bn(x)
    assert_close(y0, reference.batch_norm_train(x, bn.gamma, bn.beta)[0], np.float64)
    bn.running_mean[...] = rm
    bn.running_var[...] = rv
    bn.renorm_clipping = None
    assert bn.renorm_clipping is None
    assert_close(bn(x), reference.batch_norm_infer(x, rm, rv, bn.gamma, bn.beta),
                 np.float64)


# ------------------------------------------------------- tf-keras 2 (oracle)

@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.parametrize("shape,k", [((32, 6), 8), ((16, 5, 5, 4), 4)], ids=str)
def test_forward_matches_tf_keras_virtual_batch_size(shape, k):
    """tf-keras 2's BatchNormalization(virtual_batch_size=k) in training
    mode.  Keras's ghost batch j holds samples j, j+G, j+2G, ... (its
    reshape to (k, G, ...)); fastbn's holds consecutive samples, so the
    batch is reordered for Keras and its output reordered back."""
    tf_keras = pytest.importorskip("tf_keras")
    rng = np.random.default_rng(9)
    x = make_x(rng, shape, -1, np.float32)
    C, N = shape[-1], shape[0]
    G = N // k
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    eps = 1e-3
    layer = tf_keras.layers.BatchNormalization(axis=-1, epsilon=eps,
                                               virtual_batch_size=k)
    layer.build(shape)
    ws = [gamma, beta, np.zeros(C, np.float32), np.ones(C, np.float32)]
    # (with virtual batches Keras keeps its weights in a broadcastable shape)
    layer.set_weights([w.reshape(tuple(v.shape)) for w, v in zip(ws, layer.weights)])
    # fastbn group g, sample i (x[g*k + i]) goes to Keras position i*G + g
    order = np.arange(N).reshape(G, k).T.reshape(-1)
    yk = layer(x[order], training=True).numpy()
    y = np.empty_like(yk)
    y[order] = yk
    ours = fastbn.batch_norm_train(x, gamma, beta, axis=-1, eps=eps,
                                   virtual_batch_size=k)[0]
    assert_close(ours, y, np.float32, factor=10)
    # and the reorder matters: on the batch as it is, Keras's groups differ
    assert not np.allclose(ours, layer(x, training=True).numpy(), atol=1e-3)


@pytest.mark.slow
@pytest.mark.mpi
def test_comm_with_virtual_batch_size_raises_on_every_rank():
    """With a real communicator: the ranks that pass both raise ValueError,
    the others RuntimeError naming them; nobody hangs."""
    from test_mpi import TESTS_DIR, need_mpi4py, run_mpi
    need_mpi4py()
    rc, out = run_mpi(2, TESTS_DIR / "mpi_ghost_worker.py")
    assert rc == 0, out
    assert "mpi_ghost_worker: 2 ranks ok" in out, out


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_against_reference(seed, tuning, restore_threads):
    """Random shapes, channel axes, group sizes, options, plans and thread
    counts: the forward against the float64 reference, the backward's dx
    against each group's reference gradient."""
    rng = np.random.default_rng(100 + seed)
    ndim = int(rng.integers(2, 5))
    shape = [int(v) for v in rng.integers(1, 9, ndim)]
    k = int(rng.integers(1, 5))
    shape[0] = k * int(rng.integers(1, 6))
    if k * int(np.prod(shape[1:])) // shape[1] < 2:
        shape[-1] += 2  # at least 2 values per channel in a group (axis 1)
    shape = tuple(shape)
    axis = int(rng.integers(1, ndim)) - (ndim if rng.random() < 0.5 else 0)
    C = shape[axis]
    if k * int(np.prod(shape)) // shape[0] // C < 2:
        pytest.skip("fewer than 2 values per channel in a group")
    dtype = np.float64 if rng.random() < 0.5 else np.float32
    relu, use_z = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    tuning(serial=0, wake=0, fuse=[None, 0, 1 << 50][seed % 3])
    x, g, b, z, _, _ = _problem(rng, shape, axis, dtype, residual=use_z)
    dy = rng.standard_normal(shape).astype(dtype)
    with fastbn.num_threads(1 + seed % 3):
        y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, relu=relu, residual=z,
                                          virtual_batch_size=k)
        dx = fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis,
                                        y=y if relu else None,
                                        virtual_batch_size=k)[0]
    ry, rm, rs = ref_ghost(x, g, b, axis, k, relu, z)
    assert_close(y, ry, dtype)
    assert_close(m, rm, dtype)
    rdx = reference.batch_norm_backward(dy, x, m, s, g, axis=axis,
                                        y=y if relu else None,
                                        virtual_batch_size=k)[0]
    assert_close(dx, rdx, dtype, factor=10)


# ---- half precision: float16 and bfloat16 data in the ghost and renorm
# kernels (float32 per-channel arrays, as the ordinary half calls; see
# test_half.py).  The identities above run for every dtype.

@pytest.mark.parametrize("hdt", HALVES)
@pytest.mark.parametrize("lid,shape,axis,k", [c for c in GHOST_LAYOUTS
                                              if c[0] in ("NC", "NCHW", "NHWC")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_half_ghost_and_renorm_layer_is_the_float32_layer_to_an_ulp(
        lid, shape, axis, k, hdt, rng):
    """A float32 layer with ghost batches and renormalization on half x: the
    half statistics are summed in float (test_half.py), so y and dx are
    within 1 ulp of the same layer's on x widened to float32 (2 for dx),
    and running statistics and gradients within float32 accuracy."""
    from test_half import EPSILON, M2_RTOL, _max_ulps
    C = shape[axis]
    x = make_x(rng, shape, axis, hdt)
    dy = rng.standard_normal(shape).astype(hdt)
    rm = rng.standard_normal(C)
    rv = rng.uniform(0.5, 2.0, C)
    layers = [_renorm_layer(C, axis, np.float32, rm, rv, {"rmax": 1.5, "dmax": 0.5},
                            virtual_batch_size=k) for _ in range(2)]
    y = layers[0](x)
    yf = layers[1](x.astype(np.float32))
    assert y.dtype == hdt

    def same_or_close(a, b, ulps=1):
        if a.dtype == hdt:
            assert _max_ulps(a, b, hdt, 2.0 ** -8) <= ulps
            np.testing.assert_allclose(a.astype(np.float32), b, rtol=EPSILON[hdt],
                                       atol=ulps * EPSILON[hdt] * 2.0 ** -8)
        else:
            n = x.size // C
            np.testing.assert_allclose(a, b, rtol=8 * M2_RTOL,
                                       atol=1e-5 * np.sqrt(n) * np.abs(b).max())
    same_or_close(y, yf)
    same_or_close(layers[0].running_mean, layers[1].running_mean)
    same_or_close(layers[0].running_var, layers[1].running_var)
    dx = layers[0].backward(dy)
    dxf = layers[1].backward(dy.astype(np.float32))
    assert dx.dtype == hdt
    same_or_close(dx, dxf, 2)
    assert layers[0].dgamma.dtype == np.float32
    same_or_close(layers[0].dgamma, layers[1].dgamma)
    same_or_close(layers[0].dbeta, layers[1].dbeta)
