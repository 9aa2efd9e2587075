"""batch_stats, moments and merge_moments against the float64 reference,
and the numerics: large offsets, constant channels, NaN/Inf confinement."""

import numpy as np
import pytest

import fastbn
import reference
from helpers import assert_bitwise_equal, assert_close, make_params, make_x


def test_batch_stats_matches_reference(layout, dtype):
    shape, axis = layout
    rng = np.random.default_rng(20)
    x = make_x(rng, shape, axis, dtype)
    x0 = x.copy()
    mean, var = fastbn.batch_stats(x, axis=axis)
    ref_mean, ref_var = reference.batch_stats(x, axis=axis)
    c = shape[axis]
    for a in (mean, var):
        assert isinstance(a, np.ndarray)
        assert a.shape == (c,) and a.dtype == np.dtype(dtype)
    assert_close(mean, ref_mean, dtype)
    assert_close(var, ref_var, dtype)
    assert np.all(var >= 0)
    assert_bitwise_equal(x, x0)


def test_batch_stats_default_axis_is_1():
    rng = np.random.default_rng(21)
    x = make_x(rng, (4, 3, 5), 1, np.float64)
    for p, q in zip(fastbn.batch_stats(x), fastbn.batch_stats(x, axis=1)):
        assert_bitwise_equal(p, q)
    assert fastbn.batch_stats(x)[0].shape == (3,)
    assert fastbn.moments(x)[1].shape == (3,)


def test_batch_stats_variance_is_biased():
    x = np.array([[1.0], [3.0]])
    mean, var = fastbn.batch_stats(x)
    assert mean[0] == 2.0 and var[0] == 1.0


def test_batch_stats_single_value_per_channel():
    x = np.array([[1.5, -2.0, 7.0]], np.float32)
    mean, var = fastbn.batch_stats(x)
    np.testing.assert_array_equal(mean, x[0])
    np.testing.assert_array_equal(var, 0)


def test_moments_matches_reference(layout, dtype):
    shape, axis = layout
    rng = np.random.default_rng(22)
    x = make_x(rng, shape, axis, dtype)
    count, mean, m2 = fastbn.moments(x, axis=axis)
    ref_count, ref_mean, ref_m2 = reference.moments(x, axis=axis)
    assert type(count) is int and count == ref_count
    c = shape[axis]
    for a in (mean, m2):
        assert isinstance(a, np.ndarray)
        assert a.shape == (c,) and a.dtype == np.float64
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m2, ref_m2, rtol=1e-12, atol=1e-12)
    assert np.all(m2 >= 0)


@pytest.mark.parametrize("shape,axis,split_axis",
                         [((12, 4, 3, 5), 1, 0), ((10, 3, 3, 6), -1, 0),
                          ((9, 7), 1, 0), ((4, 5, 12), 1, 2),
                          ((6, 4, 5, 3), 2, 1)])
@pytest.mark.parametrize("pieces", [2, 3, 5])
def test_merge_moments_of_chunks_equals_whole(shape, axis, split_axis,
                                              pieces, dtype):
    rng = np.random.default_rng(23)
    x = make_x(rng, shape, axis, dtype, offset=50.0)
    chunks = np.array_split(x, pieces, axis=split_axis)
    parts = [fastbn.moments(ch, axis=axis) for ch in chunks]
    assert sum(p[0] for p in parts) == x.size // shape[axis]
    mean, var = fastbn.merge_moments(parts)
    assert mean.dtype == np.float64 and var.dtype == np.float64
    count, wmean, wm2 = fastbn.moments(x, axis=axis)
    np.testing.assert_allclose(mean, wmean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, wm2 / count, rtol=1e-12, atol=1e-12)
    ref_mean, ref_var = reference.batch_stats(x, axis=axis)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-12, atol=1e-12)
    # the merged float64 statistics round to batch_stats in x.dtype
    smean, svar = fastbn.batch_stats(x, axis=axis)
    assert_close(smean, mean, dtype)
    assert_close(svar, var, dtype)


