"""Synchronised statistics over a ``torch.distributed`` process group.

fastbn's MPI code (fastbn._mpi) does the whole exchange: the status
exchange that makes an error on one rank raise on every rank, the
Allgather of per-channel (count, mean, m2) merged exactly in rank order in
the forward, and the Allreduce of the two per-channel sums in the
backward.  It needs only five calls of an mpi4py communicator;
``GroupComm`` gives them over a process group (gloo on the CPU), so the
same code serves MPI and torch.distributed.

The operators cannot take a process group as an argument: they take the
string key under which ``comm_key`` registered the group's adapter.
"""
import time

import numpy as np
import torch
import torch.distributed as dist

from .. import _api, _mpi
from .._checks import stat_dtype

__all__ = ["GroupComm", "comm_key", "comm", "train", "backward", "report_failure"]


class _Names:
    """The part of mpi4py.MPI that fastbn._mpi uses."""
    IN_PLACE = object()
    INT64_T = "int64"
    DOUBLE = "double"
    MAX = dist.ReduceOp.MAX
    SUM = dist.ReduceOp.SUM


class GroupComm:
    """An mpi4py-like communicator over a torch.distributed process group.

    Implements ``Get_rank``, ``Get_size``, ``Allreduce`` (in place),
    ``Allgather`` (of NumPy buffers) and ``allgather`` (of objects), the
    calls fastbn._mpi makes.  ``local`` keeps a copy of the last summed
    buffer before the reduction: the backward's local per-channel sums,
    from which each rank's own weight and bias gradients come (their sum
    over the ranks is the whole batch's, as with PyTorch's SyncBatchNorm).
    ``seconds`` adds up the time spent in the collectives (waiting for the
    other ranks included), for the benchmark.
    """
    fastbn_mpi = _Names

    def __init__(self, group):
        self.group = group
        self.local = None
        self.seconds = 0.0

    def Get_rank(self):
        return dist.get_rank(group=self.group)

    def Get_size(self):
        return dist.get_world_size(group=self.group)

    def Allreduce(self, sendbuf, recvbuf, op):
        if sendbuf is not _Names.IN_PLACE:
            raise NotImplementedError("GroupComm.Allreduce works in place only")
        buf = recvbuf[0]
        if op == _Names.SUM:
            self.local = buf.copy()
        t0 = time.perf_counter()
        dist.all_reduce(torch.from_numpy(buf), op=op, group=self.group)
        self.seconds += time.perf_counter() - t0

    def Allgather(self, sendbuf, recvbuf):
        parts = recvbuf[0]
        t0 = time.perf_counter()
        dist.all_gather([torch.from_numpy(p) for p in parts],
                        torch.from_numpy(sendbuf[0]), group=self.group)
        self.seconds += time.perf_counter() - t0

    def allgather(self, obj):
        out = [None] * self.Get_size()
        dist.all_gather_object(out, obj, group=self.group)
        return out


_COMMS = {}


def comm_key(group):
    """The operators' ``comm`` argument for process group ``group`` (None:
    the default group): "" when there is nothing to synchronise (no
    initialised process group, or one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ""
    if group is None:
        group = dist.group.WORLD
    if dist.get_world_size(group=group) < 2:
        return ""
    key = f"pg{id(group)}"
    if key not in _COMMS:
        _COMMS[key] = GroupComm(group)
    return key


def comm(key):
    """The GroupComm registered under ``key``."""
    return _COMMS[key]


def train(key, args, activation=None):
    """fastbn._api._train(*args) with statistics over the group ``key`` and
    the given activation: (y, mean, invstd, var64, global count); an error
    on any rank raises on every rank."""
    comm = _COMMS[key]
    return _mpi.run(_mpi.FORWARD, comm, _api._train, *args, comm, True, None, None,
                    activation)


def backward(key, args, activation=None):
    """fastbn._api._backward(*args) with the two sums over the group
    ``key``, dy masked by the forward's ``activation``.  Returns (its
    result, (local dgamma, local dbeta))."""
    comm = _COMMS[key]
    res = _mpi.run(_mpi.BACKWARD, comm, _api._backward, *args, comm, None, None, None,
                   activation)
    invstd = args[3]
    C = invstd.shape[0]
    sdt = stat_dtype(args[1].dtype)
    local = comm.local
    dgamma = (local[C:2 * C] * invstd.astype(np.float64)).astype(sdt)
    return res, (dgamma, local[:C].astype(sdt))


def report_failure(key, error):
    """Tell the other ranks of group ``key`` that this rank's forward
    failed with ``error`` before reaching the operator (they raise
    RuntimeError instead of waiting); the caller re-raises ``error``."""
    _mpi.report_failure(_mpi.FORWARD, _COMMS[key], error)
