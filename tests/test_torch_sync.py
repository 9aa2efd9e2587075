"""fastbn.torch.SyncBatchNorm in real torch.distributed jobs (gloo on
127.0.0.1, 2 and 3 processes), against one process running the
concatenated batch (skipped without torch)."""
import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
fbt = pytest.importorskip("fastbn.torch")
dist = pytest.importorskip("torch.distributed")
from torch import nn  # noqa: E402

import torch_sync_worker as worker  # noqa: E402

pytestmark = pytest.mark.torch
WORKER = Path(worker.__file__)
JOBS = {2: [3, 5], 3: [2, 0, 4]}  # local batch sizes (rank 1 empty with 3)
# gloo's device on the loopback interface (not the hostname's address,
# which a CI container may not resolve)
LOOPBACK = ({"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux")
            and "GLOO_SOCKET_IFNAME" not in os.environ else {})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=sorted(JOBS), ids=lambda w: f"{w}ranks")
def job(request, tmp_path_factory):
    """Run one job; returns (sizes, [results of each rank])."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    world = request.param
    sizes = JOBS[world]
    tmp = tmp_path_factory.mktemp(f"sync{world}")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", **LOOPBACK)
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), str(r), str(world), str(port),
         ",".join(map(str, sizes)), str(tmp / f"r{r}.pt")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150)[0].decode(errors="replace"))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {world}-process job did not finish in time (a hang)")
    for r, p in enumerate(procs):
        assert p.returncode == 0, (
            f"rank {r} failed (exit status {p.returncode}; results file "
            f"{'written' if (tmp / f'r{r}.pt').exists() else 'missing'}):\n"
            + "\n".join(f"--- rank {q}:\n{log}" for q, log in enumerate(logs)))
    results = [torch.load(tmp / f"r{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r}:\n{res['crash']}"
    return sizes, results


def split(t, sizes):
    return list(torch.split(t, sizes))


@pytest.mark.slow
def test_forward_backward_running_stats(job):
    """Output, input and residual gradients, running statistics: those of
    one process on the whole batch; weight/bias gradients summed over the
    ranks.  Uneven batches, an empty one, channels_last."""
    sizes, results = job
    ref = worker.make_bn(fbt.BatchNorm2d, activation="relu", momentum=None)
    stock = worker.make_bn(nn.BatchNorm2d, momentum=None)
    for step in range(3):
        if step == 2:
            ref.eval()
            stock.eval()
        x, z, dy = worker.batch(sum(sizes), step)
        xr, zr = x.clone().requires_grad_(), z.clone().requires_grad_()
        y = ref(xr, zr)
        (y * dy).sum().backward()
        ys = torch.relu(stock(x) + z)  # PyTorch's module agrees too
        torch.testing.assert_close(ys, y.detach())
        got = [r["basic"][step] for r in results]
        for name, want in (("y", y.detach()), ("dx", xr.grad), ("dz", zr.grad)):
            for r, (part, res) in enumerate(zip(split(want, sizes), got)):
                torch.testing.assert_close(res[name], part, rtol=1e-12, atol=1e-12,
                                           msg=f"{name} on rank {r}, step {step}")
        for name, want in (("dw", ref.weight.grad), ("db", ref.bias.grad)):
            total = sum(res[name] for res in got)
            torch.testing.assert_close(total, want, rtol=1e-12, atol=1e-12)
        for res in got:
            torch.testing.assert_close(res["rm"], ref.running_mean, rtol=1e-12, atol=0)
            torch.testing.assert_close(res["rv"], ref.running_var, rtol=1e-12, atol=0)
            assert int(res["nbt"]) == int(ref.num_batches_tracked)
            assert res["last"] or res["y"].numel() == 0
        ref.weight.grad = ref.bias.grad = None


@pytest.mark.slow
def test_error_on_one_rank_raises_everywhere(job):
    sizes, results = job
    for name in ("channels", "dim", "residual"):
        for r, res in enumerate(results):
            kind, msg = res["errors"][name]
            if r == 1:
                assert kind == "ValueError"
            else:
                assert kind == "RuntimeError" and "rank 1" in msg, msg
    x = worker.batch(sum(sizes), 5)[0]
    want = worker.make_bn(fbt.BatchNorm2d)(x).detach()
    for part, res in zip(split(want, sizes), results):
        torch.testing.assert_close(res["errors"]["after"], part, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_ddp_step(job):
    """One SGD step in DistributedDataParallel equals one process's step on
    the whole batch (DDP averages the ranks' gradients)."""
    sizes, results = job
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(worker.C, worker.C, 3, padding=1),
                          nn.BatchNorm1d(worker.C), nn.ReLU()).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, _, dy = worker.batch(sum(sizes), 7)
    x, dy = x.flatten(2), dy.flatten(2)
    ((model(x) * dy).sum() / len(sizes)).backward()
    opt.step()
    for res in results:
        for k, v in model.state_dict().items():
            torch.testing.assert_close(res["ddp"][k], v, rtol=1e-10, atol=1e-12)


def test_world_of_one_is_plain_bn(monkeypatch):
    """An initialised group of one process: plain batch norm, no exchange."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    for k, v in LOOPBACK.items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1)
    try:
        sync = worker.make_bn(fbt.SyncBatchNorm)
        plain = copy.deepcopy(sync)
        x = worker.batch(6, 1)[0]
        y = sync(x)
        torch.testing.assert_close(y, torch.nn.functional.batch_norm(
            x, None, None, plain.weight, plain.bias, True))
    finally:
        dist.destroy_process_group()
