"""PyTorch models and timings for ``python -m fastbn.bench --torch``.

Hand-written ResNet-18, ResNet-50 and MobileNetV2 with torchvision's
structure (a ResNet block calls one shared ``nn.ReLU`` at two or three
sites and adds the shortcut in place, ``out += identity``; MobileNetV2 has
ReLU6 after its expansion and depthwise convolutions and a linear
bottleneck ``x + conv(x)``), so torchvision is not needed.  The timings
run stock and fastbn-converted models, eager and ``torch.compile``d, side
by side in one process, interleaved round by round, and report the best
round of each with the ratio to stock eager.
"""
import copy
import time

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50",
           "InvertedResidual", "MobileNetV2", "mobilenet_v2", "MODELS",
           "call_overhead", "operator_times", "sync_cost", "model_times", "run"]

try:
    import torch
    from torch import nn
except ImportError:  # the module is importable without torch; run() needs it
    torch = nn = None


def _conv_bn(cin, cout, k, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


if nn is not None:
    class BasicBlock(nn.Module):
        """ResNet's basic block (torchvision's structure)."""
        expansion = 1

        def __init__(self, cin, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class Bottleneck(nn.Module):
        """ResNet's bottleneck block (torchvision's structure, stride on the
        3x3 convolution)."""
        expansion = 4

        def __init__(self, cin, planes, stride=1, downsample=None):
            super().__init__()
            width = planes
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class ResNet(nn.Module):
        """torchvision's ResNet: ``layers`` blocks per stage."""

        def __init__(self, block, layers, num_classes=1000, width=64):
            super().__init__()
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages = []
            for i, n in enumerate(layers):
                stages.append(self._stage(block, width * 2 ** i, n, 1 if i == 0 else 2))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        def _stage(self, block, planes, n, stride):
            down = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                down = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                              bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(self.inplanes, planes, stride, down)]
            self.inplanes = planes * block.expansion
            blocks += [block(self.inplanes, planes) for _ in range(1, n)]
            return nn.Sequential(*blocks)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class InvertedResidual(nn.Module):
        """MobileNetV2's inverted residual (torchvision's structure): 1x1
        expansion + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection,
        and ``x + conv(x)`` when the shape is kept."""

        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.use_res_connect = stride == 1 and cin == cout
            layers = []
            if expand != 1:
                layers.append(_conv_bn(cin, hidden, 1))
            layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            if self.use_res_connect:
                return x + self.conv(x)
            return self.conv(x)

    class MobileNetV2(nn.Module):
        """torchvision's MobileNetV2 (width 1.0)."""
        SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

        def __init__(self, num_classes=1000):
            super().__init__()
            cin = 32
            feats = [_conv_bn(3, cin, 3, 2)]
            for t, c, n, s in self.SETTING:
                for i in range(n):
                    feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            feats.append(_conv_bn(cin, 1280, 1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))


def resnet18(num_classes=1000):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes=1000):
    """ResNet-50 (Bottleneck, [3, 4, 6, 3])."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def mobilenet_v2(num_classes=1000):
    """MobileNetV2 (width 1.0)."""
    return MobileNetV2(num_classes)


#: name -> (constructor, batch, image size) of the benchmark's models
MODELS = {
    "resnet18": (resnet18, 16, 112),
    "resnet50": (resnet50, 16, 112),
    "mobilenet_v2": (mobilenet_v2, 32, 128),
}


# ----------------------------------------------------------------- timing

def _best(fns, rounds, inner=1):
    """Best time (s) per call of each function in ``fns`` (name -> f),
    interleaved: every round calls each once (``inner`` times), so that a
    noisy neighbour slows all of them alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            best[k] = min(best[k], (time.perf_counter() - t0) / inner)
    return best


