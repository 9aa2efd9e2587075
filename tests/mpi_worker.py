"""MPI worker for tests/test_mpi.py: run under ``mpiexec -n P``.

Every rank builds the same global batch (same seed), keeps its own slice of
the batch axis (local sizes may differ, and be 0), runs fastbn with
``comm=MPI.COMM_WORLD`` and compares with single-process fastbn on the
whole (concatenated) global batch: forward output, mean, invstd, dx,
dgamma, dbeta, the residual gradient, and (when fastbn.BatchNorm exists)
the layer's output, gradients and running statistics.  Both layouts (NCHW
axis=1 and NHWC axis=-1) and both dtypes.  It also checks that mean,
invstd, dgamma and dbeta are bit-identical on every rank, that a global
batch of < 2 values raises ValueError on every rank (no deadlock), that a
bad comm raises TypeError, and that evaluation mode uses no collective.

Mismatches are printed with the rank and the case; the exit code is the
number of failures (capped at 100), so mpiexec fails.  An unexpected
exception aborts the whole job (comm.Abort) instead of deadlocking.
"""
import sys
import traceback
import zlib

import numpy as np
from mpi4py import MPI

import fastbn

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
size = comm.Get_size()
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
failures = []
nchecks = 0


def fail(case, what, msg):
    failures.append(f"[rank {rank}/{size}] {case}: {what}: {msg}")


def check(case, what, actual, expected, dtype, tol=None):
    """actual (of dtype) ~= expected within the dtype's tolerance (or tol),
    relative to the scale of expected (max(1, max|expected|))."""
    global nchecks
    nchecks += 1
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return fail(case, what, f"shape {actual.shape} != {expected.shape}")
    if actual.dtype != np.dtype(dtype):
        return fail(case, what, f"dtype {actual.dtype} != {np.dtype(dtype)}")
    if actual.size == 0:
        return
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    tol = TOL[np.dtype(dtype)] if tol is None else tol
    scale = max(1.0, float(np.max(np.abs(e))))
    err = np.abs(a - e)
    bad = ~(err <= tol * scale + tol * np.abs(e))
    if np.any(bad):
        i = tuple(int(j) for j in
                  np.unravel_index(np.argmax(np.where(bad, err, -1.0)), a.shape))
        fail(case, what, f"{int(bad.sum())} of {a.size} differ; worst at {i}: "
                         f"{a[i]!r} vs {e[i]!r} (tol {tol} x scale {scale:.3g})")


def check_same_on_all_ranks(case, what, a):
    """The bytes of a are identical on every rank."""
    global nchecks
    nchecks += 1
    a = np.ascontiguousarray(a)
    everyone = comm.allgather(a.tobytes())
    if any(b != everyone[0] for b in everyone):
        fail(case, what, "not bit-identical on all ranks")


