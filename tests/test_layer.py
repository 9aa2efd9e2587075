"""fastbn.BatchNorm: construction, training/eval forward and backward,
running statistics (momentum, cumulative average, unbiased variance),
track_running_stats=False, residual, state dicts (ours and PyTorch's) and
Keras weight order; training over several steps against
torch.nn.BatchNorm1d/2d when torch is installed."""

import numpy as np
import pytest

import fastbn
import reference
from helpers import assert_bitwise_equal, assert_close, make_x


def _unbiased(x, axis):
    cols, _ = reference.to_columns(x, axis)
    return cols.var(axis=0, ddof=1)


# ------------------------------------------------------------ construction

def test_defaults():
    bn = fastbn.BatchNorm(4)
    assert bn.num_features == 4 and bn.axis == 1 and bn.eps == 1e-5
    assert bn.momentum == 0.1 and bn.training and bn.dtype == np.float32
    np.testing.assert_array_equal(bn.gamma, np.ones(4, np.float32))
    np.testing.assert_array_equal(bn.beta, np.zeros(4, np.float32))
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.num_batches_tracked == 0
    assert bn.dgamma is None and bn.dbeta is None
    for a in (bn.gamma, bn.beta, bn.running_mean, bn.running_var):
        assert a.dtype == np.float32 and a.shape == (4,)


def test_center_scale_off_and_no_running_stats():
    bn = fastbn.BatchNorm(3, center=False, scale=False, track_running_stats=False,
                          dtype=np.float64)
    assert bn.gamma is None and bn.beta is None
    assert bn.running_mean is None and bn.running_var is None
    assert bn.num_batches_tracked is None
    assert bn.state_dict() == {} and bn.get_weights() == []


def test_train_eval_return_self_and_repr():
    bn = fastbn.BatchNorm(8, axis=-1, momentum=None, relu=True, scale=False)
    assert bn.eval() is bn and not bn.training
    assert "eval" in repr(bn)
    assert bn.train() is bn and bn.training
    r = repr(bn)
    for w in ("BatchNorm(8", "axis=-1", "momentum=None", "scale=False",
              "relu=True", "float32", "train"):
        assert w in r, r


@pytest.mark.parametrize("kw,exc,word", [
    (dict(num_features=0), ValueError, "num_features"),
    (dict(num_features=2.5), TypeError, "num_features"),
    (dict(num_features=3, momentum=1.5), ValueError, "momentum"),
    (dict(num_features=3, momentum="0.1"), TypeError, "momentum"),
    (dict(num_features=3, eps=0), ValueError, "eps"),
    (dict(num_features=3, dtype=np.int32), TypeError, "dtype"),
    (dict(num_features=3, axis=1.0), TypeError, "axis"),
])
def test_constructor_errors(kw, exc, word):
    with pytest.raises(exc, match=word):
        fastbn.BatchNorm(kw.pop("num_features"), **kw)


def test_channel_mismatch_names_num_features(rng):
    bn = fastbn.BatchNorm(4)
    with pytest.raises(ValueError, match="num_features=4"):
        bn(rng.standard_normal((8, 5)).astype(np.float32))
    bn = fastbn.BatchNorm(4, axis=-1)
    with pytest.raises(ValueError, match="3 channels"):
        bn(rng.standard_normal((8, 4, 3)).astype(np.float32))


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before a forward"):
        fastbn.BatchNorm(2).backward(np.zeros((3, 2), np.float32))


# ------------------------------------------------------ forward / backward

@pytest.mark.parametrize("shape,axis", [((16, 5), 1), ((6, 4, 7), 1),
                                        ((4, 3, 5, 6), 1), ((4, 5, 6, 3), -1)],
                         ids=["NC", "NCL", "NCHW", "NHWC"])