def call_overhead(rounds=30, inner=300):
    """Per-call time (us) of a (8, 16, 8, 8) float32 training forward + ReLU:
    fastbn's NumPy call, fastbn.torch's module and operator, PyTorch's
    module + ReLU and ``F.batch_norm`` + ReLU; with and without autograd.
    Returns a list of (name, us)."""
    import fastbn
    import fastbn.torch as fbt
    F = nn.functional
    x = torch.randn(8, 16, 8, 8)
    xn = x.numpy()
    fast = fbt.BatchNorm2d(16, activation="relu")
    stock = nn.BatchNorm2d(16)
    w, b = stock.weight.detach(), stock.bias.detach()
    rm, rv = torch.zeros(16), torch.ones(16)
    relu = nn.ReLU()
    wn, bn = w.numpy(), b.numpy()
    grad = {
        "fastbn.torch.BatchNorm2d(activation='relu'), autograd": lambda: fast(x),
        "torch BatchNorm2d + ReLU, autograd": lambda: relu(stock(x)),
    }
    nograd = {
        "fastbn.batch_norm_train(relu=True) (NumPy)":
            lambda: fastbn.batch_norm_train(xn, wn, bn, relu=True),
        "torch.ops.fastbn.bn_train (operator)":
            lambda: torch.ops.fastbn.bn_train(x, w, b, None, 1e-5, 1, ""),
        "fastbn.torch.BatchNorm2d(activation='relu'), no_grad": lambda: fast(x),
        "torch BatchNorm2d + ReLU, no_grad": lambda: relu(stock(x)),
        "F.batch_norm + relu, no_grad":
            lambda: F.relu(F.batch_norm(x, rm, rv, w, b, True)),
    }
    out = list(_best(grad, rounds, inner).items())
    with torch.no_grad():
        out += list(_best(nograd, rounds, inner).items())
    return [(k, v * 1e6) for k, v in out]


def operator_times(shapes=((16, 64, 56, 56), (16, 256, 14, 14), (32, 96, 32, 32)),
                   rounds=10):
    """Forward and backward of one BN + ReLU call, fastbn.torch against
    PyTorch (module + ReLU, autograd), NCHW and channels_last.  Returns
    rows (shape, memory format, pass, torch ms, fastbn ms)."""
    import fastbn.torch as fbt
    rows = []
    for shape in shapes:
        for fmt in ("nchw", "channels_last"):
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            x = torch.randn(shape).contiguous(memory_format=mf).requires_grad_()
            stock = nn.Sequential(nn.BatchNorm2d(shape[1]), nn.ReLU())
            fast = fbt.BatchNorm2d(shape[1], activation="relu")
            g = torch.randn(shape).contiguous(memory_format=mf)
            ys = {"torch": stock(x), "fastbn": fast(x)}
            fwd = _best({"torch": lambda: stock(x), "fastbn": lambda: fast(x)}, rounds)

            def bwd(k):
                return lambda: torch.autograd.grad(ys[k], (x,), g, retain_graph=True)
            bw = _best({k: bwd(k) for k in ys}, rounds)
            rows.append((shape, fmt, "forward", fwd["torch"] * 1e3, fwd["fastbn"] * 1e3))
            rows.append((shape, fmt, "backward", bw["torch"] * 1e3, bw["fastbn"] * 1e3))
    return rows


def _sync_rank(rank, world, port, shape, rounds, out):
    """One rank of ``sync_cost`` (torch.multiprocessing.spawn target)."""
    import datetime

    import torch.distributed as dist

    import fastbn
    import fastbn.torch as fbt
    torch.set_num_threads(1)
    fastbn.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        x = torch.randn(shape).requires_grad_()
        dy = torch.randn(shape)
        mods = {"local": fbt.BatchNorm2d(shape[1]), "sync": fbt.SyncBatchNorm(shape[1])}

        def step(m):
            def f():
                y = m(x)
                torch.autograd.grad(y, (x,), dy)
            return f
        best = _best({k: step(m) for k, m in mods.items()}, rounds)
        # the time in the collectives (status and data exchanges, waiting
        # for the other rank included) per synchronised step
        from fastbn.torch import _sync
        group = _sync.comm(_sync.comm_key(None))
        group.seconds = 0.0
        f = step(mods["sync"])
        t0 = time.perf_counter()
        for _ in range(rounds):
            f()
        total = time.perf_counter() - t0
        best["exchange share"] = group.seconds / (total - group.seconds)
        best["collectives"] = _collectives(group, shape[1], rounds)
        if rank == 0:
            torch.save(best, out)
    finally:
        dist.destroy_process_group()
    # The results are saved: leave without the interpreter's teardown, where
    # a rank sometimes aborts ("terminate called without an active
    # exception": gloo's threads meeting the interpreter's exit).  A rank
    # that fails before this point still fails the job.
    import os
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _collectives(group, C, rounds):
    """Best time (s) of one step's collectives, as the synchronised forward
    and backward make them (a status Allreduce(MAX) of 7 int64 each, the
    forward's Allgather of 2C+1 doubles, the backward's Allreduce(SUM) of
    2C+1 doubles), run back to back after a barrier: their own cost, without
    the wait for a rank that is still computing."""
    import numpy as np
    import torch.distributed as dist
    names = group.fastbn_mpi
    head = np.zeros(7, np.int64)
    send = np.ones(2 * C + 1)
    parts = np.zeros((group.Get_size(), 2 * C + 1))
    buf = np.ones(2 * C + 1)
    best = float("inf")
    for _ in range(rounds):
        dist.barrier(group=group.group)
        t0 = time.perf_counter()
        group.Allreduce(names.IN_PLACE, [head, names.INT64_T], names.MAX)
        group.Allgather([send, names.DOUBLE], [parts, names.DOUBLE])
        group.Allreduce(names.IN_PLACE, [head, names.INT64_T], names.MAX)
        group.Allreduce(names.IN_PLACE, [buf, names.DOUBLE], names.SUM)
        best = min(best, time.perf_counter() - t0)
    return best


