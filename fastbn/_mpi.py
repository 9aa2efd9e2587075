"""Synchronised batch normalization across MPI processes (``comm=``).

Called by fastbn._api when a training-mode function gets ``comm=`` (an
mpi4py communicator).  Each rank holds a part of the global batch; the
statistics of the whole batch are combined with one small collective per
step and every rank then normalises its own part locally:

forward   each rank computes per-channel (count, mean, M2) in float64 with
          the moments kernel, packs them into 2C+1 doubles and
          ``Allgather``s them; every rank then merges the P parts in rank
          order with Chan et al.'s formula (mean = sum(n_r mean_r) / N,
          M2 = sum(M2_r) + sum(n_r (mean_r - mean)^2)).  All ranks run the
          same float64 arithmetic on the same gathered bytes in the same
          order, so mean/var/invstd are bit-identical on every rank and do
          not depend on MPI's reduction algorithm; the merge is exact
          algebra (no E[x^2] - E[x]^2 cancellation), so unequal and empty
          local batches are handled exactly.
backward  each rank computes the two per-channel sums (sum dy', sum
          dy'(x - mean)) in float64 and one ``Allreduce(MPI.SUM)`` of 2C+1
          doubles (the sums and the local count) gives the global sums; the
          dx pass is local.  Sums are what MPI_SUM reduces natively, so the
          cost stays O(C) per rank at any process count.

A rank whose local batch is empty still joins every collective and
contributes nothing.  Errors that depend on global data (fewer than 2
values per channel in the whole batch) are decided after the collective,
identically on every rank, so no rank is left waiting.  Every rank must
call with the same channel count and dtype (as for any collective).

mpi4py is imported lazily, here only: ``import fastbn`` never needs it.
"""
import numpy as np

from . import _kernels

__all__ = ["train_forward", "backward"]

_MISSING = "comm= needs mpi4py: pip install fastbn[mpi]"
_MPI = None


def _mpi_module():
    """mpi4py.MPI, imported on first use; a clear ImportError without it."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError(f"{_MISSING} ({e})") from e
        _MPI = MPI
    return _MPI


def _check_comm(comm):
    """The mpi4py module after checking that comm looks like an intracommunicator."""
    MPI = _mpi_module()
    for meth in ("Allreduce", "Allgather", "Get_size"):
        if not callable(getattr(comm, meth, None)):
            raise TypeError(f"comm must be an mpi4py communicator (e.g. "
                            f"mpi4py.MPI.COMM_WORLD) with Allreduce and Allgather, "
                            f"got {type(comm).__name__}")
    if isinstance(comm, MPI.Comm) and comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL; pass a valid communicator")
    return MPI


def _global_moments(comm, x, outer, C, inner, nthreads):
    """(count, mean64, m2_64) of the global batch: local moments, one
    Allgather of 2C+1 doubles per rank, Chan merge in rank order."""
    MPI = _check_comm(comm)
    n = outer * inner
    mean, m2 = _kernels.moments(x, outer, C, inner, nthreads)
    send = np.empty(2 * C + 1, np.float64)
    send[0] = n
    send[1:C + 1] = mean
    send[C + 1:] = m2
    size = comm.Get_size()
    parts = np.empty((size, 2 * C + 1), np.float64)
    comm.Allgather([send, MPI.DOUBLE], [parts, MPI.DOUBLE])
    counts = parts[:, 0]
    means = parts[:, 1:C + 1]
    m2s = parts[:, C + 1:]
    total = float(np.sum(counts))  # exact: integers < 2**53
    if total < 1:
        return 0, np.zeros(C), np.zeros(C)
    # Chan et al. for P parts.  axis-0 reductions of C-contiguous rows add
    # the rows one after the other, i.e. in rank order, on every rank.
    w = counts[:, None]
    gmean = np.sum(w * means, axis=0) / total
    d = means - gmean
    # empty ranks (count 0) contribute exactly 0 (their mean and m2 are 0)
    gm2 = np.sum(m2s, axis=0) + np.sum(w * (d * d), axis=0)
    return int(total), gmean, gm2


def train_forward(comm, x, outer, C, inner, gamma, beta, z, eps, relu, y, nthreads):
    """Synchronised training forward into y.

    Returns ``(mean, invstd, var, count)``: mean and invstd of the global
    batch as x.dtype arrays of shape (C,), var the global biased variance
    (float64, for running statistics) and count the global number of values
    per channel.
    """
    count, mean64, m2 = _global_moments(comm, x, outer, C, inner, nthreads)
    if count < 2:
        raise ValueError(f"training needs at least 2 values per channel in the "
                         f"global batch; all {comm.Get_size()} ranks of comm hold "
                         f"{count} together")
    var = m2 / count
    invstd64 = 1.0 / np.sqrt(var + eps)
    _kernels.apply(x, outer, C, inner, mean64, invstd64, gamma, beta, z, relu, y,
                   nthreads)
    return mean64.astype(x.dtype), invstd64.astype(x.dtype), var, count


def backward(comm, dy, x, yv, outer, C, inner, mean, invstd, gamma, dx, dz, nthreads):
    """Synchronised training backward into dx (and dz).

    Returns ``(dgamma, dbeta)`` of the global batch, x.dtype, shape (C,).
    """
    MPI = _check_comm(comm)
    sdy, sdyx = _kernels.backward_reduce(dy, x, yv, outer, C, inner, mean, nthreads)
    buf = np.empty(2 * C + 1, np.float64)
    buf[:C] = sdy
    buf[C:2 * C] = sdyx
    buf[2 * C] = outer * inner
    comm.Allreduce(MPI.IN_PLACE, [buf, MPI.DOUBLE], op=MPI.SUM)
    count = buf[2 * C]
    if not count >= 2:
        raise ValueError(f"training needs at least 2 values per channel in the "
                         f"global batch; all {comm.Get_size()} ranks of comm hold "
                         f"{int(count)} together")
    sdy = buf[:C].copy()
    sdyx = buf[C:2 * C].copy()
    _kernels.backward_apply(dy, x, yv, outer, C, inner, mean, invstd, gamma, sdy,
                            sdyx, float(count), True, dx, dz, nthreads)
    dgamma = (sdyx * invstd.astype(np.float64)).astype(x.dtype)
    return dgamma, sdy.astype(x.dtype)
