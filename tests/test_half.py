"""Half precision: float16 and bfloat16 data, float32 statistics (docs/contract.md,
"Half precision").

The half kernels load each value exactly as float32 and round each output
once.  The transform and the backward compute what the float32 kernels
compute (same operations, same order), so there the check is exact: every
result on half data equals the float32 path's result on the widened data,
rounded once to the half type.  The batch statistics are summed in float
(half_impl.h: the corrected two-pass algorithm), not in double as for
float32 data: they match the float32 path's to float32 accuracy within the
bound stated there, and channels whose float sums leave their range are
summed in double (then exactly as the float32 path).  Half
results are also held to the float64 reference in ulps of the half type,
to PyTorch's half batch norm where it is installed, across thread counts
and instruction sets, and every error path is checked.
"""
import numpy as np
import pytest

import fastbn
import reference
from conftest import BF16, HALVES, LAYOUTS
from fastbn import _kernels
from helpers import assert_bitwise_equal, make_inputs, make_x

F16 = np.dtype(np.float16)
EPS = 1e-5
#: the half types' machine epsilon (2^-10, 2^-7)
EPSILON = {F16: 2.0 ** -10}
if BF16 is not None:
    EPSILON[BF16] = 2.0 ** -7


def half(a, dt):
    """a (any float array) rounded once to the half dtype dt."""
    return np.asarray(a, np.float32).astype(dt)


def f32(a):
    return np.asarray(a).astype(np.float32)


def ubits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint16).astype(np.int64)


def ulps(a, b):
    """Distance in units in the last place of the half type of a and b
    (arrays of one half dtype; NaN where either is NaN)."""
    def ordered(v):
        u = ubits(v)
        return np.where(u & 0x8000, 0x8000 - u, u)  # monotone in the value
    d = np.abs(ordered(a) - ordered(b)).astype(np.float64)
    nan = np.isnan(a.astype(np.float32)) | np.isnan(b.astype(np.float32))
    return np.where(nan, np.nan, d)