def sync_cost(shape=(32, 64, 56, 56), world=2, rounds=10):
    """Forward + backward of fastbn.torch.SyncBatchNorm against the same
    local batch norm, per rank, in a ``world``-process gloo job on
    127.0.0.1 (one thread each).  Returns (local ms, sync ms, the time in
    the collectives over the rest of the synchronised step's time, the
    collectives' own time back to back in ms)."""
    import os
    import socket
    import tempfile

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sync.pt")
        mp.spawn(_sync_rank, (world, port, shape, rounds, out), nprocs=world)
        best = torch.load(out)
    return (best["local"] * 1e3, best["sync"] * 1e3, best["exchange share"],
            best["collectives"] * 1e3)


def _on_threads(f, torch_threads):
    """``f`` run with fastbn's kernels on PyTorch's threads or on fastbn's
    own (``fastbn.torch.use_torch_threads``); the setting is restored."""
    from fastbn.torch import _team

    def g():
        old = _team.torch_threads_on()
        _team.use_torch_threads(torch_threads)
        try:
            f()
        finally:
            _team.use_torch_threads(old)
    return g


def _variants(name, fmt, compiled, team=False):
    """variant -> (train step, eval step) for the model ``name``; with
    ``team`` the converted eager model both on PyTorch's threads (the
    default, ``fastbn.torch.use_torch_threads``) and on fastbn's own."""
    import fastbn.torch as fbt
    make, batch, size = MODELS[name]
    torch.manual_seed(0)
    base = make()
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    base = base.to(memory_format=mf)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=mf)
    target = torch.randint(0, 1000, (batch,))
    models = {"stock eager": base,
              "fastbn eager": fbt.convert(copy.deepcopy(base))}
    if compiled:
        models["stock compiled"] = copy.deepcopy(base)
        models["fastbn compiled"] = fbt.convert(copy.deepcopy(base))
    out = {}
    for k, m in models.items():
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        fwd = torch.compile(m) if k.endswith("compiled") else m
        loss_fn = nn.CrossEntropyLoss()

        def train(m=m, fwd=fwd, opt=opt):
            m.train()
            opt.zero_grad(set_to_none=True)
            loss_fn(fwd(x), target).backward()
            opt.step()

        def evaluate(m=m, fwd=fwd):
            m.eval()
            with torch.no_grad():
                fwd(x)
        out[k] = (train, evaluate)
    if team:
        eager = out["fastbn eager"]
        out["fastbn eager"] = tuple(_on_threads(f, True) for f in eager)
        out["fastbn eager, own threads"] = tuple(_on_threads(f, False) for f in eager)
    return out