@pytest.mark.parametrize("relu", [False, True])
def test_training_step_matches_functional_api(rng, dtype, shape, axis, relu):
    bn = fastbn.BatchNorm(shape[axis], axis=axis, relu=relu, dtype=dtype)
    bn.gamma[:] = rng.uniform(0.5, 2, shape[axis])
    bn.beta[:] = rng.standard_normal(shape[axis])
    x = make_x(rng, shape, axis, dtype)
    y = bn(x)
    ey, mean, invstd = fastbn.batch_norm_train(x, bn.gamma, bn.beta, axis=axis,
                                               relu=relu)
    assert_bitwise_equal(y, ey)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = bn.backward(dy)
    edx, edg, edb = fastbn.batch_norm_backward(dy, x, mean, invstd, bn.gamma,
                                               axis=axis, y=ey if relu else None)
    assert_bitwise_equal(dx, edx)
    assert_bitwise_equal(bn.dgamma, edg)
    assert_bitwise_equal(bn.dbeta, edb)
    # running statistics: (1 - m) * old + m * batch, unbiased variance
    mean64, _ = reference.batch_stats(x, axis)
    assert_close(bn.running_mean, 0.1 * mean64, dtype)
    assert_close(bn.running_var, 0.9 + 0.1 * _unbiased(x, axis), dtype)
    assert bn.num_batches_tracked == 1


def test_eval_uses_running_stats_and_frozen_gradient(rng, dtype):
    bn = fastbn.BatchNorm(3, relu=True, dtype=dtype)
    for _ in range(3):
        bn(make_x(rng, (10, 3, 4), 1, dtype))
    bn.gamma[:] = [1.5, -0.5, 2.0]
    bn.beta[:] = [0.1, 0.2, -0.3]
    rm, rv, nbt = bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked
    x = make_x(rng, (10, 3, 4), 1, dtype)
    y = bn.eval()(x)
    ey = fastbn.batch_norm_infer(x, rm, rv, bn.gamma, bn.beta, relu=True)
    assert_bitwise_equal(y, ey)
    assert_bitwise_equal(bn.running_mean, rm)  # eval never updates
    assert_bitwise_equal(bn.running_var, rv)
    assert bn.num_batches_tracked == nbt
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = bn.backward(dy)
    invstd = 1 / np.sqrt(rv.astype(np.float64) + bn.eps)
    rdx, rdg, rdb, _ = reference.batch_norm_backward(dy, x, rm, invstd, bn.gamma,
                                                     y=y, training=False)
    assert_close(dx, rdx, dtype)
    assert_close(bn.dgamma, rdg, dtype, factor=10)
    assert_close(bn.dbeta, rdb, dtype, factor=10)


def test_momentum_none_is_cumulative_average(rng):
    bn = fastbn.BatchNorm(4, momentum=None, dtype=np.float64)
    xs = [make_x(rng, (9, 4), 1, np.float64) for _ in range(5)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean,
                               np.mean([x.mean(axis=0) for x in xs], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var,
                               np.mean([x.var(axis=0, ddof=1) for x in xs], axis=0),
                               rtol=1e-12)
    assert bn.num_batches_tracked == 5


def test_momentum_formula_several_steps(rng):
    bn = fastbn.BatchNorm(2, momentum=0.3, dtype=np.float64)
    rm, rv = np.zeros(2), np.ones(2)
    for _ in range(4):
        x = make_x(rng, (7, 2, 3), 1, np.float64)
        bn(x)
        rm = 0.7 * rm + 0.3 * x.mean(axis=(0, 2))
        rv = 0.7 * rv + 0.3 * _unbiased(x, 1)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)


def test_no_running_stats_uses_batch_stats_in_eval(rng):
    bn = fastbn.BatchNorm(3, track_running_stats=False)
    x = make_x(rng, (6, 3, 5), 1, np.float32)
    y_train = bn(x)
    dx_train = bn.backward(np.ones_like(x) + x)
    bn.eval()
    assert_bitwise_equal(bn(x), y_train)
    assert_bitwise_equal(bn.backward(np.ones_like(x) + x), dx_train)
    assert bn.running_mean is None and bn.num_batches_tracked is None