def test_merge_moments_accepts_array_counts_and_unequal_chunks():
    rng = np.random.default_rng(24)
    x = make_x(rng, (13, 4, 3), 1, np.float64)
    a, b = x[:2], x[2:]
    (na, ma, sa), (nb, mb, sb) = (fastbn.moments(a), fastbn.moments(b))
    want = fastbn.merge_moments([(na, ma, sa), (nb, mb, sb)])
    got = fastbn.merge_moments([(np.full(4, na), ma, sa),
                                (np.full(4, float(nb)), mb, sb)])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-14)
    # per-channel counts that differ between channels
    counts = [np.array([2, 3, 1, 4]), np.array([5, 1, 6, 2])]
    means = [rng.standard_normal(4) for _ in counts]
    m2s = [rng.uniform(0, 3, 4) for _ in counts]
    got = fastbn.merge_moments(list(zip(counts, means, m2s)))
    ref = reference.merge_moments(list(zip(counts, means, m2s)))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-13)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-13)


def test_merge_moments_single_part_and_empty_part():
    rng = np.random.default_rng(25)
    x = make_x(rng, (6, 3), 1, np.float64)
    n, m, s = fastbn.moments(x)
    mean, var = fastbn.merge_moments([(n, m, s)])
    np.testing.assert_allclose(mean, m, rtol=1e-15)
    np.testing.assert_allclose(var, s / n, rtol=1e-15)
    empty = fastbn.moments(x[:0])
    assert empty[0] == 0
    mean2, var2 = fastbn.merge_moments([empty, (n, m, s), empty])
    np.testing.assert_allclose(mean2, mean, rtol=1e-15)
    np.testing.assert_allclose(var2, var, rtol=1e-15)


def test_merge_moments_is_exact_for_float32_chunks():
    """moments are float64 even for float32 data, so merges stay exact."""
    rng = np.random.default_rng(26)
    x = make_x(rng, (32, 4, 8, 8), 1, np.float32, offset=1e3)
    parts = [fastbn.moments(ch) for ch in np.array_split(x, 7)]
    assert all(p[1].dtype == np.float64 for p in parts)
    mean, var = fastbn.merge_moments(parts)
    ref_mean, ref_var = reference.batch_stats(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-10)


# ------------------------------------------------------------ numerics

@pytest.mark.parametrize("shape,axis",
                         [((64, 8, 16, 16), 1), ((32, 16, 16, 8), -1),
                          ((50000, 4), 1), ((4, 3, 40000), 1)],
                         ids=["NCHW", "NHWC", "NC", "NCL-long"])
def test_float32_large_offset_variance(shape, axis):
    """mean 1e4, std 1 in float32: var relative error <= 1e-4 vs float64."""
    rng = np.random.default_rng(27)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    ref_mean, ref_var = reference.batch_stats(x, axis=axis)
    mean, var = fastbn.batch_stats(x, axis=axis)
    assert np.all(np.abs(var / ref_var - 1) <= 1e-4), var / ref_var - 1
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    _, mmean, m2 = fastbn.moments(x, axis=axis)
    count = x.size // shape[axis]
    np.testing.assert_allclose(m2 / count, ref_var, rtol=1e-6)
    y, tmean, invstd = fastbn.batch_norm_train(x, axis=axis)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(ref_var + 1e-5),
                               rtol=1e-4)
    # output is standardised: mean ~0, var ~1 (the offset cancelled)
    ym, yv = reference.batch_stats(y, axis=axis)
    assert np.all(np.abs(ym) < 1e-2) and np.all(np.abs(yv - 1) < 1e-2)


@pytest.mark.parametrize("shape,axis", [((8, 3, 9, 9), 1), ((200, 5), 1),
                                        ((6, 7, 7, 4), -1)])
def test_constant_float32_channel_at_1e7(shape, axis):
    rng = np.random.default_rng(28)
    x = make_x(rng, shape, axis, np.float32)
    idx = [slice(None)] * len(shape)
    idx[axis] = 1
    x[tuple(idx)] = 1e7
    mean, var = fastbn.batch_stats(x, axis=axis)
    assert mean[1] == np.float32(1e7) and var[1] == 0
    y, tmean, invstd = fastbn.batch_norm_train(x, axis=axis, relu=False)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(invstd))
    assert np.all(np.abs(y[tuple(idx)]) <= 1e-3)
    # with a shift, the constant channel maps to beta
    beta = np.arange(1, shape[axis] + 1, dtype=np.float32)
    y, _, _ = fastbn.batch_norm_train(x, None, beta, axis=axis)
    np.testing.assert_allclose(y[tuple(idx)], beta[1], atol=1e-3)


