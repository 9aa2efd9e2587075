"""fastbn.torch's modules and operators against PyTorch's batch norm (skipped
without torch)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
fbt = pytest.importorskip("fastbn.torch")
from torch import nn  # noqa: E402

F = nn.functional
pytestmark = pytest.mark.torch

STOCK = {fbt.BatchNorm1d: nn.BatchNorm1d, fbt.BatchNorm2d: nn.BatchNorm2d,
         fbt.BatchNorm3d: nn.BatchNorm3d}
CASES = [  # (class, shape, memory format)
    (fbt.BatchNorm1d, (9, 5), None),
    (fbt.BatchNorm1d, (4, 6, 7), None),
    (fbt.BatchNorm1d, (4, 6, 7), "last"),  # a (N, L, C) tensor transposed
    (fbt.BatchNorm2d, (3, 5, 4, 6), None),
    (fbt.BatchNorm2d, (3, 5, 4, 6), torch.channels_last),
    (fbt.BatchNorm2d, (3, 5, 4, 6), "strided"),
    (fbt.BatchNorm3d, (2, 3, 3, 4, 5), None),
    (fbt.BatchNorm3d, (2, 3, 3, 4, 5), torch.channels_last_3d),
]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-2,
       torch.bfloat16: 8e-2}


def make_input(shape, fmt, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    cs = (1, c) + (1,) * (len(shape) - 2)
    x = (torch.randn(shape, generator=g, dtype=torch.float64)
         * torch.empty(cs, dtype=torch.float64).uniform_(0.5, 2, generator=g)
         + torch.empty(cs, dtype=torch.float64).uniform_(-3, 3, generator=g))
    x = x.to(dtype)
    if fmt == "last":  # channels last in memory, not a torch memory format
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    elif fmt == "strided":  # neither contiguous nor channels-last
        x = torch.cat([x, x], dim=-1)[..., ::2]
    elif fmt is not None:
        x = x.contiguous(memory_format=fmt)
    return x


def close(a, b, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


def pair(cls, c, dtype=torch.float32, seed=1, **kw):
    """(fastbn module, stock module) with the same random state."""
    fast = cls(c, **kw)
    kw.pop("activation", None)
    stock = STOCK[cls](c, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if fast.weight is not None:
            fast.weight.uniform_(0.5, 2.0, generator=g)
            fast.weight[::3] *= -1
            fast.bias.normal_(generator=g)
        if fast.running_mean is not None:
            fast.running_mean.normal_(generator=g)
            fast.running_var.uniform_(0.5, 2.0, generator=g)
    stock.load_state_dict(fast.state_dict())
    return fast.to(dtype), stock.to(dtype)


def act_fn(activation):
    return {None: lambda y: y, "relu": F.relu, "relu6": F.relu6}[activation]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("cls,shape,fmt", CASES)
def test_matches_torch_module(cls, shape, fmt, affine, track, momentum):
    """Forward, input/weight/bias gradients and running statistics over three
    training steps and an eval step, as PyTorch's module."""
    fast, stock = pair(cls, shape[1], affine=affine, track_running_stats=track,
                       momentum=momentum)
    for step in range(4):
        if step == 3:
            fast.eval()
            stock.eval()
        x = make_input(shape, fmt, seed=step)
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        ya, yb = fast(xa), stock(xb)
        close(ya, yb, torch.float32)
        if fmt is not None:  # the output keeps the input's memory layout
            assert ya.stride() == xa.stride() or fmt == "strided"
        dy = make_input(shape, None, seed=10 + step)
        ya.backward(dy)
        yb.backward(dy)
        close(xa.grad, xb.grad, torch.float32, 10)
        if affine:
            close(fast.weight.grad, stock.weight.grad, torch.float32, 50)
            close(fast.bias.grad, stock.bias.grad, torch.float32, 50)
        for name, buf in stock.named_buffers():
            torch.testing.assert_close(getattr(fast, name), buf, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_activation_residual(activation, with_residual, training, fmt):
    """``act(BN(x) + residual)`` and its gradients (x, weight, bias,
    residual), ReLU6 with values above 6 included."""
    shape = (4, 6, 5, 5)
    fast, stock = pair(fbt.BatchNorm2d, 6, activation=activation)
    with torch.no_grad():  # wide outputs: both ReLU6 bounds are hit
        fast.weight.mul_(4)
    stock.load_state_dict(fast.state_dict())
    fast.train(training)
    stock.train(training)
    x = make_input(shape, fmt)
    z = make_input(shape, fmt, seed=5) if with_residual else None
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    za = zb = None
    if with_residual:
        za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ya = fast(xa, za)
    yb = stock(xb)
    if with_residual:
        yb = yb + zb
    yb = act_fn(activation)(yb)
    close(ya, yb, torch.float32)
    if activation == "relu6":
        assert (ya == 6).any() and (ya == 0).any()
    dy = make_input(shape, None, seed=7)
    ya.backward(dy)
    yb.backward(dy)
    close(xa.grad, xb.grad, torch.float32, 10)
    close(fast.weight.grad, stock.weight.grad, torch.float32, 50)
    close(fast.bias.grad, stock.bias.grad, torch.float32, 50)
    if with_residual:
        close(za.grad, zb.grad, torch.float32)
    for name, buf in stock.named_buffers():
        torch.testing.assert_close(getattr(fast, name), buf)


def test_activation_override_per_call():
    """``forward(..., activation=)`` overrides the module's for one call."""
    bn = fbt.BatchNorm2d(3)
    x = make_input((4, 3, 5, 5), None)
    assert (bn(x) < 0).any()
    assert (bn(x, activation="relu") >= 0).all()
    assert (fbt.BatchNorm2d(3, activation="relu6")(3 * x) <= 6).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
@pytest.mark.parametrize("half_params", [False, True])
def test_half(dtype, fmt, half_params):
    """float16 and bfloat16 inputs, with float32 parameters and running
    statistics (mixed precision) or with the whole module cast."""
    if dtype is torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    shape = (4, 5, 6, 6)
    fast, stock = pair(fbt.BatchNorm2d, 5, activation="relu")
    if half_params:
        fast, stock = fast.to(dtype), stock.to(dtype)
    x = make_input(shape, fmt, dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), F.relu(stock(xb))
    assert ya.dtype == dtype
    # both round once to the half type; compare with float64 PyTorch too
    ref = F.relu(copy.deepcopy(stock).double()(x.double()))
    close(ya, ref, dtype)
    close(ya, yb, dtype, 2)
    dy = make_input(shape, None, dtype, seed=3)
    ya.backward(dy)
    yb.backward(dy)
    assert xa.grad.dtype == dtype and fast.weight.grad.dtype == fast.weight.dtype
    # where y rounds to 0 in one and to a tiny positive value in the other,
    # the ReLU masks differ: compare the gradients away from the kink
    keep = yb.detach().double().abs() > 0.1
    close(xa.grad[keep], xb.grad[keep], dtype, 4)
    close(fast.bias.grad, stock.bias.grad, dtype, 20)
    for name, buf in stock.named_buffers():
        torch.testing.assert_close(getattr(fast, name).double(), buf.double(),
                                   rtol=TOL[dtype], atol=TOL[dtype])


def test_float64_gradcheck():
    """torch.autograd.gradcheck of the operators in float64 (training and
    eval, with ReLU, ReLU6 and a residual)."""
    g = torch.Generator().manual_seed(3)
    shape = (3, 4, 3, 2)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    z = torch.randn(shape, dtype=torch.float64, generator=g)
    w = torch.empty(4, dtype=torch.float64).uniform_(2, 5, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g)
    for act in (0, 1, 2):
        inputs = [t.clone().requires_grad_() for t in (x, w, b, z)]

        def train(x, w, b, z, act=act):
            return torch.ops.fastbn.bn_train(x, w, b, z, 1e-5, act, "")[0]
        assert torch.autograd.gradcheck(train, inputs)
        m, v = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + .5

        def infer(x, w, b, z, act=act):
            return torch.ops.fastbn.bn_infer(x, m, v, w, b, z, 1e-5, act)
        assert torch.autograd.gradcheck(infer, inputs)
        # the eager path of the modules (an autograd.Function) as well
        bn = fbt.BatchNorm2d(4, activation=(None, "relu", "relu6")[act]).double()
        xx = inputs[0]
        assert torch.autograd.gradcheck(lambda x, z: bn(x, z), (xx, inputs[3]))


def test_gradients_only_where_required():
    fast = fbt.BatchNorm2d(3)
    fast.weight.requires_grad_(False)
    x = make_input((4, 3, 2, 2), None).requires_grad_()
    fast(x).sum().backward()
    assert fast.weight.grad is None and fast.bias.grad is not None
    assert x.grad is not None
    x2 = make_input((4, 3, 2, 2), None)  # input without grad
    fast.bias.grad = None
    fast(x2).sum().backward()
    assert fast.bias.grad is not None and x2.grad is None


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode(ctx):
    fast, stock = pair(fbt.BatchNorm2d, 4)
    x = make_input((5, 4, 3, 3), None)
    with getattr(torch, ctx)():
        ya, yb = fast(x), stock(x)
    assert not ya.requires_grad
    close(ya, yb, torch.float32)
    torch.testing.assert_close(fast.running_var, stock.running_var)
    assert int(fast.num_batches_tracked) == 1
    # the running statistics stay usable outside (not inference tensors)
    fast(x)
    assert int(fast.num_batches_tracked) == 2


def test_state_dict_round_trip():
    """Keys, shapes and dtypes as PyTorch's; checkpoints load both ways."""
    for cls, stock_cls in STOCK.items():
        for kw in ({}, {"affine": False}, {"track_running_stats": False}):
            fast, stock = cls(7, **kw), stock_cls(7, **kw)
            sf, ss = fast.state_dict(), stock.state_dict()
            assert list(sf) == list(ss)
            for k in sf:
                assert sf[k].shape == ss[k].shape and sf[k].dtype == ss[k].dtype
            src = pair(cls, 7, **kw)[1]
            if src.running_mean is not None:
                src(make_input((6, 7, 3) if cls is fbt.BatchNorm1d else
                               (6, 7, 3, 3) if cls is fbt.BatchNorm2d else
                               (2, 7, 2, 2, 2), None))
            fast.load_state_dict(src.state_dict())
            stock.load_state_dict(fast.state_dict())
            for k, v in src.state_dict().items():
                assert torch.equal(fast.state_dict()[k], v)
                assert torch.equal(stock.state_dict()[k], v)


def test_same_constructor_and_subclass():
    bn = fbt.BatchNorm2d(8, eps=1e-3, momentum=None, affine=False,
                         track_running_stats=True, device="cpu",
                         dtype=torch.float64)
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.eps == 1e-3 and bn.momentum is None and bn.weight is None
    assert bn.running_mean.dtype == torch.float64
    assert "activation='relu'" in repr(fbt.BatchNorm1d(3, activation="relu"))
    s = fbt.SyncBatchNorm(4, activation="relu6")
    assert isinstance(s, nn.SyncBatchNorm) and s.process_group is None


def test_sync_without_process_group_is_plain_bn():
    fast, stock = pair(fbt.BatchNorm2d, 4)
    sync = fbt.SyncBatchNorm(4)
    sync.load_state_dict(fast.state_dict())
    x = make_input((5, 4, 3, 3), torch.channels_last)
    close(sync(x), stock(x), torch.float32)
    torch.testing.assert_close(sync.running_var, stock.running_var)


def test_other_devices_use_torch():
    """Tensors fastbn's kernels do not take (here on the meta device) run
    PyTorch's own batch norm, residual and activation included."""
    bn = fbt.BatchNorm2d(3, activation="relu", device="meta")
    x = torch.empty(2, 3, 4, 4, device="meta")
    y = bn(x, torch.empty(2, 3, 4, 4, device="meta"))
    assert y.device.type == "meta" and y.shape == x.shape


def test_broadcast_residual_falls_back():
    """Residuals fastbn's kernels do not take (another shape or dtype, a
    number) go through PyTorch's add."""
    fast, stock = pair(fbt.BatchNorm2d, 3, activation="relu")
    x = make_input((2, 3, 4, 4), None)
    for z in (torch.randn(3, 1, 1), x.double(), 0.5):
        close(fast(x, z), F.relu(stock(x) + z), torch.float32)


def test_errors():
    with pytest.raises(ValueError, match="activation"):
        fbt.BatchNorm2d(3, activation="gelu")
    bn = fbt.BatchNorm2d(3)
    with pytest.raises(ValueError, match="4D"):
        bn(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="at least 2 values"):
        bn(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="gamma"):
        bn(torch.randn(2, 4, 3, 3))  # 4 channels for 3
    with pytest.raises(ValueError, match="activation"):
        bn(torch.randn(2, 3, 3, 3), activation="tanh")


def test_channels_last_is_not_copied(monkeypatch):
    """A channels_last input reaches the kernel as the (N*H*W, C) block of
    its own memory, and the output is channels_last."""
    import fastbn
    from fastbn.torch import _ops
    seen = {}
    real = fastbn._api._train

    def spy(x, *args):
        seen["ptr"] = x.__array_interface__["data"][0]
        seen["shape"] = x.shape
        return real(x, *args)
    monkeypatch.setattr(_ops._api, "_train", spy)
    x = make_input((2, 3, 4, 5), torch.channels_last)
    y = fbt.BatchNorm2d(3)(x)
    assert seen["ptr"] == x.data_ptr() and seen["shape"] == (2, 4, 5, 3)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_opcheck():
    """torch.library.opcheck: schema, fake kernels, autograd registration
    and AOT dispatch of every operator."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g)
    xl = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(3, generator=g) + 0.5
    b = torch.randn(3, generator=g)
    z = torch.randn(4, 3, 5, 5, generator=g)
    m, v = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    ops = torch.ops.fastbn
    samples = [
        (ops.bn_train.default, (x.requires_grad_(), w.requires_grad_(), b, None,
                                1e-5, 1, "")),
        (ops.bn_train.default, (xl, None, None, z, 1e-5, 2, "")),
        (ops.bn_infer.default, (xl.requires_grad_(), m, v, w, b, z, 1e-5, 1)),
        (ops.bn_backward.default, (z, x.detach(), m, v, w, None, True, 0, False, "")),
        (ops.bn_backward.default, (z, xl.detach(), m, v, None, x.detach().relu(),
                                   False, 1, True, "")),
        (ops.update_running.default, (torch.zeros(3), torch.ones(3),
                                      torch.tensor(0), m, v.double(), 0.1)),
    ]
    for op, args in samples:
        if op is ops.bn_backward.default:
            # its own gradient raises (no double backward), which the AOT
            # dispatch test would take
            torch.library.opcheck(op, args, test_utils=(
                "test_schema", "test_autograd_registration", "test_faketensor"))
        else:
            torch.library.opcheck(op, args)


def test_double_backward_raises():
    x = make_input((4, 3, 2, 2), None).requires_grad_()
    y = fbt.BatchNorm2d(3)(x)
    with pytest.raises(NotImplementedError, match="double backward"):
        # in eager mode already when the gradient's graph is asked for
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        gx.sum().backward()
    # the operators' own backward raises when it is differentiated
    xo = x.detach().requires_grad_()
    yo = torch.ops.fastbn.bn_train(xo, None, None, None, 1e-5, 0, "")[0]
    (gx,) = torch.autograd.grad(yo.pow(2).sum(), xo, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gx.sum().backward()


@pytest.mark.slow
def test_compile_fullgraph():
    """A small conv + BN + ReLU + residual model under
    torch.compile(fullgraph=True): the same output, gradients and running
    statistics as eager, training and eval."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = fbt.BatchNorm2d(4, activation="relu")

        def forward(self, x):
            return self.bn(self.conv(x), x)

    torch.manual_seed(0)
    eager = Net()
    comp = copy.deepcopy(eager)
    fn = torch.compile(comp, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 4, 6, 6)
    for training in (True, False):
        eager.train(training)
        comp.train(training)
        ya, yb = eager(x), fn(x)
        close(yb, ya, torch.float32)
        ya.sum().backward()
        yb.sum().backward()
        close(comp.conv.weight.grad, eager.conv.weight.grad, torch.float32, 10)
        close(comp.bn.weight.grad, eager.bn.weight.grad, torch.float32, 10)
        torch.testing.assert_close(comp.bn.running_var, eager.bn.running_var)
        assert int(comp.bn.num_batches_tracked) == int(eager.bn.num_batches_tracked)


def _saved_big(fn, x):
    """What ``fn()`` saves for the backward: the number of saved tensors of
    x's size, and fn's output."""
    big = []

    def pack(t):
        if t.numel() == x.numel():
            big.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn()
    return len(big), y


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_activation_keeps_one_tensor(activation, affine, dtype):
    """BN -> activation without a residual keeps x alone for the backward
    (its mask rebuilt from x, bias and mean_lo), in the eager path and the
    operator's autograd, with gradients bitwise those of the mask from y;
    with a residual y is kept as well."""
    act = fbt._ops.activation_code(activation)
    bn = fbt.BatchNorm2d(6, affine=affine, activation=activation)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(2, 5)  # both ReLU6 bounds are hit
            bn.bias.uniform_(-1, 1)
    x = make_input((4, 6, 5, 5), None, dtype).requires_grad_()
    n, y = _saved_big(lambda: bn(x), x)
    assert n == 1
    n_op, y_op = _saved_big(lambda: torch.ops.fastbn.bn_train(
        x, bn.weight, bn.bias, None, 1e-5, act, "")[0], x)
    assert n_op == 1
    z = make_input((4, 6, 5, 5), None, dtype, seed=4)
    assert _saved_big(lambda: bn(x, z), x)[0] == 2
    dy = make_input((4, 6, 5, 5), None, dtype, seed=7)
    (gx,) = torch.autograd.grad(y, x, dy)
    (gx_op,) = torch.autograd.grad(y_op, x, dy)
    # the mask from y, through the operator
    xd = x.detach()
    _, mean, invstd, _, lo = torch.ops.fastbn.bn_train(xd, bn.weight, bn.bias, None,
                                                       1e-5, act, "")
    w = None if bn.weight is None else bn.weight.detach()
    dx_y = torch.ops.fastbn.bn_backward(dy, xd, mean, invstd, w, y.detach(), True,
                                        act, False, "")[0]
    b = None if bn.bias is None else bn.bias.detach()
    dx_x = torch.ops.fastbn.bn_backward(dy, xd, mean, invstd, w, None, True, act,
                                        False, "", b, lo)[0]
    assert (y == 0).any() and (y > 0).any()
    for g in (gx, gx_op, dx_x):
        assert torch.equal(g, dx_y)
    # a wrong mean_lo or bias gives another mask: the arguments are used
    if affine:
        wrong = torch.ops.fastbn.bn_backward(dy, xd, mean, invstd, w, None, True, act,
                                             False, "", b + 0.5, lo)[0]
        assert not torch.equal(wrong, dx_y)