def test_residual_returns_both_gradients(rng, dtype):
    bn = fastbn.BatchNorm(4, axis=-1, relu=True, dtype=dtype)
    x = make_x(rng, (5, 3, 4), -1, dtype)
    z = rng.standard_normal(x.shape).astype(dtype)
    y = bn(x, residual=z)
    ey, mean, invstd = fastbn.batch_norm_train(x, bn.gamma, bn.beta, axis=-1,
                                               relu=True, residual=z)
    assert_bitwise_equal(y, ey)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dz = bn.backward(dy)
    np.testing.assert_array_equal(dz, np.where(y > 0, dy, 0))
    edx = fastbn.batch_norm_backward(dy, x, mean, invstd, bn.gamma, axis=-1, y=ey)[0]
    assert_bitwise_equal(dx, edx)
    # without residual, backward returns dx only
    bn(x)
    assert isinstance(bn.backward(dy), np.ndarray)


def test_residual_without_relu_gradient_is_dy(rng):
    bn = fastbn.BatchNorm(2)
    x = make_x(rng, (6, 2), 1, np.float32)
    bn(x, residual=x)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, dz = bn.backward(dy)
    assert_bitwise_equal(dz, dy)


def test_scale_center_off_gradients_none(rng):
    bn = fastbn.BatchNorm(3, center=False, scale=False)
    x = make_x(rng, (8, 3), 1, np.float32)
    y = bn(x)
    assert_bitwise_equal(y, fastbn.batch_norm_train(x)[0])
    bn.backward(np.ones_like(x))
    assert bn.dgamma is None and bn.dbeta is None
    bn = fastbn.BatchNorm(3, center=False)
    bn(x)
    bn.backward(x)
    assert bn.dgamma is not None and bn.dbeta is None


def test_in_place_parameter_update_is_used(rng):
    bn = fastbn.BatchNorm(3)
    x = make_x(rng, (8, 3), 1, np.float32)
    y0 = bn(x)
    bn.backward(x)
    bn.gamma -= 0.5 * bn.dgamma
    bn.beta -= 0.5 * bn.dbeta
    y1 = bn(x)
    assert_bitwise_equal(y1, fastbn.batch_norm_train(x, bn.gamma, bn.beta)[0])
    assert not np.array_equal(y0, y1)


def test_input_cast_to_layer_dtype_and_not_modified(rng):
    bn = fastbn.BatchNorm(3)
    x = make_x(rng, (8, 3, 2), 1, np.float64)
    xc = x.copy()
    y = bn(x)
    assert y.dtype == np.float32
    assert_bitwise_equal(x, xc)
    assert_bitwise_equal(y, fastbn.batch_norm_train(x.astype(np.float32))[0])


# ------------------------------------------------------------ state dicts

def _trained(rng, **kw):
    bn = fastbn.BatchNorm(4, **kw)
    for _ in range(3):
        bn(make_x(rng, (6, 4, 3), 1, np.float32))
    if bn.gamma is not None:
        bn.gamma[:] = rng.uniform(0.5, 2, 4)
    if bn.beta is not None:
        bn.beta[:] = rng.standard_normal(4)
    return bn


def test_state_dict_keys_and_round_trip(rng):
    bn = _trained(rng)
    d = bn.state_dict()
    assert list(d) == ["weight", "bias", "running_mean", "running_var",
                       "num_batches_tracked"]
    assert d["num_batches_tracked"].dtype == np.int64 and d["num_batches_tracked"] == 3
    d["weight"][0] = 99  # a copy
    assert bn.gamma[0] != 99
    other = fastbn.BatchNorm(4)
    g = other.gamma
    assert other.load_state_dict(bn.state_dict()) is other
    assert other.gamma is g  # loaded in place
    for k, v in bn.state_dict().items():
        assert_bitwise_equal(other.state_dict()[k], v)
    assert fastbn.BatchNorm(4, center=False).load_state_dict(
        {"weight": np.ones(4), "running_mean": np.zeros(4), "running_var": np.ones(4),
         "num_batches_tracked": 2}).num_batches_tracked == 2


