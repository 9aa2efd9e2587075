"""Helpers shared by the test modules: data generation and comparisons."""

import numpy as np

import reference

# Tolerances relative to the output scale (max(1, max|expected|)).
TOL = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-12}


def channel_shape(shape, axis):
    """Shape that broadcasts a (C,) array along ``axis`` of ``shape``."""
    axis = reference.normalize_axis(axis, len(shape))
    return tuple(n if i == axis else 1 for i, n in enumerate(shape))


def stat_dtype(dtype):
    """The dtype of per-channel arrays and statistics for data of ``dtype``:
    itself, float32 for float16 and bfloat16."""
    dt = np.dtype(dtype)
    return dt if dt.itemsize > 2 else np.dtype(np.float32)


def make_x(rng, shape, axis=1, dtype=np.float32, offset=3.0):
    """Random data with a different mean and spread in every channel."""
    c = shape[reference.normalize_axis(axis, len(shape))]
    mean = rng.uniform(-offset, offset, c).reshape(channel_shape(shape, axis))
    std = rng.uniform(0.5, 2.0, c).reshape(channel_shape(shape, axis))
    return (rng.standard_normal(shape) * std + mean).astype(dtype)


def make_inputs(rng, shape, axis, dtype):
    """``(x, z, dy, gamma, beta, mean, var)`` for one call in ``dtype``: x,
    the residual z and dy made in float32 (float64 for float64) and rounded
    once to ``dtype``; the per-channel arrays in its stat_dtype."""
    wide = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    x = make_x(rng, shape, axis, wide).astype(dtype)
    z = make_x(rng, shape, axis, wide, offset=0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(wide).astype(dtype)
    g, b, m, v = make_params(rng, shape[axis], stat_dtype(dtype))
    return x, z, dy, g, b, m, v


def make_params(rng, c, dtype):
    """gamma, beta, running mean and running var for ``c`` channels."""
    gamma = rng.uniform(0.5, 2.0, c).astype(dtype)
    gamma[::3] *= -1  # negative scales too
    beta = rng.standard_normal(c).astype(dtype)
    mean = rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0.3, 3.0, c).astype(dtype)
    return gamma, beta, mean, var


def assert_close(actual, expected, dtype, scale=None, factor=1.0):
    """Compare with the float64 reference within the dtype's tolerance."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = TOL[np.dtype(dtype)] * factor
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual.astype(np.float64), expected,
                               rtol=tol, atol=tol * scale)


def bits(a):
    """The raw bytes of ``a`` as unsigned ints (for bitwise comparisons)."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def assert_bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(bits(a), bits(b))


def fd_directional(f, arg, v, P, h=1e-5):
    """Central difference of L = sum(P * f(arg)) along v; h shrinks when a
    ReLU kink lies in [arg - h v, arg + h v] (the sign pattern of f changes)."""
    y0 = f(arg)
    for _ in range(8):
        yp, ym = f(arg + h * v), f(arg - h * v)
        if np.array_equal(yp > 0, y0 > 0) and np.array_equal(ym > 0, y0 > 0):
            return (np.sum(P * yp) - np.sum(P * ym)) / (2 * h)
        h /= 4
    raise AssertionError("could not avoid the ReLU kinks")  # pragma: no cover


def check_directional_derivatives(checks, P, rng, directions=3):
    """For each ``(f, arg, grad)``: along random directions v, the gradient's
    ``sum(grad * v)`` equals the central difference of ``sum(P * f(arg))``
    within 1e-6 of its scale (float64 forwards)."""
    for f, arg, grad in checks:
        for _ in range(directions):
            v = rng.standard_normal(arg.shape)
            fd = fd_directional(f, arg, v, P)
            an = float(np.sum(grad * v))
            scale = float(np.sqrt(np.sum(grad ** 2) * np.sum(v ** 2)))
            assert abs(fd - an) <= 1e-6 * max(1.0, scale), (fd, an)