def same_half(a, b):
    """Bitwise equal half arrays (NaN at the same places count as equal)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype)
    na, nb = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(np.where(na, 0, ubits(a)), np.where(nb, 0, ubits(b)))


# ------------------------------------------- the float32 path, rounded once

#: bounds of the half types' float-summed statistics (half_impl.h): M2 within
#: 129 float roundings (7.7e-6), the mean within as many of the standard
#: deviation, each then rounded to float32
M2_RTOL = 129 * 2.0 ** -24 + 2.0 ** -24
MEAN_STD_TOL = 129 * 2.0 ** -24


def assert_stats_close(mean, invstd, meanf, invf):
    """The half call's mean and invstd against the float32 path's."""
    std = 1 / invf.astype(np.float64)
    err = np.abs(mean.astype(np.float64) - meanf)
    assert np.all(err <= MEAN_STD_TOL * std + 2.0 ** -23 * np.abs(meanf)), err.max()
    np.testing.assert_allclose(invstd, invf, rtol=M2_RTOL / 2 + 2.0 ** -23)


#: LAYOUTS and the shapes of the half kernels' own loops: channel-last rows
#: of 16-channel strips with a tail (AVX-512 registers), rows longer than
#: an L1 tile (1024 channels: slices), channel-first runs long enough for
#: whole output lines straight from registers
HALF_LAYOUTS = LAYOUTS + [
    ("NHWC-strips", (3, 2, 5, 40), -1),
    ("NC-long-rows", (9, 2100), 1),
    ("NHWC-long-rows", (2, 3, 1, 1030), -1),
    ("NCL-long-runs", (2, 3, 3001), 1),
]


@pytest.mark.parametrize("dt", HALVES)
@pytest.mark.parametrize("name,shape,axis", HALF_LAYOUTS,
                         ids=[lay[0] for lay in HALF_LAYOUTS])
def test_every_function_is_the_float32_path_rounded_once(name, shape, axis, dt, rng):
    x, z, dy, g, b, m, v = make_inputs(rng, shape, axis, dt)
    xf, zf, dyf = f32(x), f32(z), f32(dy)
    n = int(np.prod(shape)) // shape[axis]
    # the statistics are summed in float: close to the float32 path's
    # training forward
    if n >= 2:
        y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                                  residual=z)
        yf, meanf, invf = fastbn.batch_norm_train(xf, g, b, axis=axis, relu=True,
                                                  residual=zf)
        assert y.dtype == dt and mean.dtype == np.float32 and invstd.dtype == np.float32
        assert_stats_close(mean, invstd, meanf, invf)
        # outputs: within 1 ulp of the float32 path's, rounded (below 2^-8
        # the output is a cancellation: float32 roundings of its terms, far
        # below a half ulp of the inputs' scale)
        assert _max_ulps(y, yf, dt, 2.0 ** -8) <= 1
        np.testing.assert_allclose(f32(y), yf, rtol=EPSILON[dt], atol=EPSILON[dt] * 2.0 ** -8)
        y2 = fastbn.batch_norm_train(x, axis=axis)[0]
        y2f = fastbn.batch_norm_train(xf, axis=axis)[0]
        assert _max_ulps(y2, y2f, dt, 2.0 ** -8) <= 1
        # backward (given the half call's statistics: exact): relu mask,
        # residual gradient, gamma; then without
        dx, dg, db, dz = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis,
                                                    y=y, residual=True)
        # the float32 path sees the same mask: y > 0 exactly where yf rounds > 0
        dxf, dgf, dbf, dzf = fastbn.batch_norm_backward(
            dyf, xf, mean, invstd, g, axis=axis, y=f32(y), residual=True)
        assert dx.dtype == dt and dz.dtype == dt and dg.dtype == np.float32
        same_half(dx, half(dxf, dt))
        same_half(dz, half(dzf, dt))
        assert_bitwise_equal(dg, dgf)
        assert_bitwise_equal(db, dbf)
        dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, invstd, axis=axis)
        dxf, dgf, dbf = fastbn.batch_norm_backward(dyf, xf, mean, invstd, axis=axis)
        same_half(dx, half(dxf, dt))
        assert_bitwise_equal(dg, dgf)
    # frozen backward, inference: exact
    inv = (1 / np.sqrt(v.astype(np.float64) + EPS)).astype(np.float32)
    dx, dg, db = fastbn.batch_norm_backward(dy, x, m, inv, g, axis=axis,
                                            training=False)
    dxf, dgf, dbf = fastbn.batch_norm_backward(dyf, xf, m, inv, g, axis=axis,
                                               training=False)
    same_half(dx, half(dxf, dt))
    assert_bitwise_equal(dg, dgf)
    yi = fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, relu=True, residual=z)
    yif = fastbn.batch_norm_infer(xf, m, v, g, b, axis=axis, relu=True, residual=zf)
    assert yi.dtype == dt
    same_half(yi, half(yif, dt))
    # statistics
    smean, svar = fastbn.batch_stats(x, axis=axis)
    assert smean.dtype == np.float32 and svar.dtype == np.float32
    fmean, fvar = fastbn.batch_stats(xf, axis=axis)
    cnt, mm, m2 = fastbn.moments(x, axis=axis)
    cntf, mmf, m2f = fastbn.moments(xf, axis=axis)
    assert cnt == cntf and mm.dtype == np.float64
    np.testing.assert_allclose(svar, fvar, rtol=M2_RTOL + 2.0 ** -23)
    np.testing.assert_allclose(m2, m2f, rtol=M2_RTOL)
    std = np.sqrt(m2f / cnt)
    assert np.all(np.abs(mm - mmf) <= MEAN_STD_TOL * std + 2.0 ** -40 * np.abs(mmf))
    assert np.all(np.abs(smean.astype(np.float64) - fmean)
                  <= MEAN_STD_TOL * std + 2.0 ** -23 * np.abs(fmean))


@pytest.mark.parametrize("dt", HALVES)
def test_out_and_in_place(dt, rng):
    x, z, dy, g, b, m, v = make_inputs(rng, (4, 6, 5, 7), 1, dt)
    want = fastbn.batch_norm_train(x, g, b, relu=True)[0]
    out = np.empty_like(x)
    assert fastbn.batch_norm_train(x, g, b, relu=True, out=out)[0] is out
    same_half(out, want)
    xi = x.copy()
    fastbn.batch_norm_train(xi, g, b, relu=True, out=xi)
    same_half(xi, want)
    yi = fastbn.batch_norm_infer(x, m, v, out=np.empty_like(x))
    same_half(yi, fastbn.batch_norm_infer(x, m, v))
    # mixed inputs: dy and residual are cast to x's dtype, per-channel
    # arrays of any float dtype (bfloat16 too) to float32
    same_half(fastbn.batch_norm_train(x, g.astype(dt), b.astype(np.float64),
                                      residual=f32(z))[0],
              fastbn.batch_norm_train(x, g.astype(dt).astype(np.float32), b,
                                      residual=z)[0])


# ------------------------------------- the float64 reference, in half ulps

def _max_ulps(got, ref64, dt, floor):
    """Largest ulp distance between got and the float64 reference rounded
    to dt, where |ref| >= floor (below it the output is the small
    difference of large terms, whose float32 rounding is of the terms'
    size: there the error is checked in absolute terms)."""
    r = half(ref64, dt)
    big = np.abs(ref64) >= floor
    d = ulps(got, r)
    return float(np.max(np.where(big, d, 0), initial=0))


@pytest.mark.parametrize("dt", HALVES)
@pytest.mark.parametrize("shape,axis", [((16, 8, 12, 12), 1), ((2, 12, 12, 24), -1),
                                        ((3, 4, 5001), 1), ((500, 40), 1)], ids=str)
def test_within_one_ulp_of_the_float64_reference(shape, axis, dt, rng):
    x, z, dy, g, b, m, v = make_inputs(rng, shape, axis, dt)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                              residual=z)
    ry, rmean, rinv = reference.batch_norm_train(x, g, b, axis=axis, relu=True,
                                                 residual=z)
    # every value: within 1 ulp of the half type where the output is not a
    # cancellation of larger terms, and within float32 rounding of the
    # terms (4e-7 of the inputs' scale, far below a half ulp) everywhere
    assert _max_ulps(y, ry, dt, 2.0 ** -8) <= 1
    np.testing.assert_allclose(y.astype(np.float64), ry, rtol=0,
                               atol=EPSILON[dt] * 8)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(invstd, rinv, rtol=1e-6)
    yi = fastbn.batch_norm_infer(x, m, v, g, b, axis=axis)
    ryi = reference.batch_norm_infer(x, m, v, g, b, axis=axis)
    assert _max_ulps(yi, ryi, dt, 2.0 ** -8) <= 1
    dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis, y=y)
    rdx, rdg, rdb, _ = reference.batch_norm_backward(dy, x, mean, invstd, g,
                                                     axis=axis, y=y)
    assert _max_ulps(dx, rdx, dt, 2.0 ** -8) <= 2
    n = x.size // x.shape[axis]
    np.testing.assert_allclose(dg, rdg, rtol=1e-4, atol=1e-5 * np.sqrt(n))
    np.testing.assert_allclose(db, rdb, rtol=1e-4, atol=1e-5 * np.sqrt(n))


@pytest.mark.parametrize("dt", HALVES)
def test_statistics_accumulate_beyond_the_half_type(dt, rng):
    """A large offset and many values: the mean and variance are those of
    the half data to float32 accuracy (float partial sums of at most 128
    values, corrected, then double), not to the half type's 3 or 2 digits."""
    x = (rng.standard_normal((64, 3, 40, 40)) + 200).astype(np.float32).astype(dt)
    mean, var = fastbn.batch_stats(x)
    rmean, rvar = reference.batch_stats(x)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)
    np.testing.assert_allclose(var, rvar, rtol=1e-4)