def test_state_dict_key_errors(rng):
    bn = fastbn.BatchNorm(4)
    d = _trained(rng).state_dict()
    missing = dict(d)
    del missing["running_var"]
    with pytest.raises(KeyError, match="missing.*running_var"):
        bn.load_state_dict(missing)
    extra = dict(d, foo=np.zeros(4))
    with pytest.raises(KeyError, match="unexpected.*foo"):
        bn.load_state_dict(extra)
    # non-strict: ignore both
    bn.load_state_dict(dict(missing, foo=1), strict=False)
    assert_bitwise_equal(bn.gamma, d["weight"])
    np.testing.assert_array_equal(bn.running_var, 1)
    # num_batches_tracked may be absent (old PyTorch checkpoints)
    del d["num_batches_tracked"]
    fastbn.BatchNorm(4).load_state_dict(d)
    # a layer without affine parameters rejects weight/bias
    with pytest.raises(KeyError, match="weight"):
        fastbn.BatchNorm(4, scale=False, center=False).load_state_dict(
            _trained(rng).state_dict())


def test_state_dict_shape_error_changes_nothing(rng):
    bn = _trained(rng)
    before = bn.state_dict()
    d = bn.state_dict()
    d["weight"] = np.zeros(4)
    d["running_var"] = np.ones(5)
    with pytest.raises(ValueError, match=r"running_var.*\(4,\)"):
        bn.load_state_dict(d)
    for k, v in before.items():
        assert_bitwise_equal(bn.state_dict()[k], v)
    with pytest.raises(TypeError, match="mapping"):
        bn.load_state_dict([1, 2])
    d = bn.state_dict()
    d["num_batches_tracked"] = np.array([1, 2])
    with pytest.raises(ValueError, match="num_batches_tracked"):
        bn.load_state_dict(d)


def test_keras_weights(rng):
    bn = _trained(rng)
    ws = bn.get_weights()
    assert len(ws) == 4
    for a, b in zip(ws, [bn.gamma, bn.beta, bn.running_mean, bn.running_var]):
        assert_bitwise_equal(a, b)
    other = fastbn.BatchNorm(4)
    other.set_weights([w.astype(np.float64) for w in ws])
    for a, b in zip(other.get_weights(), ws):
        assert_bitwise_equal(a, b)
    noscale = fastbn.BatchNorm(4, scale=False)
    assert len(noscale.get_weights()) == 3
    with pytest.raises(ValueError, match=r"3 arrays \[beta, moving_mean, moving_variance\]"):
        noscale.set_weights(ws)
    noscale.set_weights(ws[1:])
    assert_bitwise_equal(noscale.beta, bn.beta)
    with pytest.raises(ValueError, match="moving_variance|running_var"):
        other.set_weights(ws[:3] + [np.ones(3)])
    assert "unbiased" in fastbn.BatchNorm.get_weights.__doc__


def test_docstrings_document_conventions():
    doc = fastbn.BatchNorm.__doc__
    assert "1 - momentum" in doc and "unbiased" in doc
    for name in ("__call__", "backward", "state_dict", "load_state_dict",
                 "get_weights", "set_weights", "train", "eval"):
        assert getattr(fastbn.BatchNorm, name).__doc__


# ----------------------------------------------------------------- PyTorch

def _to_t(torch, a, axis):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, axis, 1)))


def _from_t(t, axis):
    return np.moveaxis(t.detach().numpy(), 1, axis)


