"""A sample of every kernel on odd shapes, for valgrind and the sanitizers.

Run under `valgrind` with FASTBN_SIMD=baseline (valgrind does not decode
AVX-512) and PYTHONMALLOC=malloc; see tools/check_memory.sh.
"""
import numpy as np

import fastbn
from fastbn import _kernels

rng = np.random.default_rng(0)
CASES = [((3, 5, 7), 1), ((17, 3), 1), ((2, 3, 4, 5), -1), ((9, 1), 1),
         ((4, 2, 3, 1), 2), ((5, 70, 3), 1), ((130, 5, 33), 1), ((600, 9), -1)]

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
print("memcheck sample done")
