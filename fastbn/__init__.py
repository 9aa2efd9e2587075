"""fastbn: fast, exact batch normalization for the CPU.

Fused C + OpenMP kernels for NumPy arrays: per-channel batch statistics,
normalisation, optional scale (gamma) and shift (beta), residual add and
ReLU in as few passes over memory as possible, the backward pass, a
BatchNorm layer with running statistics, synchronised statistics over MPI,
and folding tools.  The documentation is in docs/ (the contract:
docs/contract.md); each function's docstring has its parameters, e.g.
``help(fastbn.batch_norm_train)``.

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.random.default_rng(0).standard_normal((8, 4, 5, 5)).astype(np.float32)
>>> y, mean, invstd = fastbn.batch_norm_train(x, relu=True)
>>> y.shape, y.dtype, mean.shape
((8, 4, 5, 5), dtype('float32'), (4,))
>>> bool((y >= 0).all())
True
"""
import os as _os

from ._version import __version__
from . import _kernels

# FASTBN_SIMD=baseline|avx2|avx512|avx512bf16|auto picks the kernels' instruction set
# (e.g. baseline under valgrind, which does not know AVX-512).
_kernels.set_simd(_os.environ.get("FASTBN_SIMD", "auto").strip().lower() or "auto")
# FASTBN_SCHEDULER=openmp runs the kernels' work in OpenMP parallel loops
# instead of fastbn's caller-runs pool (for comparison; see docs/guide/threads.md).
if _os.environ.get("FASTBN_SCHEDULER", "").strip():
    _kernels.set_scheduler(_os.environ["FASTBN_SCHEDULER"].strip().lower())
from ._api import (batch_norm_backward, batch_norm_infer, batch_norm_train,
                   batch_stats, merge_moments, moments)
from ._threads import get_num_threads, num_threads, set_num_threads, show_config
from .layer import BatchNorm
from .folding import absorb_scale, fold_into_linear

__all__ = [
    "__version__",
    "batch_stats", "moments", "merge_moments",
    "batch_norm_train", "batch_norm_infer", "batch_norm_backward",
    "get_num_threads", "set_num_threads", "num_threads", "show_config",
    "BatchNorm", "fold_into_linear", "absorb_scale",
]