def _stats_cases(dt, rng):
    """(name, x channel-first, float sums hold) for the statistics tests:
    ordinary data, large offsets, and (bfloat16) data beyond the float sums'
    range in some channels, inf and NaN."""
    shape = (24, 4, 13, 29)  # 7540 values a channel: two chunks, short runs
    g = rng.standard_normal(shape)
    cases = [("normal", g, True), ("offset", g * 3 + 900, True),
             ("steps", np.round(g * 4) + 2048, True)]
    if dt == BF16:
        big = g.copy()
        big[:, 1] *= 1e25   # d*d beyond float
        big[:, 2] *= 1e-25  # d*d below float's normal range
        big[:, 3] = 0.0     # a constant channel: float sums hold
        cases.append(("range", big, False))
    special = g.copy()
    special[3, 0, 2, 2] = np.inf
    special[5, 1, 0, 0] = np.nan
    cases.append(("special", special, False))
    return [(name, a.astype(np.float32).astype(dt), ok) for name, a, ok in cases]


@pytest.mark.parametrize("dt", HALVES)
def test_float_summed_statistics_within_their_bound(dt, rng):
    """Half statistics are summed in float (half_impl.h), channel-first and
    channel-last: the mean within 129 float roundings of the standard
    deviation, M2 within 129 relative; channels beyond the float sums'
    range, or holding inf or NaN, are summed in double: exactly the float32
    path's."""
    for name, x0, _ in _stats_cases(dt, rng):
        for axis in (1, -1):  # chunks of planes, or blocks of rows
            x = x0 if axis == 1 else np.ascontiguousarray(np.moveaxis(x0, 1, -1))
            _check_float_sums(name, x, axis, dt)