def model_times(names=tuple(MODELS), formats=("nchw", "channels_last"),
                threads=(1, 2), compiled=True, rounds=3, progress=print):
    """Training step (forward, backward, SGD) and eval step of each model,
    stock eager / fastbn eager (at 2+ threads also on fastbn's own threads) /
    stock compiled / fastbn compiled side by side; ``compiled``: True
    (every model), False, or the names of the models that are compiled too
    (compiling is most of the run time).  Returns rows (model, format,
    threads, step, variant, ms)."""
    rows = []
    old = torch.get_num_threads()
    import fastbn
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            fastbn.set_num_threads(nt)
            for name in names:
                for fmt in formats:
                    progress(f"  {name} {fmt} {nt} thread(s)...")
                    comp = compiled if isinstance(compiled, bool) else name in compiled
                    v = _variants(name, fmt, comp, team=nt > 1)
                    for step, idx in (("train", 0), ("eval", 1)):
                        fns = {k: f[idx] for k, f in v.items()}
                        for f in fns.values():  # warm up (and compile)
                            f()
                            f()
                        for k, t in _best(fns, rounds).items():
                            rows.append((name, fmt, nt, step, k, t * 1e3))
    finally:
        torch.set_num_threads(old)
        fastbn.set_num_threads(None)
    return rows


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def run(quick=False, threads=None, progress=print):
    """The whole ``--torch`` report as Markdown text (model steps at 1 and
    ``threads`` threads, default 2; one thread and fewer, smaller models
    with ``quick``)."""
    if torch is None:
        raise ImportError("python -m fastbn.bench --torch needs PyTorch: pip install torch")
    import fastbn.torch  # noqa: F401 (registers the operators)
    parts = ["## fastbn in PyTorch",
             "",
             "Timed side by side in one process, interleaved round by round "
             "(best round). Ratios < 1: fastbn faster.", ""]
    progress("call overhead...")
    ov = call_overhead(rounds=5 if quick else 30, inner=100 if quick else 300)
    parts += ["### Call overhead, (8,16,8,8) float32 training forward + ReLU", "",
              _table(["call", "us"], [(k, f"{v:.1f}") for k, v in ov]), ""]
    progress("operators...")
    shapes = ((8, 64, 56, 56),) if quick else ((16, 64, 56, 56), (16, 256, 14, 14),
                                                 (32, 96, 32, 32))
    op = operator_times(shapes, rounds=3 if quick else 10)
    parts += ["### One BN + ReLU call (module, autograd)", "",
              _table(["shape", "format", "pass", "torch ms", "fastbn ms", "ratio"],
                     [(s, f, p, f"{a:.3f}", f"{b:.3f}", f"{b / a:.2f}")
                      for s, f, p, a, b in op]), ""]
    progress("SyncBatchNorm...")
    sshape = (8, 64, 28, 28) if quick else (32, 64, 56, 56)
    local, sync, share, coll = sync_cost(sshape, 2, rounds=2 if quick else 10)
    parts += ["### SyncBatchNorm, 2 processes (gloo), forward + backward per rank", "",
              "Exchange: time in the collectives (waiting for the other rank "
              "included) over the rest of the synchronised step; collectives: "
              "one step's four collectives back to back after a barrier (their "
              "own cost), over the local step.", "",
              _table(["shape per rank", "local BN ms", "SyncBatchNorm ms",
                      "exchange / local kernels", "collectives ms",
                      "collectives / local"],
                     [(sshape, f"{local:.2f}", f"{sync:.2f}", f"{share:.1%}",
                       f"{coll:.3f}", f"{coll / local:.1%}")]), ""]
    progress("models...")
    rows = model_times(names=("resnet18",) if quick else tuple(MODELS),
                       formats=("nchw",) if quick else ("nchw", "channels_last"),
                       threads=(1,) if quick else tuple(sorted({1, threads or 2})),
                       # ResNet-50 eager only: compiling it would double
                       # the run time
                       compiled=False if quick else ("resnet18", "mobilenet_v2"),
                       rounds=1 if quick else 3, progress=progress)
    table = []
    keys = {}
    for name, fmt, nt, step, k, ms in rows:
        keys.setdefault((name, fmt, nt, step), {})[k] = ms
    variants = ["stock eager", "fastbn eager", "fastbn eager, own threads",
                "stock compiled", "fastbn compiled"]
    for (name, fmt, nt, step), d in keys.items():
        base = d["stock eager"]
        cells = []
        for k in variants:
            cells.append(f"{d[k]:.1f} ({d[k] / base:.2f}x)" if k in d else "-")
        comp = (f"{d['fastbn compiled'] / d['stock compiled']:.2f}"
                if "stock compiled" in d else "-")
        table.append((name, fmt, nt, step, *cells, comp))
    parts += ["### Model steps (ms; ratio to stock eager)", "",
              _table(["model", "format", "threads", "step", *variants,
                      "fastbn/stock compiled"], table), ""]
    return "\n".join(parts)
