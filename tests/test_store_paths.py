"""The kernels' memory-traffic variants give the same bits as the plain path.

Outputs of at least 24 MB are written with non-temporal stores through an
L1 tile, and the fused passes prefetch the next channel of large arrays.
The test suite's arrays are small, so without forcing them these paths
would only run in the benchmarks.  ``fastbn._kernels.set_tuning`` forces
them on (threshold 0) or off (-1); every result must be bitwise equal,
including outputs that are not 16-byte aligned and in-place calls.
"""
import numpy as np
import pytest

import fastbn
from fastbn import _kernels

CASES = [
    ((6, 37, 5, 9), 1),      # channel-first, fused per channel
    ((64, 3, 33, 17), 1),    # few channels: chunks in parallel, then apply
    ((700, 45), 1),          # channel-last (NC)
    ((5, 9, 11, 40), -1),    # channel-last (NHWC)
    ((3, 1, 2000), 1),       # one channel
]


@pytest.fixture
def tuning():
    """Yields a function that sets (nt_min_bytes, prefetch); restores after."""
    old = _kernels.set_tuning(-1, False)
    _kernels.set_tuning(*old)
    yield _kernels.set_tuning
    _kernels.set_tuning(*old)


def _misaligned_like(a):
    """An uninitialised C-contiguous array of a's shape and dtype whose data
    starts one element past a 16-byte boundary (aligned to its dtype, not to
    the 16 bytes of a streaming store)."""
    raw = np.empty(a.size * a.itemsize + 64, np.uint8)
    start = (-raw.ctypes.data) % 16 + a.itemsize
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    assert out.flags.aligned and out.ctypes.data % 16 != 0
    return out


def _run_all(x, g, b, z, dy, axis):
    out = []
    y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z)
    out += [y, m, s]
    ym = _misaligned_like(x)
    fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, out=ym)
    out.append(ym.copy())
    xi = x.copy()
    fastbn.batch_norm_train(xi, None, b, axis=axis, out=xi)
    out.append(xi)
    var = (1.0 / s.astype(np.float64) ** 2 - 1e-5).astype(x.dtype)
    out.append(fastbn.batch_norm_infer(x, m, var, g, b, axis=axis, relu=True,
                                       residual=z))
    dxm = _misaligned_like(x)
    res = fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                     residual=True, out=dxm)
    out += [dxm.copy(), *res[1:]]
    out += list(fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis,
                                           training=False))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_streaming_stores_and_prefetch_change_no_bit(tuning, shape, axis,
                                                     dtype, nthreads):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    C = shape[axis]
    g = (rng.random(C) + 0.5).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    with fastbn.num_threads(nthreads):
        tuning(-1, False)
        plain = _run_all(x, g, b, z, dy, axis)
        tuning(0, True)
        forced = _run_all(x, g, b, z, dy, axis)
    assert len(plain) == len(forced)
    for i, (p, f) in enumerate(zip(plain, forced)):
        assert p.dtype == f.dtype and p.shape == f.shape, i
        assert np.array_equal(p.view(np.uint8), f.view(np.uint8)), (
            f"result {i} differs with non-temporal stores/prefetch forced on")


def _unaligned(a):
    """A C-contiguous copy of a whose data is NOT aligned to its dtype."""
    raw = np.empty(a.nbytes + 16, np.uint8)
    start = (-raw.ctypes.data) % 16 + 1
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unaligned_inputs_are_copied_and_unaligned_out_refused(dtype):
    """NumPy can make arrays that are not aligned to their dtype (views of
    byte buffers); the kernels read whole aligned elements, so such inputs
    are copied once and such an out= is refused with a clear error."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 7)).astype(dtype)
    g = (rng.random(5) + 0.5).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ref = fastbn.batch_norm_train(x, g, relu=True)
    got = fastbn.batch_norm_train(_unaligned(x), _unaligned(g), relu=True)
    for r, o in zip(ref, got):
        assert np.array_equal(r, o)
    y, m, s = ref
    dref = fastbn.batch_norm_backward(dy, x, m, s, g, y=y)
    dgot = fastbn.batch_norm_backward(_unaligned(dy), _unaligned(x), _unaligned(m),
                                      _unaligned(s), g, y=_unaligned(y))
    for r, o in zip(dref, dgot):
        assert np.array_equal(r, o)
    with pytest.raises(ValueError, match="out must be aligned"):
        fastbn.batch_norm_train(x, out=_unaligned(x))


def test_set_tuning_returns_previous(tuning):
    tuning(123, False)
    assert tuning(-1, True) == (123, False)
    assert tuning(-1, True) == (-1, True)
