"""Agreement with PyTorch's batch norm (skipped when torch is not installed;
torch is never a dependency of fastbn)."""

import numpy as np
import pytest

import fastbn
from helpers import assert_close, make_params, make_x

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional

SHAPES = [(8, 4), (4, 6, 10), (3, 5, 6, 7), (2, 3, 3, 4, 5), (16, 1, 8, 8),
          (5, 3, 1, 1)]
# torch's float32 reductions differ from ours by rounding only
TORCH_TOL = {np.float32: 4.0, np.float64: 100.0}  # x helpers.TOL


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_train_matches_torch(shape, affine, dtype):
    rng = np.random.default_rng(50)
    x = make_x(rng, shape, 1, dtype)
    g, b, _, _ = make_params(rng, shape[1], dtype)
    g, b = (g, b) if affine else (None, None)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, eps=1e-5)
    ty, tmean, tinvstd = torch.native_batch_norm(
        _t(x), _t(g), _t(b), None, None, True, 0.1, 1e-5)
    tol = TORCH_TOL[dtype]
    assert_close(y, ty.numpy(), dtype, factor=tol)
    assert_close(mean, tmean.numpy(), dtype, factor=tol)
    assert_close(invstd, tinvstd.numpy(), dtype, factor=tol)
    ty2 = F.batch_norm(_t(x), None, None, _t(g), _t(b), training=True,
                       eps=1e-5)
    assert_close(y, ty2.numpy(), dtype, factor=tol)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_train_relu_residual_matches_torch(shape, dtype):
    rng = np.random.default_rng(51)
    x = make_x(rng, shape, 1, dtype)
    z = make_x(rng, shape, 1, dtype)
    g, b, _, _ = make_params(rng, shape[1], dtype)
    y, _, _ = fastbn.batch_norm_train(x, g, b, relu=True, residual=z)
    ty = torch.relu(F.batch_norm(_t(x), None, None, _t(g), _t(b),
                                 training=True, eps=1e-5) + _t(z))
    assert_close(y, ty.numpy(), dtype, factor=TORCH_TOL[dtype])


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_eval_matches_torch(shape, relu, dtype):
    rng = np.random.default_rng(52)
    x = make_x(rng, shape, 1, dtype)
    z = make_x(rng, shape, 1, dtype)
    g, b, m, v = make_params(rng, shape[1], dtype)
    y = fastbn.batch_norm_infer(x, m, v, g, b, eps=1e-3, relu=relu,
                                residual=z)
    ty = F.batch_norm(_t(x), _t(m), _t(v), _t(g), _t(b), training=False,
                      eps=1e-3) + _t(z)
    if relu:
        ty = torch.relu(ty)
    assert_close(y, ty.numpy(), dtype, factor=TORCH_TOL[dtype])


def test_channels_last_matches_torch(dtype):
    rng = np.random.default_rng(53)
    x = make_x(rng, (6, 9, 7, 5), -1, dtype)  # NHWC
    g, b, _, _ = make_params(rng, 5, dtype)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=-1, relu=True)
    tx = _t(x).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    ty = torch.relu(F.batch_norm(tx, None, None, _t(g), _t(b),
                                 training=True, eps=1e-5))
    assert_close(y, ty.permute(0, 2, 3, 1).contiguous().numpy(), dtype,
                 factor=TORCH_TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(32, 64, 28, 28), (2048, 128),
                                   (64, 3, 32, 32)], ids=str)
def test_large_float32_matches_torch(shape):
    rng = np.random.default_rng(54)
    x = make_x(rng, shape, 1, np.float32)
    g, b, m, v = make_params(rng, shape[1], np.float32)
    y, mean, invstd = fastbn.batch_norm_train(x, g, b)
    ty, tmean, tinvstd = torch.native_batch_norm(
        _t(x), _t(g), _t(b), None, None, True, 0.1, 1e-5)
    assert_close(y, ty.numpy(), np.float32, factor=4)
    assert_close(mean, tmean.numpy(), np.float32, factor=4)
    assert_close(invstd, tinvstd.numpy(), np.float32, factor=4)
    yi = fastbn.batch_norm_infer(x, m, v, g, b)
    ti = F.batch_norm(_t(x), _t(m), _t(v), _t(g), _t(b), training=False)
    assert_close(yi, ti.numpy(), np.float32, factor=4)
