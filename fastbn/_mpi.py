"""Synchronised batch normalization across MPI processes (``comm=``).

Called by fastbn._api (through ``run``) when a training-mode function gets
``comm=`` (an mpi4py communicator).  Each rank holds a part of the global
batch; the statistics of the whole batch are combined with one small data
collective per pass (after a fixed-size status exchange, see below) and
every rank then normalises its own part locally:

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
identically on every rank, so no rank is left waiting.

Errors on one rank raise on every rank (docs/contract.md, "MPI errors").  The data
collectives' sizes depend on C, which a failing rank may not know (x is
not an array) or which ranks may disagree on, so a status cannot ride in
them: before its data collective every synchronised call makes one status
exchange of a fixed size, an ``Allreduce(MAX)`` of 7 int64

    [failed, C, -C, dtype code, -dtype code, op, -op]

(MAX of -v is -MIN of v, so one reduction gives each field's maximum and
minimum: the ranks agree iff they are equal).  Its volume is O(1) at any
process count; it costs one small-message latency per call (docs/guide/mpi.md,
"Measured cost").  A rank whose checks or local reduction raised joins it
with failed = 1 (``run``), so the other ranks learn of the failure
instead of waiting in the data collective.  Then, on every rank alike:

- any rank failed: one ``allgather`` of the failing ranks' messages; each
  failing rank re-raises its own exception, the others raise RuntimeError
  naming the failing ranks and their messages;
- the ranks are in different calls (forward and backward): RuntimeError;
- they disagree on C or on the dtype: ValueError naming each rank's value;
- else the data collective runs as above.

No data collective runs after a failed exchange, so every rank leaves the
call having made the same collectives and comm stays usable.  What stays
out of reach: a rank that never makes the call (it returned early, is in
evaluation mode, or passed ``training=False``) or whose comm is not a
communicator cannot take part, and the others still wait.

mpi4py is imported lazily, here only: ``import fastbn`` never needs it.
"""
import threading
import zlib

import numpy as np

from . import _kernels
from ._checks import stat_dtype

__all__ = ["FORWARD", "BACKWARD", "run", "report_failure", "train_forward",
           "backward"]

# the call a rank is in, exchanged so that ranks in different calls raise
FORWARD = 1
BACKWARD = 2
_CALL_NAMES = {
    FORWARD: "the forward (batch_norm_train, or BatchNorm in training mode)",
    BACKWARD: "the backward (batch_norm_backward with training=True, or "
              "BatchNorm.backward)",
}
_SHORT = {FORWARD: "forward", BACKWARD: "backward"}

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
    """The mpi4py module after checking that comm looks like an intracommunicator.

    A comm that brings its own MPI-like namespace as ``comm.fastbn_mpi``
    (IN_PLACE, INT64_T, DOUBLE, MAX, SUM: fastbn.torch's adapter of a
    torch.distributed process group) is taken as it is, without mpi4py."""
    own = getattr(comm, "fastbn_mpi", None)
    if own is not None:
        return own
    MPI = _mpi_module()
    for meth in ("Allreduce", "Allgather", "allgather", "Get_size", "Get_rank"):
        if not callable(getattr(comm, meth, None)):
            raise TypeError(f"comm must be an mpi4py communicator (e.g. "
                            f"mpi4py.MPI.COMM_WORLD), got {type(comm).__name__} "
                            f"(it has no method {meth})")
    if isinstance(comm, MPI.Comm) and comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL; pass a valid communicator")
    return MPI


# Number of status exchanges this thread has made.  ``run`` compares it
# before and after the body of a call to know whether an exception was
# raised before the exchange (the other ranks must then be told) or after
# it (every rank already knows).  Per thread: two threads may run
# synchronised calls on two communicators.
class _Local(threading.local):
    count = 0


_local = _Local()


def _exchanges():
    return _local.count


_CODES = {}


def _dtype_code(dtype):
    """An int naming ``dtype`` identically in every process (NumPy's type
    numbers of user dtypes such as bfloat16 depend on import order).
    Cached: ``dtype.name`` alone costs microseconds."""
    code = _CODES.get(dtype)
    if code is None:
        code = _CODES[dtype] = zlib.crc32(np.dtype(dtype).name.encode())
    return code


def _ranks_text(ranks):
    """'rank 3' or 'ranks 0-2, 5' (ranges compressed, for large jobs)."""
    ranks = sorted(ranks)
    spans = []
    for r in ranks:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"


def _grouped(values):
    """{value: [ranks]} in order of first appearance."""
    groups = {}
    for rank, v in enumerate(values):
        groups.setdefault(v, []).append(rank)
    return groups


def _failure_text(op, rank, size, messages, limit=4):
    """The RuntimeError message on a rank whose own arguments were fine;
    ``messages`` has one entry per rank, None where the rank did not fail.
    Ranks with the same message are named together, at most ``limit``
    distinct messages are listed."""
    failed = _grouped(messages)
    failed.pop(None, None)
    ranks = [r for rs in failed.values() for r in rs]
    if len(failed) == 1:
        parts = list(failed)
    else:  # the messages of most ranks first
        groups = sorted(failed.items(), key=lambda mr: -len(mr[1]))
        parts = [f"{_ranks_text(rs)}: {m}" for m, rs in groups[:limit]]
        if len(failed) > limit:
            parts.append(f"and {len(failed) - limit} other messages")
    return (f"synchronised batch norm {_SHORT[op]} failed on {_ranks_text(ranks)} "
            f"of {size} in comm: {'; '.join(parts)}.  The arguments on this rank "
            f"({rank}) were valid; every rank raises so that none waits in the "
            f"collective (comm stays usable)")


