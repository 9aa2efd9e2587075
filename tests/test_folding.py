"""fastbn.fold_into_linear and fastbn.absorb_scale: the folded / rescaled
networks compute the same function (up to float rounding), for dense and
convolution weights, with and without bias, gamma and beta; inputs are not
modified; errors name what is wrong."""

import numpy as np
import pytest

import fastbn
from helpers import assert_bitwise_equal


def conv2d(x, w, b=None):
    """Valid 2-D convolution (PyTorch's cross-correlation), NCHW, float64."""
    from numpy.lib.stride_tricks import sliding_window_view
    kh, kw = w.shape[2:]
    win = sliding_window_view(x.astype(np.float64), (kh, kw), axis=(2, 3))
    y = np.einsum("nihwab,oiab->nohw", win, w.astype(np.float64))
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :, None, None]
    return y


def dense(x, w, b=None):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y if b is None else y + b


def _bn(rng, C, dtype=np.float32, steps=3, make=None, **kw):
    """A BatchNorm with trained-looking parameters and running statistics."""
    bn = fastbn.BatchNorm(C, dtype=dtype, **kw)
    for _ in range(steps):
        bn(rng.standard_normal((16, C)).astype(dtype) * 2 + 1)
    if bn.gamma is not None:
        bn.gamma[:] = rng.uniform(0.3, 2.0, C) if make is None else make(C)
    if bn.beta is not None:
        bn.beta[:] = rng.standard_normal(C)
    return bn.eval()


def _snapshot(bn):
    return {k: v.copy() for k, v in bn.state_dict().items()}


# -------------------------------------------------------- fold_into_linear

