"""One rank of a fastbn.torch.SyncBatchNorm job (run by test_torch_sync.py).

Usage: python torch_sync_worker.py RANK WORLD PORT SIZES OUT
SIZES is the comma-separated local batch size of every rank.  The rank
runs every scenario and saves a dict of results to OUT with torch.save.
The data of the whole batch comes from a fixed seed (batch()), so the
test can recompute it in one process.
"""
import datetime
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn

import fastbn.torch as fbt

C = 4
SHAPE = (C, 3, 5)  # per sample


def batch(total, seed):
    """(x, residual, dy) of the whole batch, float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((total,) + SHAPE, generator=g, dtype=torch.float64) * 2 + 1
    z = torch.randn((total,) + SHAPE, generator=g, dtype=torch.float64)
    dy = torch.randn((total,) + SHAPE, generator=g, dtype=torch.float64)
    return x, z, dy


def make_bn(cls, **kw):
    bn = cls(C, **kw).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, C))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, C))
    return bn


def local(t, sizes, rank):
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def scenario_basic(rank, sizes):
    """Two training steps (channels_last, residual, ReLU) and an eval step."""
    bn = make_bn(fbt.SyncBatchNorm, activation="relu", momentum=None)
    out = {}
    for step in range(3):
        if step == 2:
            bn.eval()
        x, z, dy = (local(t, sizes, rank) for t in batch(sum(sizes), step))
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        z = z.clone().requires_grad_()
        y = bn(x, z)
        (y * dy).sum().backward()
        out[step] = {"y": y.detach(), "dx": x.grad, "dz": z.grad,
                     "dw": bn.weight.grad.clone(), "db": bn.bias.grad.clone(),
                     "rm": bn.running_mean.clone(), "rv": bn.running_var.clone(),
                     "nbt": bn.num_batches_tracked.clone(),
                     "last": y.is_contiguous(memory_format=torch.channels_last)}
        bn.weight.grad = bn.bias.grad = None
    return out


def scenario_errors(rank, sizes):
    """A bad input on rank 1 raises on every rank; the group stays usable."""
    bn = make_bn(fbt.SyncBatchNorm)
    out = {}
    x = local(batch(sum(sizes), 5)[0], sizes, rank)
    for name, bad in (("channels", torch.zeros(3, C + 1, 3, 5, dtype=torch.float64)),
                      ("dim", torch.zeros(3, dtype=torch.float64)),
                      ("residual", None)):
        try:
            if name == "residual":  # a broadcasting residual on rank 1
                bn(x, x[:, :, :1] if rank == 1 else x)
            else:
                bn(bad if rank == 1 else x)
            out[name] = None
        except Exception as e:  # recorded for the test
            out[name] = (type(e).__name__, str(e))
    y = bn(x)  # every rank again: works
    out["after"] = y.detach()
    return out


def scenario_ddp(rank, sizes):
    """One SGD step of a conv + SyncBatchNorm model in DistributedDataParallel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(C, C, 3, padding=1), nn.BatchNorm1d(C),
                          nn.ReLU()).double()
    model = fbt.convert(model, sync=True)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    x, _, dy = (local(t, sizes, rank) for t in batch(sum(sizes), 7))
    x, dy = x.flatten(2), dy.flatten(2)
    (ddp(x) * dy).sum().backward()
    opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4].split(",")]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name in ("basic", "errors", "ddp"):
            results[name] = globals()["scenario_" + name](rank, sizes)
    except Exception:
        results["crash"] = traceback.format_exc()
    torch.save(results, sys.argv[5])
    dist.destroy_process_group()
    # The results are saved: leave without the interpreter's teardown. Once,
    # on a loaded CI machine, a rank aborted there ("terminate called without
    # an active exception", gloo's threads meeting the interpreter's exit)
    # after saving correct results; a rank that fails before saving still
    # fails the test (no results file, or a "crash" entry).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
