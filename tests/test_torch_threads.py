"""fastbn.torch beside PyTorch's threads: fastbn's kernels on PyTorch's
OpenMP team (use_torch_threads), and the eager path's cached NumPy views
of a module's tensors (skipped without torch)."""
import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
fbt = pytest.importorskip("fastbn.torch")
import fastbn  # noqa: E402
from fastbn import _kernels  # noqa: E402
from fastbn.torch import _team  # noqa: E402

pytestmark = pytest.mark.torch

needs_team = pytest.mark.skipif(
    _kernels.openmp_version() == 0 or _team.torch_openmp_runtime() is None,
    reason="no OpenMP, or PyTorch's OpenMP runtime is not a libgomp-ABI one")


@needs_team
def test_on_after_import():
    assert fbt._team.torch_threads_on()


@needs_team
def test_show_config_names_the_threads():
    """config() and show_config() say whose threads run the pool's jobs."""
    import io
    try:
        assert fastbn._threads.config()["scheduler"] == "pool on torch"
        buf = io.StringIO()
        fastbn.show_config(file=buf)
        assert "on PyTorch's OpenMP threads" in buf.getvalue()
        fbt.use_torch_threads(False)
        assert fastbn._threads.config()["scheduler"] == "pool"
    finally:
        fbt.use_torch_threads(True)


def test_use_torch_threads_checks_its_argument():
    with pytest.raises(TypeError, match="enable must be True or False"):
        fbt.use_torch_threads(1)


def test_set_team_needs_all_addresses():
    with pytest.raises(ValueError, match="all three addresses or none"):
        _kernels.set_team(1, 0, 0)


@needs_team
def test_torch_runtime_is_found_and_loaded():
    path, addrs = _team.torch_openmp_runtime()
    assert os.path.basename(path).startswith("libtorch_cpu")
    assert len(addrs) == 3 and all(isinstance(a, int) and a > 0 for a in addrs)


@needs_team
@pytest.mark.parametrize("nthreads", [2, 3])
def test_results_on_torch_threads_are_the_same_bits(nthreads):
    # large enough for the pool (several MB), channel-first and -last,
    # training forward with ReLU and the backward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 24, 40, 40)).astype(np.float32) * 3 + 1
    dy = rng.standard_normal(x.shape).astype(np.float32)
    g = rng.uniform(0.5, 2, 24).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)

    def run():
        out = []
        for a, axis in ((x, 1), (np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1)):
            d = dy if axis == 1 else np.ascontiguousarray(np.moveaxis(dy, 1, -1))
            y, mean, invstd = fastbn.batch_norm_train(a, g, b, axis=axis, relu=True)
            dx, dg, db = fastbn.batch_norm_backward(d, a, mean, invstd, g, axis=axis,
                                                    y=y, activation="relu")
            out += [y, mean, invstd, dx, dg, db]
        return out
    fastbn.set_num_threads(nthreads)
    try:
        assert fbt.use_torch_threads(False) is False
        ref = run()
        assert fbt.use_torch_threads(True) is True
        got = run()
    finally:
        fastbn.set_num_threads(None)
        fbt.use_torch_threads(True)
    for r, o in zip(ref, got):
        assert r.dtype == o.dtype
        np.testing.assert_array_equal(r.view(np.uint8), o.view(np.uint8))