def split(shape_n, sizes):
    """Start and stop of this rank's slice of a batch of sum(sizes)."""
    assert len(sizes) == size and sum(sizes) == shape_n
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def case_functional(dtype, layout, sizes, affine, relu, residual):
    name, shape_rest, axis = layout
    dt = np.dtype(dtype)
    case = (f"{name} {dt.name} sizes={sizes} affine={affine} relu={relu} "
            f"residual={residual}")
    N = sum(sizes)
    shape = (N,) + shape_rest
    C = shape[axis]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    cshape = [1] * len(shape)
    cshape[axis] = C
    # a large per-channel offset, as in real activations
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 2.0, C).reshape(cshape)
         + rng.uniform(-50, 50, C).reshape(cshape)).astype(dt)
    gamma = rng.uniform(0.5, 2.0, C).astype(dt) if affine else None
    beta = rng.standard_normal(C).astype(dt) if affine else None
    z = rng.standard_normal(shape).astype(dt) if residual else None
    dy = rng.standard_normal(shape).astype(dt)
    lo, hi = split(N, sizes)
    xl = x[lo:hi]
    zl = None if z is None else z[lo:hi]
    dyl = dy[lo:hi]

    # single process on the global batch
    y0, m0, s0 = fastbn.batch_norm_train(x, gamma, beta, axis=axis, relu=relu,
                                         residual=z)
    g0 = fastbn.batch_norm_backward(dy, x, m0, s0, gamma, axis=axis,
                                    y=y0 if relu else None, residual=residual)
    # synchronised
    y1, m1, s1 = fastbn.batch_norm_train(xl, gamma, beta, axis=axis, relu=relu,
                                         residual=zl, comm=comm)
    g1 = fastbn.batch_norm_backward(dyl, xl, m1, s1, gamma, axis=axis,
                                    y=y1 if relu else None, residual=residual,
                                    comm=comm)
    check(case, "y", y1, y0[lo:hi], dt)
    check(case, "mean", m1, m0, dt)
    check(case, "invstd", s1, s0, dt)
    check(case, "dx", g1[0], g0[0][lo:hi], dt)
    check(case, "dgamma", g1[1], g0[1], dt)
    check(case, "dbeta", g1[2], g0[2], dt)
    if residual:
        check(case, "dresidual", g1[3], g0[3][lo:hi], dt)
    for what, a in (("mean", m1), ("invstd", s1), ("dgamma", g1[1]),
                    ("dbeta", g1[2])):
        check_same_on_all_ranks(case, what, a)

    # the internal contract: global biased variance (float64) and count
    _, _, _, var, count = fastbn._api._train(xl, None, None, axis, 1e-5, False,
                                             None, None, comm, True)
    if count != x.size // C:
        fail(case, "count", f"{count} != {x.size // C}")
    _, var0 = fastbn.batch_stats(x.astype(np.float64), axis=axis)
    check(case, "var (float64)", var, var0, np.float64, tol=TOL[dt])

    # in place (out=x) and a preallocated out
    xc = xl.copy()
    y2, _, _ = fastbn.batch_norm_train(xc, gamma, beta, axis=axis, relu=relu,
                                       residual=zl, comm=comm, out=xc)
    if y2 is not xc:
        fail(case, "out=x", "the returned array is not out")
    check(case, "y (out=x)", y2, y0[lo:hi], dt)


def same_bits(case, what, actual, expected):
    """actual and expected have the same dtype, shape and bytes."""
    global nchecks
    nchecks += 1
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return fail(case, what, f"{actual.dtype}{actual.shape} != "
                                f"{expected.dtype}{expected.shape}")
    if actual.tobytes() != expected.tobytes():
        fail(case, what, "bits differ")