def _check_float_sums(name, x, axis, dt):
    xf = f32(x)
    C = x.shape[axis]
    cnt, mm, m2 = fastbn.moments(x, axis=axis)
    cntf, mmf, m2f = fastbn.moments(xf, axis=axis)
    with np.errstate(invalid="ignore"):
        _, rmean, rm2 = reference.moments(xf, axis=axis)
        finite = np.isfinite(rm2) & np.isfinite(rmean)
    for c in range(C):
        if not finite[c] or (dt == BF16 and name == "range" and c in (1, 2)):
            # summed in double: the float32 path's bits (NaN alike)
            assert_bitwise_equal(mm[c:c + 1], mmf[c:c + 1])
            assert_bitwise_equal(m2[c:c + 1], m2f[c:c + 1])
            continue
        std = np.sqrt(rm2[c] / cnt)
        assert abs(mm[c] - rmean[c]) <= MEAN_STD_TOL * std + 1e-15 * abs(rmean[c]), \
            (name, axis, c, mm[c], rmean[c])
        assert abs(m2[c] - rm2[c]) <= M2_RTOL * rm2[c], (name, axis, c, m2[c], rm2[c])
    # the training forward: within 1 ulp of the reference where finite
    y = fastbn.batch_norm_train(x, axis=axis)[0]
    with np.errstate(invalid="ignore", over="ignore"):
        ry = reference.batch_norm_train(x, axis=axis)[0]
    fin = np.isfinite(ry)
    if name != "special":
        assert _max_ulps(np.where(fin, y, 0).astype(dt), np.where(fin, ry, 0),
                         dt, 2.0 ** -8) <= 1, (name, axis)