@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("scale,center", [(True, True), (False, True),
                                          (True, False), (False, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_dense(rng, use_bias, scale, center, dtype):
    w = rng.standard_normal((6, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if use_bias else None
    bn = _bn(rng, 6, dtype, scale=scale, center=center)
    w0, b0, s0 = w.copy(), None if b is None else b.copy(), _snapshot(bn)
    x = rng.standard_normal((10, 4)).astype(dtype)
    h = dense(x, w, b).astype(dtype)
    expect = bn(h)
    w2, b2 = fastbn.fold_into_linear(w, b, bn)
    assert w2.dtype == b2.dtype == dtype and w2.shape == w.shape and b2.shape == (6,)
    got = dense(x, w2, b2)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expect, rtol=tol, atol=tol * np.abs(expect).max())
    assert_bitwise_equal(w, w0)
    if b is not None:
        assert_bitwise_equal(b, b0)
    for k, v in s0.items():
        assert_bitwise_equal(bn.state_dict()[k], v)


@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_conv(rng, use_bias):
    w = rng.standard_normal((5, 3, 3, 2))
    b = rng.standard_normal(5) if use_bias else None
    bn = _bn(rng, 5, np.float64, relu=True)
    x = rng.standard_normal((2, 3, 7, 6))
    expect = bn(conv2d(x, w, b))  # fused ReLU stays after the folded conv
    w2, b2 = fastbn.fold_into_linear(w, b, bn)
    got = np.maximum(conv2d(x, w2, b2), 0)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


def test_fold_matches_torch_fuse(torch, rng):
    """Same numbers as torch.nn.utils.fusion.fuse_conv_bn_weights."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    bn = _bn(rng, 4, np.float64)
    w2, b2 = fastbn.fold_into_linear(w, b, bn)
    tw, tb = fuse_conv_bn_weights(
        torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(bn.running_mean),
        torch.from_numpy(bn.running_var), bn.eps, torch.from_numpy(bn.gamma),
        torch.from_numpy(bn.beta))
    np.testing.assert_allclose(w2, tw.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(b2, tb.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_fold_errors(rng):
    bn = _bn(rng, 4)
    with pytest.raises(ValueError, match="5 output channels.*num_features=4"):
        fastbn.fold_into_linear(np.ones((5, 3)), None, bn)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        fastbn.fold_into_linear(np.ones((4, 3)), np.ones(3), bn)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fastbn.fold_into_linear(np.ones(4), None, bn)
    with pytest.raises(TypeError, match="BatchNorm"):
        fastbn.fold_into_linear(np.ones((4, 3)), None, object())
    with pytest.raises(ValueError, match="track_running_stats"):
        fastbn.fold_into_linear(np.ones((4, 3)), None,
                                fastbn.BatchNorm(4, track_running_stats=False))


# ------------------------------------------------------------ absorb_scale

def _net(x, w1, b1, bn, w2, b2):
    """dense -> BN (+ReLU) -> dense."""
    h = dense(x, w1, b1).astype(bn.dtype)
    a = bn(h)
    if not bn.relu:
        a = np.maximum(a, 0)
    return dense(a, w2, b2)


@pytest.mark.parametrize("fused_relu", [True, False])
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_absorb_scale_dense_network_unchanged(rng, fused_relu, center, mode, dtype):
    C = 7
    w1, b1 = rng.standard_normal((C, 5)), rng.standard_normal(C)
    w2, b2 = rng.standard_normal((3, C)).astype(dtype), rng.standard_normal(3)
    bn = _bn(rng, C, dtype, relu=fused_relu, center=center).train(mode == "train")
    w2c, s0 = w2.copy(), _snapshot(bn)
    x = rng.standard_normal((32, 5))
    before = _net(x, w1, b1, bn, w2, b2)
    nbt = bn.num_batches_tracked
    bn2, w2n = fastbn.absorb_scale(bn, w2)
    assert bn2.gamma is None and not bn2.scale and bn2.center == center
    assert bn2.relu == fused_relu and bn2.training == bn.training
    assert w2n.dtype == dtype and w2n.shape == w2.shape
    np.testing.assert_array_equal(bn2.running_mean, bn.running_mean)
    np.testing.assert_array_equal(bn2.running_var, bn.running_var)
    assert bn2.num_batches_tracked == bn.num_batches_tracked
    after = _net(x, w1, b1, bn2, w2n, b2)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(after, before, rtol=tol,
                               atol=tol * np.abs(before).max())
    # inputs untouched (the train-mode forward above updated bn's running
    # statistics, as any training forward does; compare the parameters)
    assert_bitwise_equal(w2, w2c)
    assert_bitwise_equal(bn.gamma, s0["weight"])
    if center:
        assert_bitwise_equal(bn.beta, s0["bias"])
    if mode == "eval":
        assert bn.num_batches_tracked == nbt


def test_absorb_scale_conv_next_layer(rng):
    C = 4
    bn = _bn(rng, C, np.float64, relu=True)
    wn = rng.standard_normal((6, C, 3, 3))
    h = rng.standard_normal((2, C, 8, 8)) * 2 + 1
    before = conv2d(bn(h), wn)
    bn2, wn2 = fastbn.absorb_scale(bn, wn)
    after = conv2d(bn2(h), wn2)
    np.testing.assert_allclose(after, before, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(wn2, wn * bn.gamma[None, :, None, None], rtol=1e-15)
    np.testing.assert_allclose(bn2.beta, bn.beta / bn.gamma, rtol=1e-15)


def test_absorb_scale_nonpositive_gamma_names_channels(rng):
    bn = _bn(rng, 6)
    bn.gamma[[1, 4]] = [-0.5, 0.0]
    g0 = bn.gamma.copy()
    with pytest.raises(ValueError, match=r"channel\(s\) \[1, 4\]"):
        fastbn.absorb_scale(bn, np.ones((2, 6)))
    assert_bitwise_equal(bn.gamma, g0)
    bn.gamma[:] = 1
    bn.gamma[2] = np.nan
    with pytest.raises(ValueError, match=r"\[2\]"):
        fastbn.absorb_scale(bn, np.ones((2, 6)))


def test_absorb_scale_errors_and_no_scale(rng):
    bn = _bn(rng, 3)
    with pytest.raises(ValueError, match="4 input channels.*num_features=3"):
        fastbn.absorb_scale(bn, np.ones((2, 4)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fastbn.absorb_scale(bn, np.ones(3))
    with pytest.raises(TypeError, match="BatchNorm"):
        fastbn.absorb_scale("bn", np.ones((2, 3)))
    noscale = _bn(rng, 3, scale=False)
    bn2, w2 = fastbn.absorb_scale(noscale, np.arange(6.0).reshape(2, 3))
    assert bn2 is not noscale and bn2.beta is not noscale.beta
    np.testing.assert_array_equal(bn2.beta, noscale.beta)
    np.testing.assert_array_equal(w2, np.arange(6.0).reshape(2, 3))


def test_absorb_then_fold_matches_original(rng):
    """The two tools compose: absorb the scale, then fold the scale-free BN
    into the previous dense layer; the network is unchanged."""
    C = 5
    w1, b1 = rng.standard_normal((C, 4)), rng.standard_normal(C)
    w2, b2 = rng.standard_normal((2, C)), rng.standard_normal(2)
    bn = _bn(rng, C, np.float64, relu=True)
    x = rng.standard_normal((9, 4))
    before = _net(x, w1, b1, bn, w2, b2)
    bn2, w2n = fastbn.absorb_scale(bn, w2)
    w1f, b1f = fastbn.fold_into_linear(w1, b1, bn2)
    after = dense(np.maximum(dense(x, w1f, b1f), 0), w2n, b2)
    np.testing.assert_allclose(after, before, rtol=1e-12, atol=1e-12)