def case_half(dt, layout, sizes):
    """Half x with comm: the statistics within the float sums' bound of the
    synchronised float32 path's on the widened data, y within 1 ulp of its
    output rounded, and the backward (given the half statistics) its
    results rounded once, bit for bit."""
    name, shape_rest, axis = layout
    case = f"half {name} {np.dtype(dt).name} sizes={sizes}"
    N = sum(sizes)
    shape = (N,) + shape_rest
    C = shape[axis]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32).astype(dt)
    z = rng.standard_normal(shape).astype(np.float32).astype(dt)
    dy = rng.standard_normal(shape).astype(np.float32).astype(dt)
    gamma = rng.uniform(0.5, 2.0, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    lo, hi = split(N, sizes)
    xl, zl, dyl = x[lo:hi], z[lo:hi], dy[lo:hi]
    f32 = np.float32
    y1, m1, s1 = fastbn.batch_norm_train(xl, gamma, beta, axis=axis, relu=True,
                                         residual=zl, comm=comm)
    yf, mf, sf = fastbn.batch_norm_train(xl.astype(f32), gamma, beta, axis=axis,
                                         relu=True, residual=zl.astype(f32),
                                         comm=comm)
    # the statistics are summed in float (test_half.py, half_impl.h)
    tol = 130 * 2.0 ** -24
    if not np.all(np.abs(m1.astype(np.float64) - mf) <= tol / sf + 2.0 ** -23 * np.abs(mf)):
        fail(case, "mean", "beyond the float sums' bound")
    if not np.allclose(s1, sf, rtol=tol, atol=0):
        fail(case, "invstd", "beyond the float sums' bound")
    # within 1 ulp of yf rounded: 1.5 ulps of yf (ulp: 2^(e-1) * eps
    # for yf = m 2^e, 0.5 <= m < 1), and below 2^-8 (cancellations)
    # within 1 ulp at 2^-8
    eps = 2.0 ** -10 if np.dtype(dt) == np.float16 else 2.0 ** -7
    err = np.abs(y1.astype(np.float64) - yf)
    ulp = np.ldexp(eps, np.frexp(yf.astype(np.float64))[1] - 1)
    big = np.abs(yf) >= 2.0 ** -8
    if not np.all(np.where(big, err <= 1.5 * ulp, err <= eps * 2.0 ** -8)):
        fail(case, "y", "more than 1 ulp from the float32 path's")
    # the backward, given the half call's statistics: exact
    g1 = fastbn.batch_norm_backward(dyl, xl, m1, s1, gamma, axis=axis, y=y1,
                                    residual=True, comm=comm)
    gf = fastbn.batch_norm_backward(dyl.astype(f32), xl.astype(f32), m1, s1, gamma,
                                    axis=axis, y=y1.astype(f32), residual=True,
                                    comm=comm)
    same_bits(case, "dx", g1[0], gf[0].astype(dt))
    same_bits(case, "dgamma", g1[1], gf[1])
    same_bits(case, "dbeta", g1[2], gf[2])
    same_bits(case, "dresidual", g1[3], gf[3].astype(dt))


def case_layer(dtype, layout, sizes, relu, momentum, residual):
    name, shape_rest, axis = layout
    dt = np.dtype(dtype)
    case = (f"BatchNorm {name} {dt.name} sizes={sizes} relu={relu} "
            f"momentum={momentum} residual={residual}")
    N = sum(sizes)
    shape = (N,) + shape_rest
    C = shape[axis]
    lo, hi = split(N, sizes)
    rng = np.random.default_rng(99 + N)
    kw = dict(axis=axis, relu=relu, momentum=momentum, dtype=dt)
    bn0 = fastbn.BatchNorm(C, **kw)
    bn1 = fastbn.BatchNorm(C, comm=comm, **kw)
    for b in (bn0, bn1):
        b.gamma[...] = np.linspace(0.5, 1.5, C).astype(dt)
        b.beta[...] = np.linspace(-1, 1, C).astype(dt)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + 5).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        z = rng.standard_normal(shape).astype(dt) if residual else None
        y0 = bn0(x, z) if residual else bn0(x)
        y1 = bn1(x[lo:hi], z[lo:hi]) if residual else bn1(x[lo:hi])
        check(case, f"step {step} y", y1, y0[lo:hi], dt)
        dx0 = bn0.backward(dy)
        dx1 = bn1.backward(dy[lo:hi])
        if residual:
            check(case, f"step {step} dresidual", dx1[1], dx0[1][lo:hi], dt)
            dx0, dx1 = dx0[0], dx1[0]
        check(case, f"step {step} dx", dx1, dx0[lo:hi], dt)
        check(case, f"step {step} dgamma", bn1.dgamma, bn0.dgamma, dt)
        check(case, f"step {step} dbeta", bn1.dbeta, bn0.dbeta, dt)
        check(case, f"step {step} running_mean", bn1.running_mean,
              bn0.running_mean, dt)
        check(case, f"step {step} running_var", bn1.running_var,
              bn0.running_var, dt)
        check_same_on_all_ranks(case, f"step {step} running_var", bn1.running_var)
        if int(bn1.num_batches_tracked) != int(bn0.num_batches_tracked):
            fail(case, "num_batches_tracked",
                 f"{bn1.num_batches_tracked} != {bn0.num_batches_tracked}")
    # evaluation mode uses no collective: only rank 0 calls it (a collective
    # would hang, and the test's timeout would fail the job)
    bn0.eval()
    bn1.eval()
    if rank == 0 and hi > lo:
        x = (rng.standard_normal((hi - lo,) + shape_rest) * 2 + 5).astype(dt)
        check(case, "eval y", bn1(x), bn0(x), dt)
        if x.size // C >= 2:
            # batch statistics in eval mode (track_running_stats=False): each
            # rank's own batch, forward and backward, still no collective
            kw2 = dict(kw, track_running_stats=False)
            b0 = fastbn.BatchNorm(C, **kw2).eval()
            b1 = fastbn.BatchNorm(C, comm=comm, **kw2).eval()
            check(case, "eval batch-stats y", b1(x), b0(x), dt)
            dyl = rng.standard_normal(x.shape).astype(dt)
            check(case, "eval batch-stats dx", b1.backward(dyl), b0.backward(dyl), dt)
    comm.Barrier()