@pytest.mark.parametrize("kind,shape,axis", [
    ("1d", (16, 6), 1), ("1d", (5, 6, 7), 1), ("2d", (4, 6, 5, 5), 1),
    ("2d", (4, 5, 5, 6), -1)], ids=["NC", "NCL", "NCHW", "NHWC"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
@pytest.mark.parametrize("relu", [False, True], ids=["lin", "relu"])
def test_training_steps_match_torch(torch1, rng, dtype, kind, shape, axis, momentum,
                                    relu):
    torch = torch1
    C = shape[axis]
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    mod = (torch.nn.BatchNorm1d if kind == "1d" else torch.nn.BatchNorm2d)(
        C, momentum=momentum).to(tdtype)
    bn = fastbn.BatchNorm(C, axis=axis, momentum=momentum, relu=relu, dtype=dtype)
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2, C).astype(dtype)))
        mod.bias.copy_(torch.from_numpy(rng.standard_normal(C).astype(dtype)))
    bn.load_state_dict(mod.state_dict())
    lr = 0.1
    f = 10 if dtype == np.float32 else 1e3
    for step in range(4):
        train = step < 3
        bn.train(train)
        mod.train(train)
        x = make_x(rng, shape, axis, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        xt = _to_t(torch, x, axis).requires_grad_(True)
        yt = mod(xt)
        if relu:
            yt = torch.relu(yt)
        yt.backward(_to_t(torch, dy, axis))
        y = bn(x)
        dx = bn.backward(dy)
        assert_close(y, _from_t(yt, axis), dtype, factor=f)
        assert_close(dx, _from_t(xt.grad, axis), dtype, factor=f)
        assert_close(bn.dgamma, mod.weight.grad.numpy(), dtype, factor=f)
        assert_close(bn.dbeta, mod.bias.grad.numpy(), dtype, factor=f)
        assert_close(bn.running_mean, mod.running_mean.numpy(), dtype, factor=f)
        assert_close(bn.running_var, mod.running_var.numpy(), dtype, factor=f)
        assert bn.num_batches_tracked == int(mod.num_batches_tracked)
        # plain SGD on both
        bn.gamma -= lr * bn.dgamma
        bn.beta -= lr * bn.dbeta
        with torch.no_grad():
            mod.weight -= lr * mod.weight.grad
            mod.bias -= lr * mod.bias.grad
        mod.zero_grad()
    assert bn.num_batches_tracked == 3


def test_torch_no_running_stats_eval_matches(torch1, rng):
    torch = torch1
    mod = torch.nn.BatchNorm2d(3, track_running_stats=False).eval()
    bn = fastbn.BatchNorm(3, track_running_stats=False).eval()
    x = make_x(rng, (4, 3, 5, 5), 1, np.float32)
    assert_close(bn(x), mod(torch.from_numpy(x)).detach().numpy(), np.float32,
                 factor=10)
    assert set(bn.state_dict()) == set(mod.state_dict()) == {"weight", "bias"}


def test_torch_state_dict_round_trip(torch1, rng):
    torch = torch1
    mod = torch.nn.BatchNorm2d(5, momentum=0.2)
    mod.train()
    for _ in range(3):
        mod(torch.randn(4, 5, 3, 3) * 2 + 1)
    with torch.no_grad():
        mod.weight.uniform_(0.5, 2)
        mod.bias.normal_()
    mod.weight.requires_grad_(True)
    bn = fastbn.BatchNorm(5, momentum=0.2)
    bn.load_state_dict(mod.state_dict())  # tensors, weight requires grad
    for k, v in mod.state_dict().items():
        np.testing.assert_array_equal(bn.state_dict()[k], v.numpy())
    assert bn.num_batches_tracked == 3
    # ours into a fresh torch module, then the same eval output
    mod2 = torch.nn.BatchNorm2d(5)
    mod2.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    assert int(mod2.num_batches_tracked) == 3
    x = make_x(rng, (2, 5, 4, 4), 1, np.float32)
    assert_close(bn.eval()(x), mod2.eval()(torch.from_numpy(x)).detach().numpy(),
                 np.float32, factor=10)
    # affine=False <-> center=False, scale=False
    plain = torch.nn.BatchNorm1d(5, affine=False)
    bnp = fastbn.BatchNorm(5, center=False, scale=False)
    bnp.load_state_dict(plain.state_dict())
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in bnp.state_dict().items()})
    with pytest.raises(KeyError):
        fastbn.BatchNorm(5).load_state_dict(plain.state_dict())
