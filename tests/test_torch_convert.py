"""fastbn.torch.convert / revert on ResNet and MobileNetV2 structures
(written here and in fastbn.bench.torch_models; torchvision is not needed)."""
import copy
import operator
import warnings

import pytest

torch = pytest.importorskip("torch")
fbt = pytest.importorskip("fastbn.torch")
from torch import fx, nn  # noqa: E402

from fastbn.bench import torch_models as tm  # noqa: E402

F = nn.functional
pytestmark = pytest.mark.torch


class BlockAddFirst(nn.Module):
    """identity + bn(x) (the BN second), F.relu, hardtanh(0, 6)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act = nn.Hardtanh(0.0, 6.0)

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)), 0.0, 6.0)
        return F.relu(x + self.bn2(self.conv2(out)))


class Relu6Fn(nn.Module):
    """F.relu6 after a BN, torch.relu after an add, and a BN whose output is
    used twice (must not be fused)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.bn2 = nn.BatchNorm2d(c)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        a = F.relu6(self.bn1(self.conv(x)))
        b = torch.relu(self.bn2(a) + x)
        c = self.bn3(b)
        return F.relu(c) + c  # c has two uses


class Untraceable(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace
            return self.relu(self.bn(x))
        return self.bn(x)


def small_resnet(block):
    return tm.ResNet(block, [1, 1, 1, 1], num_classes=10, width=8)


def small_mobilenet():
    torch.manual_seed(0)
    return nn.Sequential(tm.InvertedResidual(8, 8, 1, 6), tm.InvertedResidual(8, 12, 2, 6),
                         tm.InvertedResidual(12, 12, 1, 6))


MODELS = {
    "basic": (lambda: small_resnet(tm.BasicBlock), (4, 3, 32, 32)),
    "bottleneck": (lambda: small_resnet(tm.Bottleneck), (4, 3, 32, 32)),
    "mobilenet": (small_mobilenet, (4, 8, 12, 12)),
    "add-first": (lambda: BlockAddFirst(6), (3, 6, 7, 7)),
    "relu6-fn": (lambda: Relu6Fn(5), (3, 5, 6, 6)),
}


def fused_calls(gm):
    return [n for n in gm.graph.nodes if n.op == "call_module" and
            (n.kwargs or len(n.args) > 1)]


def randomise_bn(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0, generator=g)
                m.bias.normal_(generator=g)
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)


def check_same(stock, conv, shape, fmt=torch.contiguous_format):
    """Outputs, gradients (every parameter and the input) and state after a
    training step and an eval step."""
    for training in (True, False):
        stock.train(training)
        conv.train(training)
        x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = stock(xa), conv(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
        dy = torch.randn_like(ya)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-9, atol=1e-9)
        pa, pb = dict(stock.named_parameters()), dict(conv.named_parameters())
        assert list(pa) == list(pb)
        for k in pa:
            torch.testing.assert_close(pb[k].grad, pa[k].grad, rtol=1e-9, atol=1e-9)
        sa, sb = stock.state_dict(), conv.state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(MODELS))
def test_convert_same_function(name, fmt):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    stock = make().double()
    randomise_bn(stock)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    stock = stock.to(memory_format=mf)
    conv = fbt.convert(copy.deepcopy(stock))
    assert not any(type(m) in (nn.BatchNorm2d,) for m in conv.modules())
    assert isinstance(conv, fx.GraphModule)
    check_same(stock, conv, shape, mf)