def case_too_few(dtype, sizes):
    """A global batch with < 2 values per channel: ValueError on every rank,
    for the forward and the backward, and no deadlock."""
    case = f"too few values {np.dtype(dtype).name} sizes={sizes}"
    lo, hi = split(sum(sizes), sizes)
    x = np.arange(3 * (hi - lo), dtype=dtype).reshape(hi - lo, 3)
    for what, fn in (
        ("forward", lambda: fastbn.batch_norm_train(x, comm=comm)),
        ("backward", lambda: fastbn.batch_norm_backward(
            x, x, np.zeros(3), np.ones(3), comm=comm)),
    ):
        try:
            fn()
        except ValueError as e:
            if "at least 2 values" not in str(e):
                fail(case, what, f"unexpected message {e}")
        else:
            fail(case, what, "no ValueError")
    comm.Barrier()


def case_bad_comm():
    x = np.ones((4, 3))
    for bad in (object(), "COMM_WORLD", 1):
        try:
            fastbn.batch_norm_train(x, comm=bad)
        except TypeError as e:
            if "comm must be an mpi4py communicator" not in str(e):
                fail("bad comm", repr(bad), f"unexpected message {e}")
        else:
            fail("bad comm", repr(bad), "no TypeError")
    try:
        fastbn.batch_norm_train(x, comm=MPI.COMM_NULL)
    except ValueError:
        pass
    else:
        fail("bad comm", "COMM_NULL", "no ValueError")


def local_sizes():
    """Splits of the global batch over `size` ranks: equal, unequal, one empty."""
    if size == 1:
        return [[4], [7]]
    if size == 2:
        return [[3, 3], [2, 5], [0, 6], [5, 0]]
    base = [[2] * size, list(range(1, size + 1)), [0] + [3] * (size - 1),
            [3] * (size - 1) + [0]]
    if size >= 3:
        base.append([4] + [0] * (size - 2) + [1])
    return base


LAYOUTS = [
    ("NCHW", (5, 4, 3), 1),      # channel-first kernels, inner = 12
    ("NHWC", (4, 3, 5), -1),     # channel-last kernels, inner = 1
    ("NC", (6,), 1),
    ("NCHW-big", (3, 40, 40), 1),  # several kernel blocks per channel
]


def main():
    case_bad_comm()
    for dtype in (np.float64, np.float32):
        for layout in LAYOUTS:
            for sizes in (local_sizes() if layout[0] != "NCHW-big"
                          else local_sizes()[1:3]):
                for affine, relu, residual in ((False, False, False),
                                               (True, True, True),
                                               (True, False, True)):
                    case_functional(dtype, layout, sizes, affine, relu, residual)
    halves = [np.float16]
    try:
        import ml_dtypes
        halves.append(ml_dtypes.bfloat16)
    except ImportError:  # in the test extra; float16 still runs
        pass
    for dt in halves:
        for layout in LAYOUTS[:2]:
            for sizes in local_sizes()[1:3]:
                case_half(dt, layout, sizes)
    for dtype in (np.float64, np.float32):
        case_too_few(dtype, [1] + [0] * (size - 1))
        case_too_few(dtype, [0] * size)
    has_layer = hasattr(fastbn, "BatchNorm")
    if has_layer:
        for dtype in (np.float64, np.float32):
            for layout in LAYOUTS[:2]:
                for sizes in local_sizes()[1:3]:
                    f32 = dtype == np.float32
                    case_layer(dtype, layout, sizes, relu=f32,
                               momentum=0.1 if f32 else None, residual=f32)
    comm.Barrier()
    if rank == 0:
        print(f"mpi_worker: {size} ranks, {nchecks} checks per rank, layer "
              f"{'tested' if has_layer else 'NOT tested (no fastbn.BatchNorm)'}",
              flush=True)
    for f in failures:
        print(f, flush=True)
    return len(failures)


if __name__ == "__main__":
    try:
        nfail = main()
    except BaseException:
        sys.stdout.flush()
        print(f"[rank {rank}/{size}] unexpected exception:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(101)
    sys.exit(min(nfail, 100))