@pytest.mark.parametrize("dt", HALVES)
def test_float_summed_statistics_identical_across_simd_levels(dt, rng, restore_threads):
    """The float sums, the range test and the double sums give the same bits
    on every instruction set and thread count."""
    cases = [(name, x, 1) for name, x, _ in _stats_cases(dt, rng)]
    cases += [(name, np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1)
              for name, x, _ in cases]
    old = _kernels.simd()
    try:
        _kernels.set_simd("baseline")
        with fastbn.num_threads(1):
            ref = [fastbn.moments(x, axis=ax) for _, x, ax in cases]
        for isa in _kernels.simd_available():
            _kernels.set_simd(isa)
            for threads in (1, 2, 3):
                with fastbn.num_threads(threads):
                    for (name, x, ax), want in zip(cases, ref):
                        got = fastbn.moments(x, axis=ax)
                        for p, q in zip(want[1:], got[1:]):
                            assert np.array_equal(p.view(np.uint8), q.view(np.uint8)), (
                                isa, threads, name)
    finally:
        _kernels.set_simd(old)


# --------------------------------------------------- conversions, bit by bit

def _all_halves(dt):
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dt)


@pytest.mark.parametrize("dt", HALVES)
def test_every_half_value_goes_through_exactly(dt, restore_threads):
    """All 65536 bit patterns through the identity transform (mean 0, var +
    eps = 1, no affine): each value comes back unchanged (-0 as +0: -0 - 0
    + 0 is +0 in IEEE arithmetic), and a NaN as the quiet NaN of its sign
    and payload, on every instruction set."""
    x = _all_halves(dt).reshape(1 << 10, 64)
    eps = 2.0 ** -10
    mean = np.zeros(64, np.float32)
    var = np.full(64, 1 - eps, np.float32)
    u = ubits(x)
    quiet = 0x0200 if dt == F16 else 0x0040
    exp = 0x7c00 if dt == F16 else 0x7f80
    isnan = ((u & exp) == exp) & ((u & (exp ^ 0x7fff)) != 0)
    want = np.where(isnan, u | quiet, np.where(u == 0x8000, 0, u))
    old = _kernels.simd()
    try:
        for isa in _kernels.simd_available():
            _kernels.set_simd(isa)
            for threads in (1, 2):
                with fastbn.num_threads(threads):
                    y = fastbn.batch_norm_infer(x, mean, var, eps=eps, axis=1)
                    yl = fastbn.batch_norm_infer(x.T.copy(), mean, var, eps=eps,
                                                 axis=0)
                np.testing.assert_array_equal(ubits(y), want, err_msg=isa)
                np.testing.assert_array_equal(ubits(yl), want.T, err_msg=isa)
    finally:
        _kernels.set_simd(old)


@pytest.mark.parametrize("dt", HALVES)
@pytest.mark.parametrize("scale", [1e-39, 2.0 ** -20, 3e-6, 1.0, 700.0, 1e5], ids=str)
def test_rounding_to_nearest_even_with_denormals_and_overflow(dt, scale, rng):
    """Outputs across the half type's range, its denormals (no flush to
    zero) and overflow to infinity: each is the float32 value rounded to
    nearest even (NumPy's float16 and ml_dtypes' bfloat16 conversions,
    both correctly rounded), on every instruction set."""
    x = rng.standard_normal((8, 16, 33)).astype(np.float32).astype(dt)
    g = (rng.uniform(0.5, 2, 16) * scale).astype(np.float32)
    g[::4] *= -1
    b = (rng.standard_normal(16) * scale * 0.1).astype(np.float32)
    m = np.zeros(16, np.float32)
    v = np.ones(16, np.float32)
    with np.errstate(over="ignore"):
        want = half(fastbn.batch_norm_infer(f32(x), m, v, g, b), dt)
    old = _kernels.simd()
    try:
        for isa in _kernels.simd_available():
            _kernels.set_simd(isa)
            same_half(fastbn.batch_norm_infer(x, m, v, g, b), want)
    finally:
        _kernels.set_simd(old)
    if scale == 2.0 ** -20 and dt == F16:
        assert np.any((ubits(want) & 0x7c00) == 0) and np.any(ubits(want) & 0x3ff)
    if scale == 1e-39 and dt != F16:  # float32 denormals (VCVTNEPS2BF16 flushes them)
        assert np.any(((ubits(want) & 0x7f80) == 0) & ((ubits(want) & 0x7f) != 0))
    if scale == 1e5 and dt == F16:  # beyond 65504: infinity
        assert np.any(np.isinf(want.astype(np.float32)))