def _disagreement(op, size, infos):
    """The exception every rank raises when all checks passed but the ranks
    are in different calls or disagree on the channel count or dtype;
    ``infos`` is the allgathered list of (op, C, dtype name)."""
    ops = _grouped([i[0] for i in infos])
    if len(ops) > 1:
        where = "; ".join(f"{_CALL_NAMES[o]} on {_ranks_text(rs)}"
                          for o, rs in ops.items())
        return RuntimeError(
            f"synchronised batch norm: the {size} ranks of comm are in different "
            f"calls: {where}.  Every rank must make the same sequence of "
            f"synchronised calls")
    problems = []
    chans = _grouped([i[1] for i in infos])
    if len(chans) > 1:
        where = "; ".join(f"{c} on {_ranks_text(rs)}" for c, rs in chans.items())
        problems.append(f"the channel count of x differs: {where} (every rank "
                        f"must pass x with the same number of channels)")
    dtypes = _grouped([i[2] for i in infos])
    if len(dtypes) > 1:
        where = "; ".join(f"{d} on {_ranks_text(rs)}" for d, rs in dtypes.items())
        problems.append(f"the dtype of x differs: {where} (every rank must "
                        f"compute in the same dtype: cast x, or give every "
                        f"rank's layer the same dtype=)")
    return ValueError(f"synchronised batch norm {_SHORT[op]}: the {size} ranks of "
                      f"comm disagree: {'; and '.join(problems)}")


def _exchange(comm, MPI, op, C, dtype, error=None):
    """The status exchange that precedes every data collective.

    Every rank of ``comm`` calls it exactly once per synchronised call:
    with ``error=None`` once its checks and its local reduction succeeded
    (``C`` channels of ``dtype``), or with the exception that stopped it
    (``C`` and ``dtype`` are then ignored).  One ``Allreduce(MAX)`` of 7
    int64; then, identically on every rank: if any rank failed, one
    ``allgather`` of the messages, after which a failing rank returns (its
    caller re-raises its own exception) and the others raise RuntimeError;
    if the ranks are in different calls or disagree on C or the dtype, one
    ``allgather`` of (op, C, dtype) and every rank raises.  Returns when the
    data collective may run.
    """
    _local.count += 1
    if error is None:
        code = _dtype_code(dtype)
        head = np.array([0, C, -C, code, -code, op, -op], np.int64)
    else:
        head = np.array([1, 0, 0, 0, 0, op, -op], np.int64)
    comm.Allreduce(MPI.IN_PLACE, [head, MPI.INT64_T], op=MPI.MAX)
    head = head.tolist()
    if head[0]:
        mine = None if error is None else f"{type(error).__name__}: {error}"
        messages = comm.allgather(mine)
        if error is not None:
            return
        raise RuntimeError(_failure_text(op, comm.Get_rank(), comm.Get_size(),
                                         messages))
    if head[1] != -head[2] or head[3] != -head[4] or head[5] != -head[6]:
        infos = comm.allgather((op, int(C), np.dtype(dtype).name))
        raise _disagreement(op, comm.Get_size(), infos)


def report_failure(op, comm, error):
    """Join the status exchange of call ``op`` on a rank that cannot make
    the call because of ``error``; returns (the caller raises ``error``).

    Raises TypeError/ImportError instead when ``comm`` is unusable."""
    _exchange(comm, _check_comm(comm), op, 0, None, error)


def run(op, comm, body, *args):
    """``body(*args)``, the body of a synchronised call ``op``, such that an
    exception it raises on this rank raises on every rank of ``comm``.

    ``body`` checks its arguments and, through ``train_forward`` or
    ``backward``, makes the status exchange and the data collective.  An
    exception raised before this rank's exchange (a failed check, the
    local reduction) makes this rank join the exchange as failed, then
    propagates unchanged; one raised after it (the other ranks' failure,
    a global batch too small) is already the same on every rank.  The
    comm itself is checked first: a rank without a usable comm cannot tell
    the others anything.
    """
    _check_comm(comm)
    before = _exchanges()
    try:
        return body(*args)
    except Exception as e:
        if _exchanges() == before:
            report_failure(op, comm, e)
        raise


def _global_moments(comm, x, outer, C, inner, nthreads):
    """(count, mean64, m2_64) of the global batch: local moments, the
    status exchange, one Allgather of 2C+1 doubles per rank, Chan merge in
    rank order."""
    MPI = _check_comm(comm)
    n = outer * inner
    mean, m2 = _kernels.moments(x, outer, C, inner, nthreads)
    _exchange(comm, MPI, FORWARD, C, x.dtype)
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


def train_forward(comm, x, outer, C, inner, gamma, beta, z, eps, act, y, nthreads):
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
    _kernels.apply(x, outer, C, inner, mean64, invstd64, gamma, beta, z, act, y,
                   nthreads)
    sdt = stat_dtype(x.dtype)  # float32 for half x
    return mean64.astype(sdt), invstd64.astype(sdt), var, count


def backward(comm, dy, x, yv, outer, C, inner, mean, invstd, gamma, dx, dz, nthreads,
             act=None):
    """Synchronised training backward into dx (and dz), dy masked by yv for
    the activation code act (None: ReLU when yv is given).

    Returns ``(dgamma, dbeta)`` of the global batch, x.dtype, shape (C,).
    """
    MPI = _check_comm(comm)
    if act is None:
        act = int(yv is not None)
    sdy, sdyx = _kernels.backward_reduce(dy, x, yv, outer, C, inner, mean, nthreads,
                                         act)
    _exchange(comm, MPI, BACKWARD, C, x.dtype)
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
                            sdyx, float(count), True, dx, dz, nthreads, act)
    sdt = stat_dtype(x.dtype)  # float32 for half x
    dgamma = (sdyx * invstd.astype(np.float64)).astype(sdt)
    return dgamma, sdy.astype(sdt)
