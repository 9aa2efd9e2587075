"""Synchronised batch normalization over MPI with fastbn (``comm=``).

Each MPI rank holds a part of a global batch (data-parallel training); with
``comm=`` every rank normalises with the statistics of the *whole* batch:

    mpiexec -n 2 python examples/mpi_sync_bn.py                # (32,64,56,56) float32
    mpiexec -n 4 python examples/mpi_sync_bn.py --shape 64,256,14,14
    mpiexec -n 2 python examples/mpi_sync_bn.py --quick        # small, for tests

(as root add ``--allow-run-as-root``; with more ranks than cores add
``--oversubscribe``; give each rank OMP_NUM_THREADS = cores / ranks per node.)

The script
1. checks on a small global batch, split unequally over the ranks (one rank
   may get nothing), that the synchronised forward and backward equal the
   single-process result on the whole batch, and prints "matches
   single-process";
2. times one training step of the given global shape, each rank holding its
   share of the batch axis: the local kernels, the collective alone, and
   the whole synchronised call, median over repeats, worst rank.

Per step fastbn communicates 2C+1 float64 values per rank forward (count,
per-channel mean and M2, one Allgather) and 2C+1 backward (per-channel
sum dy and sum dy*(x-mean), and the count, one Allreduce).  Before each of
these, a status exchange of 7 int64 (one Allreduce(MAX): did a rank fail,
channel count, dtype, which call) lets an argument error on one rank raise
on every rank instead of leaving the others waiting; it is timed too.
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn import _kernels  # internal: only for the time breakdown below

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def shares(n):
    """Split n over the ranks as evenly as possible."""
    return [n // size + (r < n % size) for r in range(size)]


def verify():
    """Synchronised == single-process on the concatenated batch."""
    rng = np.random.default_rng(0)  # the same global data on every rank
    sizes = [0] + [r + 2 for r in range(1, size)] if size > 1 else [5]
    N = sum(sizes)
    x = (rng.standard_normal((N, 8, 5, 5)) * 3 + 10).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma = rng.uniform(0.5, 2, 8).astype(np.float32)
    beta = rng.standard_normal(8).astype(np.float32)
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    y0, m0, s0 = fastbn.batch_norm_train(x, gamma, beta, relu=True)
    dx0, dg0, db0 = fastbn.batch_norm_backward(dy, x, m0, s0, gamma, y=y0)
    y1, m1, s1 = fastbn.batch_norm_train(x[lo:hi], gamma, beta, relu=True, comm=comm)
    dx1, dg1, db1 = fastbn.batch_norm_backward(dy[lo:hi], x[lo:hi], m1, s1, gamma,
                                               y=y1, comm=comm)
    err = max(float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
              for a, b in ((y1, y0[lo:hi]), (m1, m0), (s1, s0), (dx1, dx0[lo:hi]),
                           (dg1 / max(1, np.abs(dg0).max()), dg0 / max(1, np.abs(dg0).max())),
                           (db1 / max(1, np.abs(db0).max()), db0 / max(1, np.abs(db0).max()))))
    err = comm.allreduce(err, op=MPI.MAX)
    if rank == 0:
        print(f"local batch sizes {sizes}: synchronised result matches single-process "
              f"on the global batch of {N} (max abs error {err:.1e})", flush=True)
    if not err < 1e-4:
        raise SystemExit(f"mismatch: {err}")


def median_time(fn, repeat, barrier=True):
    fn()  # warm-up (first-touch of outputs, MPI connection set-up)
    ts = []
    for _ in range(repeat):
        if barrier:
            comm.Barrier()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


def bench(shape, dtype, repeat):
    N, C = shape[0], shape[1]
    n_local = shares(N)[rank]
    local = (n_local,) + tuple(shape[1:])
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(local).astype(dtype)
    dy = rng.standard_normal(local).astype(dtype)
    gamma = np.ones(C, dtype)
    beta = np.zeros(C, dtype)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    outer, inner = n_local, int(np.prod(shape[2:]))
    nt = fastbn.get_num_threads()
    mean64, m2 = _kernels.moments(x, outer, C, inner, nt)
    inv64 = 1 / np.sqrt(m2 / max(outer * inner, 1) + 1e-5)
    mean, inv = mean64.astype(dtype), inv64.astype(dtype)
    fwd_buf = np.zeros(2 * C + 1)
    fwd_all = np.empty((size, 2 * C + 1))
    bwd_buf = np.zeros(2 * C + 1)
    head = np.zeros(7, np.int64)
    sdy, sdyx = _kernels.backward_reduce(dy, x, None, outer, C, inner, mean, nt, 0)

    t = {}
    # forward
    t["fwd local: moments"] = median_time(
        lambda: _kernels.moments(x, outer, C, inner, nt), repeat)
    t["fwd local: apply"] = median_time(
        lambda: _kernels.apply(x, outer, C, inner, mean64, inv64, gamma, beta, None,
                               False, y, nt), repeat)
    t["fwd collective: Allgather 2C+1"] = median_time(
        lambda: comm.Allgather([fwd_buf, MPI.DOUBLE], [fwd_all, MPI.DOUBLE]), repeat)
    t["status exchange: Allreduce(MAX) 7 int64"] = median_time(
        lambda: comm.Allreduce(MPI.IN_PLACE, [head, MPI.INT64_T], op=MPI.MAX), repeat)
    t["fwd whole step, comm="] = median_time(
        lambda: fastbn.batch_norm_train(x, gamma, beta, out=y, comm=comm), repeat)
    t["fwd whole step, local only (no comm)"] = median_time(
        lambda: fastbn.batch_norm_train(x, gamma, beta, out=y), repeat, False)
    # backward
    t["bwd local: reduce"] = median_time(
        lambda: _kernels.backward_reduce(dy, x, None, outer, C, inner, mean, nt, 0), repeat)
    t["bwd local: apply"] = median_time(
        lambda: _kernels.backward_apply(dy, x, None, outer, C, inner, mean, inv, gamma,
                                        sdy, sdyx, float(N * inner), True, dx, None, nt, 0),
        repeat)
    t["bwd collective: Allreduce 2C+1"] = median_time(
        lambda: comm.Allreduce(MPI.IN_PLACE, [bwd_buf, MPI.DOUBLE], op=MPI.SUM), repeat)
    t["bwd whole step, comm="] = median_time(
        lambda: fastbn.batch_norm_backward(dy, x, mean, inv, gamma, out=dx, comm=comm),
        repeat)
    t["bwd whole step, local only (no comm)"] = median_time(
        lambda: fastbn.batch_norm_backward(dy, x, mean, inv, gamma, out=dx), repeat,
        False)
    # worst rank's median and best time (the minimum estimates the cost
    # without interference from other processes on a shared machine)
    worst = {k: comm.allreduce(v[0], op=MPI.MAX) for k, v in t.items()}
    best = {k: comm.allreduce(v[1], op=MPI.MAX) for k, v in t.items()}
    if rank == 0:
        print(f"\nglobal {tuple(shape)} {np.dtype(dtype).name} on {size} ranks, local "
              f"{local}, {nt} thread(s)/rank; {repeat} repeats, worst rank "
              f"(MPI {MPI.Get_library_version().splitlines()[0][:40]})")
        print(f"  {'':40s} {'median':>9s}    {'min':>9s}")
        for k in worst:
            print(f"  {k:40s} {worst[k] * 1e3:9.3f} ms {best[k] * 1e3:9.3f} ms")
        for name, t in (("median", worst), ("min", best)):
            fl = t["fwd local: moments"] + t["fwd local: apply"]
            bl = t["bwd local: reduce"] + t["bwd local: apply"]
            fc = t["fwd collective: Allgather 2C+1"]
            bc = t["bwd collective: Allreduce 2C+1"]
            print(f"  {name:6s} forward : collective {fc * 1e6:8.1f} us vs local kernels "
                  f"{fl * 1e3:.3f} ms ({100 * fc / fl:.2f} %)")
            print(f"  {name:6s} backward: collective {bc * 1e6:8.1f} us vs local kernels "
                  f"{bl * 1e3:.3f} ms ({100 * bc / bl:.2f} %)")
            hc = t["status exchange: Allreduce(MAX) 7 int64"]
            print(f"  {name:6s} status exchange (each pass): {hc * 1e6:8.1f} us, "
                  f"{100 * hc / fl:.2f} % of the forward's kernels, "
                  f"{100 * hc / bl:.2f} % of the backward's")
        print(f"  bytes per rank per step: forward {(2 * C + 1) * 8} sent, "
              f"{size * (2 * C + 1) * 8} received; backward {(2 * C + 1) * 8}; "
              f"plus 56 (status) each way")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="32,64,56,56",
                   help="global NCHW shape (split over the ranks along N)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="small shape, few repeats")
    a = p.parse_args()
    shape = tuple(int(s) for s in a.shape.split(","))
    if a.quick:
        shape, a.repeat = (8, 16, 8, 8), 3
    verify()
    bench(shape, np.dtype(a.dtype), a.repeat)


if __name__ == "__main__":
    main()