def test_fusion_sites():
    """What is fused, call by call: ResNet's shared ReLU at every site,
    ``out += identity`` with the ReLU after it, MobileNet's ReLU6 and its
    linear bottleneck ``x + conv(x)``; a BN output with two uses is not."""
    conv = fbt.convert(small_resnet(tm.BasicBlock))
    fused = {n.target: (len(n.args), n.kwargs.get("activation"))
             for n in fused_calls(conv)}
    assert fused["bn1"] == (1, "relu")
    assert fused["layer1.0.bn1"] == (1, "relu")
    assert fused["layer1.0.bn2"] == (2, "relu")  # out += identity; relu
    assert fused["layer2.0.bn2"] == (2, "relu")  # identity = downsample(x)
    assert "layer2.0.downsample.1" not in fused  # its output is the residual
    # the shared nn.ReLU calls are all gone, the iadds too
    assert not [n for n in conv.graph.nodes if n.op == "call_module"
                and n.target.endswith("relu")]
    assert not [n for n in conv.graph.nodes if n.target is operator.iadd]

    conv = fbt.convert(small_mobilenet())
    fused = {n.target: (len(n.args), n.kwargs.get("activation"))
             for n in fused_calls(conv)}
    assert fused["0.conv.0.1"] == (1, "relu6")
    assert fused["0.conv.1.1"] == (1, "relu6")
    assert fused["0.conv.3"] == (2, None)  # x + conv(x), linear
    assert "1.conv.3" not in fused  # stride 2: no residual

    conv = fbt.convert(Relu6Fn(5))
    fused = {n.target: (len(n.args), n.kwargs.get("activation"))
             for n in fused_calls(conv)}
    assert fused == {"bn1": (1, "relu6"), "bn2": (2, "relu")}
    class Methods(nn.Module):  # nn.Hardtanh(0, 6) and Tensor.relu()
        def __init__(self):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
            self.act, self.other = nn.Hardtanh(0.0, 6.0), nn.Hardtanh(-1.0, 1.0)

        def forward(self, x):
            return self.bn2(self.act(self.bn1(x))).relu() + self.other(x)
    conv = fbt.convert(Methods())
    fused = {n.target: (len(n.args), n.kwargs.get("activation"))
             for n in fused_calls(conv)}
    assert fused == {"bn1": (1, "relu6"), "bn2": (1, "relu")}
    conv = fbt.convert(BlockAddFirst(4))
    fused = {n.target: (len(n.args), n.kwargs.get("activation"))
             for n in fused_calls(conv)}
    assert fused == {"bn1": (1, "relu6"), "bn2": (2, "relu")}


def test_same_parameter_objects_and_optimizer():
    """convert keeps the Parameter and buffer objects: an optimizer built
    before still trains the converted model."""
    torch.manual_seed(0)
    model = small_resnet(tm.BasicBlock)
    params = {k: v for k, v in model.named_parameters()}
    bufs = {k: v for k, v in model.named_buffers()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conv = fbt.convert(model)
    for k, v in conv.named_parameters():
        assert v is params[k]
    for k, v in conv.named_buffers():
        assert v is bufs[k]
    before = conv.bn1.weight.detach().clone()
    conv(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert not torch.equal(conv.bn1.weight, before)


def test_untraceable_model_swapped_with_warning():
    model = Untraceable(3)
    with pytest.warns(UserWarning, match="could not be traced.*nothing was fused"):
        conv = fbt.convert(model)
    assert conv is model and isinstance(conv.bn, fbt.BatchNorm2d)
    assert conv.bn.activation is None
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(conv(x.abs()), torch.relu(
        F.batch_norm(x.abs(), None, None, conv.bn.weight, conv.bn.bias, True)))


def test_convert_options():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.BatchNorm1d(4) if False else nn.Identity())
    plain = fbt.convert(copy.deepcopy(model), fuse=False)
    assert type(plain) is nn.Sequential and isinstance(plain[1], fbt.BatchNorm2d)
    sync = fbt.convert(copy.deepcopy(model), sync=True)
    assert isinstance(sync.get_submodule("1"), fbt.SyncBatchNorm)
    one = fbt.convert(nn.BatchNorm3d(5))
    assert type(one) is fbt.BatchNorm3d
    stock_sync = fbt.convert(nn.SyncBatchNorm(4))
    assert type(stock_sync) is fbt.SyncBatchNorm
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fbt.convert("resnet")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fbt.revert(None)


@pytest.mark.parametrize("name", ["basic", "mobilenet", "relu6-fn"])
def test_revert(name):
    """revert gives PyTorch's modules back, the same function, state_dict
    and Parameter objects."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    stock = make().double()
    randomise_bn(stock)
    conv = fbt.convert(copy.deepcopy(stock))
    back = fbt.revert(conv)
    assert not any(isinstance(m, (fbt.BatchNorm2d, fbt.SyncBatchNorm))
                   for m in back.modules())
    assert not fused_calls(back)
    assert dict(back.named_parameters()).keys() == dict(stock.named_parameters()).keys()
    check_same(stock, back, shape)


def test_revert_module_activation():
    bn = fbt.BatchNorm2d(3, activation="relu6")
    back = fbt.revert(nn.Sequential(bn))
    assert isinstance(back[0], nn.Sequential)
    assert type(back[0][0]) is nn.BatchNorm2d and type(back[0][1]) is nn.ReLU6
    assert back[0][0].weight is bn.weight


@pytest.mark.slow
def test_compile_converted_resnet_block():
    """A converted (fused) model under torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    stock = small_resnet(tm.BasicBlock)
    conv = fbt.convert(copy.deepcopy(stock))
    comp = torch.compile(conv, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ya, yb = stock(x), comp(x)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(conv.layer1[0].bn2.weight.grad,
                               stock.layer1[0].bn2.weight.grad, rtol=1e-3, atol=1e-3)