@pytest.mark.parametrize("dt", HALVES)
@pytest.mark.parametrize("shape,axis", [((3, 5, 7, 9), 1), ((2, 4, 1000), 1),
                                        ((37, 16), 1)], ids=str)
def test_backward_mask_edges_and_in_place(shape, axis, dt, rng):
    """The backward's mask on y's edge values (NaN, -0, +0, -inf, denormals)
    and infinite dy where y > 0 or not: the float32 path rounded, also with
    dx written over dy (every length, so the 16-wide loops' tails too)."""
    x, z, dy, g, b, m, v = make_inputs(rng, shape, axis, dt)
    y = rng.standard_normal(shape).astype(np.float32)
    flat = y.reshape(-1)
    k = flat.size
    flat[rng.integers(0, k, k // 5)] = np.nan
    flat[rng.integers(0, k, k // 5)] = -0.0
    flat[rng.integers(0, k, k // 5)] = 0.0
    flat[rng.integers(0, k, k // 9)] = -np.inf
    flat[rng.integers(0, k, k // 9)] = 1e-40  # a float32 denormal: rounds to +0
    y = y.astype(dt)
    dyw = f32(dy)
    dyw.reshape(-1)[rng.integers(0, k, 3)] = np.inf
    dy = dyw.astype(dt)
    mean = rng.standard_normal(shape[axis]).astype(np.float32)
    inv = rng.uniform(0.5, 2, shape[axis]).astype(np.float32)
    for training in (True, False):
        got = fastbn.batch_norm_backward(dy, x, mean, inv, g, axis=axis, y=y,
                                         residual=True, training=training)
        want = fastbn.batch_norm_backward(f32(dy), f32(x), mean, inv, g, axis=axis,
                                          y=f32(y), residual=True, training=training)
        same_half(got[0], half(want[0], dt))
        same_half(got[3], half(want[3], dt))
        for p, q in zip(got[1:3], want[1:3]):
            assert_bitwise_equal(p, q)
        dyi = dy.copy()
        fastbn.batch_norm_backward(dyi, x, mean, inv, g, axis=axis, y=y,
                                   training=training, out=dyi)
        same_half(dyi, got[0])


# ------------------------------------------------------------------ the layer

@pytest.mark.parametrize("dt", HALVES)
@pytest.mark.parametrize("axis", [1, -1])
def test_layer_keeps_half_inputs_with_float32_state(dt, axis, rng):
    shape = (6, 5, 4, 3) if axis == 1 else (6, 4, 3, 5)
    x, z, dy, g, b, m, v = make_inputs(rng, shape, axis, dt)
    bn = fastbn.BatchNorm(5, axis=axis, relu=True)
    ref = fastbn.BatchNorm(5, axis=axis, relu=True)
    for layer in (bn, ref):
        layer.gamma[...] = g
        layer.beta[...] = b
    y = bn(x, residual=z)
    yf = ref(f32(x), residual=f32(z))
    assert y.dtype == dt
    same_half(y, half(yf, dt))
    for a in (bn.gamma, bn.beta, bn.running_mean, bn.running_var):
        assert a.dtype == np.float32
    assert_bitwise_equal(bn.running_mean, ref.running_mean)
    assert_bitwise_equal(bn.running_var, ref.running_var)
    dx, dz = bn.backward(dy)
    assert dx.dtype == dt and dz.dtype == dt
    assert bn.dgamma.dtype == np.float32 and bn.dbeta.dtype == np.float32
    # the layer's backward is the function's on its half data
    _, mean, inv = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z)
    fdx, fdg, fdb, fdz = fastbn.batch_norm_backward(dy, x, mean, inv, g, axis=axis,
                                                    y=y, residual=True)
    same_half(dx, fdx)
    same_half(dz, fdz)
    assert_bitwise_equal(bn.dgamma, fdg)
    assert_bitwise_equal(bn.dbeta, fdb)
    # eval mode: running statistics (float32), y in x's dtype
    bn.eval()
    ref.eval()
    ye = bn(x)
    same_half(ye, half(ref(f32(x)), dt))
    inv = (1 / np.sqrt(bn.running_var.astype(np.float64) + EPS)).astype(np.float32)
    same_half(bn.backward(dy),
              fastbn.batch_norm_backward(dy, x, bn.running_mean, inv, g, axis=axis,
                                         y=ye, training=False)[0])


def test_float64_layer_takes_half_inputs(rng):
    x = make_x(rng, (8, 3, 5), 1, np.float32).astype(np.float16)
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    y = bn(x)
    assert y.dtype == np.float16 and bn.running_mean.dtype == np.float64
    bn.backward(np.ones_like(x))
    assert bn.dgamma.dtype == np.float64


# ------------------------------------------------------------------ errors

def test_bfloat16_is_detected_without_importing_ml_dtypes():
    """fastbn never imports ml_dtypes itself: in a fresh interpreter,
    ``import fastbn`` leaves it unimported, and works when it is absent."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['ml_dtypes'] = None\n"
            "import numpy as np, fastbn\n"
            "x = np.ones((4, 3, 5), np.float16)\n"
            "y = fastbn.batch_norm_train(x)[0]\n"
            "assert y.dtype == np.float16\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code = ("import sys, numpy as np, fastbn\n"
            "assert 'ml_dtypes' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ------------------------------------------------------------------ PyTorch

@pytest.mark.slow
@pytest.mark.parametrize("dt", HALVES)
@pytest.mark.parametrize("shape", [(8, 6, 10, 10), (64, 12)], ids=str)
def test_matches_pytorch_half_batch_norm(torch, dt, shape, rng):
    """PyTorch's CPU batch norm on half tensors (float32 weights, as under
    autocast) computes in float32 and rounds once as well: its outputs are
    within 1 ulp of ours (its reductions add in another order)."""
    x, z, dy, g, b, m, v = make_inputs(rng, shape, 1, dt)
    tdt = torch.float16 if dt == F16 else torch.bfloat16
    tx = torch.from_numpy(f32(x)).to(tdt).requires_grad_(True)
    tg = torch.from_numpy(g).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    rm = torch.zeros(shape[1])
    rv = torch.ones(shape[1])
    ty = torch.nn.functional.batch_norm(tx, rm, rv, tg, tb, training=True, eps=EPS)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b)
    assert ty.dtype == tdt
    tyh = half(ty.detach().float().numpy(), dt)
    assert np.nanmax(ulps(y, tyh)) <= 1
    ty.backward(torch.from_numpy(f32(dy)).to(tdt))
    dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, invstd, g)
    tdx = half(tx.grad.float().numpy(), dt)
    big = np.abs(tdx.astype(np.float32)) >= 2.0 ** -8
    assert np.max(np.where(big, ulps(dx, tdx), 0)) <= 2
    np.testing.assert_allclose(dg, tg.grad.numpy(), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-3, atol=1e-2)
    # inference
    tyi = torch.nn.functional.batch_norm(tx.detach(), torch.from_numpy(m),
                                         torch.from_numpy(v), tg.detach(),
                                         tb.detach(), training=False, eps=EPS)
    yi = fastbn.batch_norm_infer(x, m, v, g, b)
    assert np.nanmax(ulps(yi, half(tyi.float().numpy(), dt))) <= 1
