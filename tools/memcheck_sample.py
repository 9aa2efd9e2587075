"""A sample of every kernel on odd shapes, for valgrind and the sanitizers.

Run under `valgrind` with FASTBN_SIMD=baseline (valgrind does not decode
AVX-512) and PYTHONMALLOC=malloc; see tools/check_memory.sh.
"""
import numpy as np

import fastbn
from fastbn import _kernels

rng = np.random.default_rng(0)
CASES = [((3, 5, 7), 1), ((17, 3), 1), ((2, 3, 4, 5), -1), ((9, 1), 1),
         ((4, 2, 3, 1), 2), ((5, 70, 3), 1), ((130, 5, 33), 1), ((600, 9), -1),
         ((70, 20), 1), ((40, 150), 1),  # (channel-last strips; long rows)
         ((3, 1100), 1), ((2, 2, 1500), 1)]  # (rows over a tile; long runs)

# the default plans, then every plan forced on these small arrays: the pool
# (no serial cut-off), fused tiles, two-phase tiles of one chunk, and
# non-temporal stores (normally only for outputs larger than the L3)
PLANS = [dict(), dict(serial=0, wake=0, fuse=1 << 50),
         dict(serial=0, wake=0, fuse=0, tile=1),
         dict(serial=0, wake=0, fuse=1 << 50, nt=0), dict(serial=0, wake=0, fuse=0, nt=0)]
for nthreads, tuning in [(n, t) for n in (1, 2) for t in PLANS]:
    _kernels.set_tuning(**tuning)
    with fastbn.num_threads(nthreads):
        for shape, axis in CASES:
            for dt in (np.float32, np.float64, np.float16):
                x = rng.standard_normal(shape).astype(dt)
                C = shape[axis]
                g = rng.random(C).astype(dt) + 0.5
                b = rng.standard_normal(C).astype(dt)
                z = rng.standard_normal(shape).astype(dt)
                y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                                  residual=z)
                fastbn.batch_norm_train(x.copy(), axis=axis, out=None)
                xi = x.copy()
                fastbn.batch_norm_train(xi, g, None, axis=axis, out=xi)
                fastbn.batch_norm_infer(x, m, 1 / s.astype(np.float64) ** 2, g, b,
                                        axis=axis, relu=True)
                fastbn.moments(x, axis=axis)
                fastbn.batch_stats(x, axis=axis)
                dy = rng.standard_normal(shape).astype(dt)
                fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                           residual=True)
                fastbn.batch_norm_backward(dy, x, m, s, None, axis=axis,
                                           training=False)
                fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, out=dy)

# ghost batches (virtual_batch_size) and batch renormalization, every plan
GHOST = [((6, 5, 7), 1, 2), ((64, 3), 1, 16), ((6, 3, 4, 5), -1, 3),
         ((600, 9), -1, 100), ((10, 70, 3), 1, 5), ((8, 1, 30), 1, 4)]
for nthreads, tuning in [(n, t) for n in (1, 2) for t in PLANS]:
    _kernels.set_tuning(**tuning)
    with fastbn.num_threads(nthreads):
        for shape, axis, k in GHOST:
            for dt in (np.float32, np.float64, np.float16):
                x = rng.standard_normal(shape).astype(dt)
                C = shape[axis]
                g = rng.random(C).astype(dt) + 0.5
                z = rng.standard_normal(shape).astype(dt)
                dy = rng.standard_normal(shape).astype(dt)
                y, m, s = fastbn.batch_norm_train(x, g, None, axis=axis, relu=True,
                                                  residual=z, virtual_batch_size=k)
                fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                           residual=True, virtual_batch_size=k)
                fastbn.batch_norm_backward(dy, x, m, s, None, axis=axis,
                                           training=False, virtual_batch_size=k)
                for vbs in (None, k):
                    # (half x: a float32 layer, mixed precision)
                    bn = fastbn.BatchNorm(C, axis=axis, relu=True,
                                          dtype=np.float32 if dt == np.float16 else dt,
                                          virtual_batch_size=vbs, renorm=True,
                                          renorm_clipping={"rmax": 2, "dmax": 1})
                    bn(x, residual=z)
                    bn.backward(dy)
# the per-column kernels of fastbn.sklearn (csrc/colstats_impl.h): C and Fortran
# order, NaN, weights, in place, the search for infinities, every plan
for tuning in [dict(), dict(serial=0, wake=0, nt=0)]:
    _kernels.set_tuning(**tuning)
    for n, p in [(1, 1), (7, 3), (33, 17), (300, 70), (5000, 2)]:
        for dt in (np.float32, np.float64):
            for order in "CF":
                x = np.asarray(rng.standard_normal((n, p)), dtype=dt, order=order)
                x[rng.random((n, p)) < 0.1] = np.nan
                cm = order == "F" and (p == 1 or n > 1)
                w = rng.random(n)
                for ww in (None, w):
                    k, m, q = _kernels.colstats(x, n, p, cm, ww, 2)
                s = np.sqrt(q / np.maximum(k, 1)) + 1
                y = np.empty_like(x, order=order)
                _kernels.standardize(x, n, p, cm, m, s, False, y, 2)
                _kernels.standardize(y, n, p, cm, m, s, True, y, 2)
                _kernels.standardize(x, n, p, cm, None, None, False, None, 2)
_kernels.set_tuning()
print("memcheck sample done")
