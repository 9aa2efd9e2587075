"""The float64 oracle itself (fastbn._reference, re-exported as reference):
its statistics are NumPy's, a ghost batch is an ordinary batch norm of its
slice, renormalization with rmax = 1, dmax = 0 is batch norm, and its
gradients are those of its own forward (central differences)."""
import numpy as np
import pytest

import reference
from helpers import check_directional_derivatives, make_params, make_x

CASES = [((6, 3, 4, 5), 1, 2), ((8, 5), 1, 4), ((4, 3, 5, 2), -1, 2)]


@pytest.mark.parametrize("shape,axis", [c[:2] for c in CASES], ids=str)
def test_statistics_are_numpys(shape, axis, rng):
    x = make_x(rng, shape, axis, np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean, var = reference.batch_stats(x, axis)
    np.testing.assert_allclose(mean, x.mean(axis=axes), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=axes), rtol=1e-13)
    n, _, m2 = reference.moments(x, axis)
    assert n == x.size // x.shape[axis]
    np.testing.assert_allclose(m2, x.var(axis=axes) * n, rtol=1e-13)


@pytest.mark.parametrize("shape,axis,k", CASES, ids=str)
def test_a_ghost_batch_is_batch_norm_of_its_slice(shape, axis, k, rng):
    x = make_x(rng, shape, axis, np.float64)
    z = make_x(rng, shape, axis, np.float64)
    dy = rng.standard_normal(shape)
    g, b, _, _ = make_params(rng, shape[axis], np.float64)
    y, m, s = reference.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z,
                                         virtual_batch_size=k)
    dx, dg, db, dz = reference.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                                   virtual_batch_size=k)
    assert m.shape == s.shape == (shape[0] // k, shape[axis])
    sums = np.zeros((2, shape[axis]))
    for i in range(shape[0] // k):
        sl = slice(i * k, (i + 1) * k)
        yi, mi, si = reference.batch_norm_train(x[sl], g, b, axis=axis, relu=True,
                                                residual=z[sl])
        np.testing.assert_array_equal(y[sl], yi)
        np.testing.assert_array_equal(m[i], mi)
        np.testing.assert_array_equal(s[i], si)
        dxi, dgi, dbi, dzi = reference.batch_norm_backward(dy[sl], x[sl], mi, si, g,
                                                           axis=axis, y=yi)
        np.testing.assert_array_equal(dx[sl], dxi)
        np.testing.assert_array_equal(dz[sl], dzi)
        sums += (dgi, dbi)
    np.testing.assert_allclose((dg, db), sums, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,axis,k", CASES, ids=str)
def test_renorm_without_room_is_batch_norm(shape, axis, k, rng):
    x = make_x(rng, shape, axis, np.float64)
    g, b, rm, rv = make_params(rng, shape[axis], np.float64)
    y, r, d = reference.batch_renorm_train(x, g, b, rm, rv, axis=axis, rmax=1.0,
                                           dmax=0.0, virtual_batch_size=k)
    np.testing.assert_array_equal(r, 1.0)
    np.testing.assert_array_equal(d, 0.0)
    want = reference.batch_norm_train(x, g, b, axis=axis, virtual_batch_size=k)[0]
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("training", [True, False], ids=["train", "frozen"])
@pytest.mark.parametrize("shape,axis,k", CASES + [((6, 3, 4, 5), 1, None)], ids=str)
def test_gradients_are_those_of_the_forward(shape, axis, k, training, rng):
    C = shape[axis]
    x = make_x(rng, shape, axis, np.float64)
    z = make_x(rng, shape, axis, np.float64)
    g, b, rm, rv = make_params(rng, C, np.float64)
    P = rng.standard_normal(shape)
    if training:
        y, m, s = reference.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z,
                                             virtual_batch_size=k)
    else:
        m, s = rm, 1 / np.sqrt(rv + 1e-5)
        y = reference.batch_norm_infer(x, rm, rv, g, b, axis=axis, relu=True,
                                       residual=z)
    dx, dg, db, dz = reference.batch_norm_backward(P, x, m, s, g, axis=axis, y=y,
                                                   training=training,
                                                   virtual_batch_size=k)

    def f(xx=x, gg=g, bb=b, zz=z):
        if training:
            return reference.batch_norm_train(xx, gg, bb, axis=axis, relu=True,
                                              residual=zz, virtual_batch_size=k)[0]
        return reference.batch_norm_infer(xx, rm, rv, gg, bb, axis=axis, relu=True,
                                          residual=zz)

    check_directional_derivatives([(lambda a: f(xx=a), x, dx),
                                   (lambda a: f(gg=a), g, dg),
                                   (lambda a: f(bb=a), b, db),
                                   (lambda a: f(zz=a), z, dz)], P, rng)