@needs_team
def test_kernels_run_on_torch_threads_not_fastbn_helpers():
    # a fresh process: after import fastbn.torch (use_torch_threads on) a
    # 2-thread call starts no helper of fastbn's pool (PyTorch's team runs
    # it); with use_torch_threads(False) the pool starts its helper
    code = textwrap.dedent("""
        import threading
        import numpy as np
        import torch
        import fastbn
        import fastbn.torch as fbt
        from fastbn import _kernels
        torch.set_num_threads(2)
        fastbn.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal((32, 64, 32, 32)).astype(np.float32)
        for _ in range(5):
            y = fastbn.batch_norm_train(x)[0]
        a = _kernels.pool_threads()
        fbt.use_torch_threads(False)
        z = fastbn.batch_norm_train(x)[0]
        b = _kernels.pool_threads()
        print(a, b, bool((y == z).all()))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "True"]


@needs_team
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_goes_back_to_fastbn_pool():
    # after the parent ran jobs on PyTorch's team, libgomp would hang in a
    # forked child's parallel region: the child uses fastbn's own pool
    code = textwrap.dedent("""
        import os, sys
        import numpy as np
        import torch
        import fastbn
        import fastbn.torch as fbt
        from fastbn import _kernels
        from fastbn.torch import _team
        torch.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal((32, 64, 32, 32)).astype(np.float32)
        with fastbn.num_threads(2):
            ref = fastbn.batch_norm_train(x)[0]
            assert _team.torch_threads_on() and _kernels.pool_threads() == 0
            pid = os.fork()
            if pid == 0:
                y = fastbn.batch_norm_train(x)[0]
                ok = (np.array_equal(y, ref) and not _team.torch_threads_on()
                      and _kernels.pool_threads() >= 1)
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            y = fastbn.batch_norm_train(x)[0]
            assert _team.torch_threads_on() and np.array_equal(y, ref)
        sys.exit(os.WEXITSTATUS(status))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def _step(bn, x):
    y = bn(x)
    y.sum().backward()
    return y


def test_views_follow_replaced_parameters_and_buffers():
    # the eager path keeps NumPy views of the module's tensors: replacing
    # a tensor (or its memory with .data) must be seen at once
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5) * 2 + 1
    fast, stock = fbt.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    for step in range(4):
        if step == 1:  # new memory behind the same objects
            for m in (fast, stock):
                m.weight.data = torch.full((4,), 1.5)
                m.running_mean.data = torch.full((4,), 0.25)
        if step == 2:  # new objects
            for m in (fast, stock):
                m.bias = torch.nn.Parameter(torch.full((4,), -0.5))
                m.running_var = torch.full((4,), 2.0)
        if step == 3:  # in place (an optimizer, load_state_dict)
            for m in (fast, stock):
                with torch.no_grad():
                    m.weight.mul_(0.5)
                    m.num_batches_tracked.fill_(7)
        torch.testing.assert_close(fast(x), stock(x), rtol=1e-5, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(fast, name), getattr(stock, name),
                                       rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_module_has_its_own_views(how):
    torch.manual_seed(1)
    x = torch.randn(6, 4, 5, 5)
    a = fbt.BatchNorm2d(4, momentum=None)
    a(x)  # the views are made
    b = copy.deepcopy(a) if how == "deepcopy" else pickle.loads(pickle.dumps(a))
    for _ in range(3):
        b(x)
    assert int(a.num_batches_tracked) == 1 and int(b.num_batches_tracked) == 4
    ref = torch.nn.BatchNorm2d(4, momentum=None)
    ref(x)
    torch.testing.assert_close(a.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    for _ in range(3):
        ref(x)
    torch.testing.assert_close(b.running_var, ref.running_var, rtol=1e-6, atol=1e-7)


def test_compiled_eval_is_pytorch_batch_norm_and_training_is_fastbn():
    # under torch.compile the eval forward is PyTorch's batch norm (Inductor
    # folds it into the convolution before it); training calls fastbn's
    # operator, which takes any layout (no copies inserted around it)
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm.code)
        return gm
    torch.manual_seed(0)
    bn = fbt.BatchNorm2d(4, activation="relu6")
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, 5, 5) * 4
    f = torch.compile(bn, backend=backend, fullgraph=True)
    bn.eval()
    with torch.no_grad():
        y = f(x)
    ref = torch.nn.functional.hardtanh(torch.nn.functional.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps), 0, 6)
    torch.testing.assert_close(y, ref)
    assert "batch_norm" in graphs[-1] and "fastbn" not in graphs[-1]
    bn.train()
    f(x)
    assert "fastbn.bn_train" in graphs[-1]
    for op in (torch.ops.fastbn.bn_train, torch.ops.fastbn.bn_infer,
               torch.ops.fastbn.bn_backward):
        assert torch.Tag.flexible_layout in op.default.tags