def test_nearly_constant_channels_never_negative_variance(dtype):
    rng = np.random.default_rng(29)
    base = rng.uniform(1e3, 1e7, 16)
    x = (base + 1e-6 * base * rng.standard_normal((300, 16))).astype(dtype)
    x[:, ::4] = x[0, ::4]  # exactly constant columns
    mean, var = fastbn.batch_stats(x)
    assert np.all(var >= 0)
    # ~0: at most the rounding of sum/n, never the E[x^2]-E[x]^2 garbage
    assert np.all(var[::4] <= (1e-14 * mean[::4].astype(np.float64)) ** 2)
    _, _, invstd = fastbn.batch_norm_train(x)
    assert np.all(np.isfinite(invstd)) and np.all(invstd > 0)
    _, _, m2 = fastbn.moments(x)
    assert np.all(m2 >= 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape,axis", [((6, 5, 4, 4), 1), ((6, 4, 4, 5), -1),
                                        ((33, 5), 1),
                                        ((16, 5, 64, 64), 1),
                                        ((4096, 5), 1)],
                         ids=["NCHW", "NHWC", "NC", "NCHW-big", "NC-big"])
def test_nonfinite_confined_to_channel(bad, shape, axis, dtype):
    rng = np.random.default_rng(30)
    c = shape[axis]
    x = make_x(rng, shape, axis, dtype)
    g, b, m, v = make_params(rng, c, dtype)
    xb = x.copy()
    idx = [0] * len(shape)
    idx[axis] = 2
    idx[0] = shape[0] // 2
    xb[tuple(idx)] = bad
    keep = [i for i in range(c) if i != 2]

    def chan(a, chans):
        return np.take(a, chans, axis=axis)

    for relu in (False, True):
        clean = fastbn.batch_norm_train(x, g, b, axis=axis, relu=relu)
        dirty = fastbn.batch_norm_train(xb, g, b, axis=axis, relu=relu)
        assert_bitwise_equal(chan(dirty[0], keep), chan(clean[0], keep))
        assert_bitwise_equal(dirty[1][keep], clean[1][keep])
        assert_bitwise_equal(dirty[2][keep], clean[2][keep])
        assert not np.isfinite(dirty[1][2])  # the channel's mean
        assert np.all(np.isnan(chan(dirty[0], [2])))

        clean = fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, relu=relu)
        dirty = fastbn.batch_norm_infer(xb, m, v, g, b, axis=axis, relu=relu)
        others = np.ones(shape, bool)
        others[tuple(idx)] = False
        assert_bitwise_equal(dirty[others], clean[others])
        if not relu:
            assert not np.isfinite(dirty[tuple(idx)])

    s_clean = fastbn.batch_stats(x, axis=axis)
    s_dirty = fastbn.batch_stats(xb, axis=axis)
    for p, q in zip(s_dirty, s_clean):
        assert_bitwise_equal(p[keep], q[keep])
    assert not np.isfinite(s_dirty[0][2])
    assert np.isnan(s_dirty[1][2])
    n_c, m_c, s_c = fastbn.moments(x, axis=axis)
    n_d, m_d, s_d = fastbn.moments(xb, axis=axis)
    assert n_c == n_d
    assert_bitwise_equal(m_d[keep], m_c[keep])
    assert_bitwise_equal(s_d[keep], s_c[keep])
    assert np.isnan(s_d[2])


def test_nonfinite_statistics_confined_in_inference(dtype):
    rng = np.random.default_rng(31)
    x = make_x(rng, (5, 4, 6), 1, dtype)
    g, b, m, v = make_params(rng, 4, dtype)
    clean = fastbn.batch_norm_infer(x, m, v, g, b)
    m2 = m.copy()
    m2[1] = np.nan
    v2 = v.copy()
    v2[3] = np.inf
    dirty = fastbn.batch_norm_infer(x, m2, v2, g, b)
    assert_bitwise_equal(dirty[:, [0, 2]], clean[:, [0, 2]])
    assert np.all(np.isnan(dirty[:, 1]))
    # var = inf: invstd = 0, y = beta
    np.testing.assert_array_equal(dirty[:, 3], np.broadcast_to(b[3], (5, 6)))
