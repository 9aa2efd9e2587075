"""Benchmark report: fastbn against NumPy, PyTorch and the memory floor.

Run ``python -m fastbn.bench --help`` for the options.  Batch normalization
on the CPU is memory-bound, so every workload is also timed as
``np.copyto(dst, x)`` of the same array (one read and one write of its
bytes): the *floor*.  Each implementation is first checked against a float64
NumPy reference on the same input, then all implementations of a workload
are timed side by side, interleaved round by round (fair on a noisy, shared
machine), and the median and minimum are reported.

Only the standard library and NumPy are imported at module level; PyTorch is
used when it can be imported (``--no-torch`` turns it off) and matplotlib
only for ``--plot``.  The workload definitions, inputs, references and
implementation builders here are shared with the pytest-benchmark suites in
``bench/`` of the source tree.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import glob
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

EPS = 1e-5
#: Relative tolerance (of the largest reference value) per dtype.
TOLERANCE = {"float32": 2e-3, "float64": 1e-9}

MODE_TITLES = {
    "train": "training forward + ReLU",
    "infer": "inference forward + ReLU",
    "backward": "backward + ReLU",
}


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark case: a mode, a shape, a channel axis and a dtype.

    ``target_ratio`` is the goal for fastbn's time / floor (issue 4) and
    ``target_us`` a goal in microseconds per call (tiny workloads).
    """

    key: str
    mode: str  # "train", "infer" or "backward"
    shape: Tuple[int, ...]
    axis: int = 1
    dtype: str = "float32"
    tiny: bool = False  # per-call timing, reported in microseconds
    main: bool = False  # also time fastbn without out=
    quick: bool = True  # part of --quick
    target_ratio: Optional[float] = None
    target_us: Optional[float] = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def channel_axis(self) -> int:
        """The channel axis as a non-negative number."""
        return self.axis % self.ndim

    @property
    def reduce_axes(self) -> Tuple[int, ...]:
        """The axes statistics are taken over (all but the channel axis)."""
        return tuple(i for i in range(self.ndim) if i != self.channel_axis)

    @property
    def channels(self) -> int:
        return self.shape[self.channel_axis]

    @property
    def layout(self) -> str:
        """NC, NCHW, NHWC (or a generic description)."""
        if self.ndim == 2 and self.channel_axis == 1:
            return "NC"
        if self.ndim == 4:
            return "NCHW" if self.channel_axis == 1 else (
                "NHWC" if self.channel_axis == 3 else "axis=%d" % self.axis)
        return "%dD axis=%d" % (self.ndim, self.axis)

    @property
    def count(self) -> int:
        """Values per channel."""
        return math.prod(self.shape) // self.channels

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def floor_bytes(self) -> int:
        """Bytes moved by the floor, np.copyto: one read and one write."""
        return 2 * self.nbytes

    @property
    def min_bytes(self) -> int:
        """Bytes the operation itself must move at least.

        Forward: read x, write y.  Backward: read dy, x and y, write dx.
        """
        return (4 if self.mode == "backward" else 2) * self.nbytes

    @property
    def group(self) -> str:
        """A short name: mode, layout, shape and dtype."""
        return "%s-%s-%s-%s" % (self.mode, self.layout,
                                "x".join(map(str, self.shape)), self.dtype)

    @property
    def title(self) -> str:
        kind = "tiny " if self.tiny else ""
        axis = "" if self.axis == 1 else ", axis=%d" % self.axis
        return "%s%s, %s %s%s %s (%s)" % (
            kind, MODE_TITLES[self.mode], self.layout, self.shape, axis,
            self.dtype, _fmt_bytes(self.nbytes))

    @property
    def target_text(self) -> str:
        if self.target_ratio is not None:
            return "<= %.2gx floor" % self.target_ratio
        if self.target_us is not None:
            return "<= %g us/call" % self.target_us
        return ""


WORKLOADS: Tuple[Workload, ...] = (
    Workload("train-nchw", "train", (32, 64, 56, 56), main=True,
             target_ratio=1.2),
    Workload("train-nhwc", "train", (32, 56, 56, 64), axis=-1,
             target_ratio=1.3),
    Workload("train-mlp", "train", (4096, 1024), target_ratio=1.3),
    Workload("train-large", "train", (16, 64, 112, 112), target_ratio=1.3),
    Workload("train-nchw-f64", "train", (32, 64, 56, 56), dtype="float64",
             quick=False),
    Workload("infer-nchw", "infer", (32, 64, 56, 56), target_ratio=0.9),
    Workload("backward-nchw", "backward", (32, 64, 56, 56), target_ratio=2.0),
    Workload("backward-nhwc", "backward", (32, 56, 56, 64), axis=-1,
             target_ratio=2.5),
    Workload("tiny", "train", (8, 16, 8, 8), tiny=True, main=True,
             target_us=5.0),
    # in-cache sizes (3 MB): where the second thread shows in the
    # 1-vs-N-thread table (target >= 1.7x), rather than the memory bus
    Workload("train-incache", "train", (16, 64, 28, 28)),
    Workload("train-incache-nhwc", "train", (8, 28, 28, 128), axis=-1),
)


def select_workloads(quick: bool = False, only: Optional[Sequence[str]] = None,
                     backward: bool = True) -> List[Workload]:
    """The workloads to run: all, the --quick subset, or the named ones."""
    chosen = []
    for w in WORKLOADS:
        if only:
            if w.key not in only:
                continue
        elif quick and not w.quick:
            continue
        if w.mode == "backward" and not backward:
            continue
        chosen.append(w)
    return chosen


# --------------------------------------------------------------------------
# Inputs and the float64 reference
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Inputs:
    """Arrays shared by every implementation of one workload."""

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray  # running mean (infer) or the batch mean (backward)
    var: np.ndarray  # running variance (infer)
    invstd: np.ndarray  # batch invstd (backward)
    dy: Optional[np.ndarray] = None  # backward only
    y: Optional[np.ndarray] = None  # forward output (backward only)


def bshape(w: Workload) -> Tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against x."""
    return tuple(w.channels if i == w.channel_axis else 1
                 for i in range(w.ndim))


def make_inputs(w: Workload, seed: int = 0) -> Inputs:
    """Random inputs (offset, scaled normal data) for a workload."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(w.dtype)
    c = w.channels
    x = (rng.standard_normal(w.shape, dtype=np.float64) * 2.0 + 0.5).astype(dt)
    gamma = rng.uniform(0.5, 1.5, c).astype(dt)
    beta = rng.normal(0.0, 0.5, c).astype(dt)
    mean = rng.normal(0.5, 0.1, c).astype(dt)
    var = rng.uniform(3.0, 5.0, c).astype(dt)
    inp = Inputs(x, gamma, beta, mean, var, invstd=(1 / np.sqrt(var + EPS)))
    if w.mode == "backward":
        y, mean64, invstd64 = _ref_train(w, x, gamma, beta)
        inp.mean = mean64.astype(dt)
        inp.invstd = invstd64.astype(dt)
        inp.y = y.astype(dt)
        inp.dy = rng.standard_normal(w.shape, dtype=np.float64).astype(dt)
    return inp


def _ref_train(w: Workload, x, gamma, beta):
    """float64 training forward + ReLU: (y, mean, invstd)."""
    b = bshape(w)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=w.reduce_axes)
    var = x64.var(axis=w.reduce_axes)
    invstd = 1.0 / np.sqrt(var + EPS)
    y = (x64 - mean.reshape(b)) * (invstd * gamma).reshape(b) + \
        beta.astype(np.float64).reshape(b)
    np.maximum(y, 0.0, out=y)
    return y, mean, invstd


def reference(w: Workload, inp: Inputs) -> Tuple[np.ndarray, ...]:
    """float64 NumPy reference outputs of a workload.

    train: (y, mean, invstd); infer: (y,); backward: (dx, dgamma, dbeta).
    """
    b = bshape(w)
    f64 = np.float64
    if w.mode == "train":
        return _ref_train(w, inp.x, inp.gamma, inp.beta)
    if w.mode == "infer":
        a = inp.gamma.astype(f64) / np.sqrt(inp.var.astype(f64) + EPS)
        y = (inp.x.astype(f64) - inp.mean.astype(f64).reshape(b)) * \
            a.reshape(b) + inp.beta.astype(f64).reshape(b)
        return (np.maximum(y, 0.0),)
    # backward with a fused ReLU: dy' = dy * (y > 0)
    g = inp.dy.astype(f64) * (inp.y > 0)
    invstd = inp.invstd.astype(f64)
    xhat = (inp.x.astype(f64) - inp.mean.astype(f64).reshape(b)) * \
        invstd.reshape(b)
    dbeta = g.sum(axis=w.reduce_axes)
    dgamma = (g * xhat).sum(axis=w.reduce_axes)
    n = w.count
    k = inp.gamma.astype(f64) * invstd
    dx = k.reshape(b) * (g - dbeta.reshape(b) / n -
                         xhat * dgamma.reshape(b) / n)
    return dx, dgamma, dbeta


def compare(outputs: Sequence[np.ndarray], ref: Sequence[np.ndarray],
            dtype: str) -> Tuple[bool, float, str]:
    """Check outputs against the reference (pairwise, as many as given).

    Returns (ok, worst relative error, message).  The error of each array
    is max |out - ref| / max |ref|.
    """
    tol = TOLERANCE[dtype]
    worst = 0.0
    for i, (out, r) in enumerate(zip(outputs, ref)):
        out = np.asarray(out)
        if out.shape != r.shape:
            return False, math.inf, "output %d has shape %s, expected %s" % (
                i, out.shape, r.shape)
        if not np.all(np.isfinite(out)):
            return False, math.inf, "output %d has NaN or Inf" % i
        scale = max(float(np.max(np.abs(r))), 1e-30)
        err = float(np.max(np.abs(out.astype(np.float64) - r))) / scale
        worst = max(worst, err)
        if not err <= tol:
            return False, err, "output %d: relative error %.2g > %.0g" % (
                i, err, tol)
    return True, worst, "ok"


# --------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Impl:
    """One implementation of a workload, ready to call.

    ``fn()`` does the work; ``to_numpy(result)`` turns its result into a
    tuple of NumPy arrays in the reference's order (used only to verify).
    ``role`` is one of "fastbn", "numpy", "tuned", "floor", "peer".
    ``threads`` is the fastbn thread count set around each timed call.
    ``check`` overrides the comparison with the reference (the floor).
    """

    name: str
    role: str
    fn: Callable[[], Any]
    to_numpy: Callable[[Any], Tuple[np.ndarray, ...]] = None  # type: ignore
    threads: Optional[int] = None
    optional: bool = False
    check: Optional[Callable[[Any], Tuple[bool, float, str]]] = None

    def context(self, fastbn_mod=None):
        """Context manager setting fastbn's thread count, if it has one."""
        if self.threads is not None and fastbn_mod is not None and \
                hasattr(fastbn_mod, "num_threads"):
            return fastbn_mod.num_threads(self.threads)
        return contextlib.nullcontext()

    def outputs(self, result) -> Tuple[np.ndarray, ...]:
        if self.to_numpy is not None:
            return self.to_numpy(result)
        if isinstance(result, np.ndarray):
            return (result,)
        return tuple(np.asarray(r) for r in result)


def fastbn_impls(w: Workload, inp: Inputs, fastbn, threads: int,
                 compare_one_thread: bool = True) -> List[Impl]:
    """fastbn with a preallocated out= (at `threads` and at 1 thread) and,
    for the main rows, without out=."""
    x, g, b, ax = inp.x, inp.gamma, inp.beta, w.axis
    out = np.empty_like(x)
    if w.mode == "train":
        def call_out():
            return fastbn.batch_norm_train(x, g, b, axis=ax, eps=EPS,
                                           relu=True, out=out)

        def call_new():
            return fastbn.batch_norm_train(x, g, b, axis=ax, eps=EPS,
                                           relu=True)
    elif w.mode == "infer":
        m, v = inp.mean, inp.var

        def call_out():
            return fastbn.batch_norm_infer(x, m, v, g, b, axis=ax, eps=EPS,
                                           relu=True, out=out)

        def call_new():
            return fastbn.batch_norm_infer(x, m, v, g, b, axis=ax, eps=EPS,
                                           relu=True)
    else:
        dy, y, m, s = inp.dy, inp.y, inp.mean, inp.invstd

        def call_out():
            return fastbn.batch_norm_backward(dy, x, m, s, g, axis=ax, y=y,
                                              out=out)

        def call_new():
            return fastbn.batch_norm_backward(dy, x, m, s, g, axis=ax, y=y)
    impls = [Impl("fastbn (out=)", "fastbn", call_out, threads=threads)]
    if w.main:
        impls.append(Impl("fastbn", "fastbn", call_new, threads=threads))
    if compare_one_thread and threads != 1:
        impls.append(Impl("fastbn (out=, 1 thread)", "fastbn", call_out,
                          threads=1))
    return impls


def numpy_naive_impl(w: Workload, inp: Inputs) -> Impl:
    """NumPy as users write it: one expression, temporaries everywhere."""
    axes, b = w.reduce_axes, bshape(w)
    x, eps = inp.x, EPS
    gamma, beta = inp.gamma.reshape(b), inp.beta.reshape(b)
    if w.mode == "train":
        def fn():
            mean = x.mean(axis=axes, keepdims=True)
            var = x.var(axis=axes, keepdims=True)
            return np.maximum(0, (x - mean) / np.sqrt(var + eps) * gamma
                              + beta)
    elif w.mode == "infer":
        mean, var = inp.mean.reshape(b), inp.var.reshape(b)

        def fn():
            return np.maximum(0, (x - mean) / np.sqrt(var + eps) * gamma
                              + beta)
    else:
        dy, y, n = inp.dy, inp.y, w.count
        mean, invstd = inp.mean.reshape(b), inp.invstd.reshape(b)

        def fn():
            g = dy * (y > 0)
            xhat = (x - mean) * invstd
            dbeta = g.sum(axis=axes)
            dgamma = (g * xhat).sum(axis=axes)
            dx = gamma * invstd / n * (n * g - dbeta.reshape(b)
                                       - xhat * dgamma.reshape(b))
            return dx, dgamma, dbeta
    return Impl("numpy", "numpy", fn)


def _block_view(w: Workload, a: np.ndarray):
    """The (outer, C, inner) view of a C-contiguous array, (outer, C) when
    inner == 1, and the einsum subscripts reducing it to (C,)."""
    c = w.channel_axis
    outer = math.prod(w.shape[:c])
    inner = math.prod(w.shape[c + 1:])
    if inner == 1:
        return a.reshape(outer, w.channels), "oc,oc->c", (1, -1), (0,)
    return (a.reshape(outer, w.channels, inner), "oci,oci->c", (1, -1, 1),
            (0, 2))


def numpy_tuned_impl(w: Workload, inp: Inputs) -> Impl:
    """NumPy written for speed: preallocated buffers, in-place ufuncs,
    per-channel constants folded first, einsum for the sums of products."""
    x3, sub, cb, axes = _block_view(w, inp.x)
    gamma, beta, n = inp.gamma, inp.beta, w.count
    dt = inp.x.dtype
    y = np.empty_like(inp.x)
    y3 = _block_view(w, y)[0]
    if w.mode == "train":
        def fn():
            mean = x3.mean(axis=axes)
            np.subtract(x3, mean.reshape(cb), out=y3)       # y = x - mean
            var = np.einsum(sub, y3, y3) / n
            a = (gamma / np.sqrt(var + EPS)).astype(dt)
            np.multiply(y3, a.reshape(cb), out=y3)
            np.add(y3, beta.reshape(cb), out=y3)
            np.maximum(y3, 0, out=y3)
            return y
    elif w.mode == "infer":
        a = (gamma / np.sqrt(inp.var + EPS)).astype(dt)
        c = (beta - inp.mean * a).astype(dt)

        def fn():
            np.multiply(x3, a.reshape(cb), out=y3)
            np.add(y3, c.reshape(cb), out=y3)
            np.maximum(y3, 0, out=y3)
            return y
    else:
        dy3 = _block_view(w, inp.dy)[0]
        yf3 = _block_view(w, inp.y)[0]
        mean, invstd = inp.mean, inp.invstd
        mask = np.empty(x3.shape, dtype=bool)
        g = np.empty_like(x3)
        t = np.empty_like(x3)
        k = (gamma * invstd).astype(dt)

        def fn():
            np.greater(yf3, 0, out=mask)
            np.multiply(dy3, mask, out=g)                    # dy' = dy*(y>0)
            dbeta = g.sum(axis=axes)
            np.subtract(x3, mean.reshape(cb), out=t)         # t = x - mean
            s = np.einsum(sub, g, t)                         # sum dy'(x-mean)
            c2 = (-k * invstd * invstd * s / n).astype(dt)
            c3 = (-k * dbeta / n).astype(dt)
            np.multiply(g, k.reshape(cb), out=y3)
            np.multiply(t, c2.reshape(cb), out=t)
            np.add(y3, t, out=y3)
            np.add(y3, c3.reshape(cb), out=y3)
            return y, s * invstd, dbeta
    return Impl("numpy tuned", "tuned", fn)


def floor_impl(w: Workload, inp: Inputs) -> Impl:
    """np.copyto of x into a preallocated array: one read, one write."""
    x = inp.x
    dst = np.empty_like(x)

    def fn():
        np.copyto(dst, x)
        return dst

    def check(result):
        ok = np.array_equal(result, x)
        return ok, 0.0 if ok else math.inf, "ok" if ok else "copy differs"
    return Impl("np.copyto (floor)", "floor", fn, check=check)


def _torch_nchw(torch, w: Workload, a: np.ndarray):
    """A torch tensor sharing a's memory, channels at dimension 1
    (channels-last memory for NHWC input)."""
    t = torch.from_numpy(a)
    if w.channel_axis != 1:
        perm = (0, w.ndim - 1) + tuple(range(1, w.ndim - 1))
        t = t.permute(*perm)
    return t


def _torch_to_numpy(torch, w: Workload):
    """Convert torch results (NCHW-ordered views) back to NumPy in x's
    layout."""
    def conv(result):
        if isinstance(result, torch.Tensor):
            result = (result,)
        arrays = []
        for r in result:
            r = r.detach()
            if r.dim() == w.ndim and w.channel_axis != 1:
                r = r.permute(0, *range(2, w.ndim), 1)
            arrays.append(r.numpy())
        return tuple(arrays)
    return conv


def torch_eager_impl(w: Workload, inp: Inputs, torch) -> Impl:
    """PyTorch eager: F.batch_norm + torch.relu_ (forward), or the aten
    kernels autograd calls: threshold_backward + native_batch_norm_backward.
    """
    F = torch.nn.functional
    x = _torch_nchw(torch, w, inp.x)
    gamma, beta = torch.from_numpy(inp.gamma), torch.from_numpy(inp.beta)
    if w.mode == "train":
        def fn():
            return torch.relu_(F.batch_norm(x, None, None, gamma, beta,
                                            training=True, eps=EPS))
    elif w.mode == "infer":
        m, v = torch.from_numpy(inp.mean), torch.from_numpy(inp.var)

        def fn():
            return torch.relu_(F.batch_norm(x, m, v, gamma, beta,
                                            training=False, eps=EPS))
    else:
        dy, y = _torch_nchw(torch, w, inp.dy), _torch_nchw(torch, w, inp.y)
        m, s = torch.from_numpy(inp.mean), torch.from_numpy(inp.invstd)
        aten = torch.ops.aten

        def fn():
            g = aten.threshold_backward(dy, y, 0)
            return aten.native_batch_norm_backward(
                g, x, gamma, None, None, m, s, True, EPS, [True, True, True])
    return Impl("torch eager", "peer", fn, to_numpy=_torch_to_numpy(torch, w))


def torch_compile_impl(w: Workload, inp: Inputs, torch) -> Impl:
    """torch.compile (inductor) of the same computation, compiled for this
    shape (the first call, made during verification, compiles)."""
    F = torch.nn.functional
    x = _torch_nchw(torch, w, inp.x)
    gamma, beta = torch.from_numpy(inp.gamma), torch.from_numpy(inp.beta)
    torch._dynamo.reset()
    if w.mode == "train":
        def f(x, gamma, beta):
            return torch.relu(F.batch_norm(x, None, None, gamma, beta,
                                           training=True, eps=EPS))
        cf = torch.compile(f, dynamic=False)

        def fn():
            return cf(x, gamma, beta)
    elif w.mode == "infer":
        m, v = torch.from_numpy(inp.mean), torch.from_numpy(inp.var)

        def f(x, m, v, gamma, beta):
            return torch.relu(F.batch_norm(x, m, v, gamma, beta,
                                           training=False, eps=EPS))
        cf = torch.compile(f, dynamic=False)

        def fn():
            return cf(x, m, v, gamma, beta)
    else:
        dy, y = _torch_nchw(torch, w, inp.dy), _torch_nchw(torch, w, inp.y)
        m, s = torch.from_numpy(inp.mean), torch.from_numpy(inp.invstd)
        dims = [0] + list(range(2, w.ndim))
        shp = [1, -1] + [1] * (w.ndim - 2)
        n = w.count

        def f(dy, x, y, m, s, gamma):
            g = torch.where(y > 0, dy, 0)
            xhat = (x - m.view(shp)) * s.view(shp)
            dbeta = g.sum(dims)
            dgamma = (g * xhat).sum(dims)
            dx = (gamma * s).view(shp) * (g - dbeta.view(shp) / n
                                          - xhat * dgamma.view(shp) / n)
            return dx, dgamma, dbeta
        cf = torch.compile(f, dynamic=False)

        def fn():
            return cf(dy, x, y, m, s, gamma)
    return Impl("torch.compile", "peer", fn,
                to_numpy=_torch_to_numpy(torch, w), optional=True)


def build_impls(w: Workload, inp: Inputs, fastbn, threads: int,
                torch=None, compile_torch: bool = False,
                compare_one_thread: bool = True) -> List[Impl]:
    """Every implementation of a workload, in table order."""
    impls = fastbn_impls(w, inp, fastbn, threads, compare_one_thread)
    impls += [numpy_naive_impl(w, inp), numpy_tuned_impl(w, inp),
              floor_impl(w, inp)]
    if torch is not None:
        impls.append(torch_eager_impl(w, inp, torch))
        if compile_torch:
            impls.append(torch_compile_impl(w, inp, torch))
    return impls


def check_result(impl: Impl, w: Workload, ref, result) -> Tuple[bool, float,
                                                                 str]:
    """Compare what ``impl.fn()`` returned with the reference."""
    if impl.check is not None:
        return impl.check(result)
    return compare(impl.outputs(result), ref, w.dtype)


def verify(impl: Impl, w: Workload, ref, fastbn=None) -> Tuple[bool, float,
                                                                  str]:
    """Call an implementation once and compare its result with `ref`.

    Exceptions become a failed check whose message names the exception.
    """
    try:
        with impl.context(fastbn):
            result = impl.fn()
        return check_result(impl, w, ref, result)
    except Exception as exc:  # shown in the table, never hidden
        msg = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0]
                          if str(exc) else "")
        return False, math.inf, msg


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

def _run(fn: Callable[[], Any], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def measure(impls: Sequence[Impl], rounds: int, *, fastbn=None,
            min_sample: float = 0.002, pause: float = 0.01,
            progress: Callable[[str], None] = lambda s: None
            ) -> Dict[str, List[float]]:
    """Time implementations side by side; seconds per call, one list each.

    After a warm-up call, each implementation is calibrated so that a
    sample (``number`` calls) takes at least `min_sample` seconds.  Then,
    in each of `rounds` rounds, every implementation takes one sample, in
    an order rotated from round to round.  `pause` seconds of sleep
    between samples let the OpenMP threads of the previous implementation
    stop spinning (libgomp's idle threads spin about 7 ms after a parallel
    region; they would steal a core on a 2-core machine).  The
    garbage collector is off while timing.
    """
    numbers = {}
    for imp in impls:
        with imp.context(fastbn):
            imp.fn()  # warm-up
            t = _run(imp.fn, 1)
        numbers[imp.name] = max(1, min(100000, math.ceil(min_sample /
                                                         max(t, 1e-9))))
    samples: Dict[str, List[float]] = {imp.name: [] for imp in impls}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            progress("round %d/%d" % (r + 1, rounds))
            k = r % len(impls)
            for imp in list(impls[k:]) + list(impls[:k]):
                n = numbers[imp.name]
                with imp.context(fastbn):
                    t = _run(imp.fn, n)
                samples[imp.name].append(t / n)
                if pause:
                    time.sleep(pause)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """Verification and timing of one implementation on one workload."""

    impl: str
    role: str
    status: str  # "ok", "FAILED: ..." or "skipped: ..."
    error: Optional[float] = None
    samples: List[float] = dataclasses.field(default_factory=list)
    threads: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    @property
    def best(self) -> Optional[float]:
        return min(self.samples) if self.samples else None


@dataclasses.dataclass
class WorkloadResult:
    """All results of one workload, with derived ratios."""

    workload: Workload
    results: List[Result]
    note: str = ""

    def get(self, name: str) -> Optional[Result]:
        for r in self.results:
            if r.impl == name:
                return r
        return None

    def _median_of(self, role: str) -> Optional[float]:
        for r in self.results:
            if r.role == role and r.median is not None:
                return r.median
        return None

    @property
    def floor(self) -> Optional[float]:
        return self._median_of("floor")

    @property
    def numpy(self) -> Optional[float]:
        return self._median_of("numpy")

    def ratio(self, r: Result) -> Optional[float]:
        """time / floor."""
        f = self.floor
        return r.median / f if (f and r.median is not None) else None

    def ratio_min(self, r: Result) -> Optional[float]:
        """min time / the floor's min time (less sensitive to a busy
        machine than the medians)."""
        fl = [x.best for x in self.results if x.role == "floor" and x.best]
        return r.best / fl[0] if (fl and r.best is not None) else None

    def speedup(self, r: Result) -> Optional[float]:
        """numpy time / this time."""
        n = self.numpy
        return n / r.median if (n and r.median) else None

    def gbps(self, r: Result) -> Optional[float]:
        """Achieved GB/s, counting the bytes the operation must move (the
        floor's bytes for the floor itself)."""
        if not r.median:
            return None
        b = (self.workload.floor_bytes if r.role == "floor"
             else self.workload.min_bytes)
        return b / r.median / 1e9

    def best_other(self) -> Optional[Result]:
        """The fastest verified implementation that is neither fastbn nor
        the floor."""
        others = [r for r in self.results if r.role not in ("fastbn", "floor")
                  and r.ok and r.median is not None]
        return min(others, key=lambda r: r.median) if others else None


def run_workload(w: Workload, fastbn, threads: int, rounds: int, *,
                 torch=None, compile_torch: bool = False, pause: float = 0.01,
                 progress: Callable[[str], None] = lambda s: None
                 ) -> WorkloadResult:
    """Build inputs, verify every implementation, time the ones that ran."""
    progress("preparing inputs and the float64 reference")
    inp = make_inputs(w)
    ref = reference(w, inp)
    impls = build_impls(w, inp, fastbn, threads, torch, compile_torch)
    results, timed = [], []
    for i, imp in enumerate(impls):
        progress("verifying %s (%d/%d)" % (imp.name, i + 1, len(impls)))
        t0 = time.perf_counter()
        ok, err, msg = verify(imp, w, ref, fastbn)
        if imp.optional and not ok and err == math.inf and \
                not msg.startswith("output"):
            results.append(Result(imp.name, imp.role, "skipped: " + msg))
            continue
        if imp.name == "torch.compile":
            progress("torch.compile: first call %.1f s" %
                     (time.perf_counter() - t0))
        res = Result(imp.name, imp.role, "ok" if ok else "FAILED: " + msg,
                     None if err == math.inf else err, threads=imp.threads)
        results.append(res)
        if ok or err != math.inf:  # wrong numbers are still timed
            timed.append(imp)
    samples = measure(timed, rounds, fastbn=fastbn, pause=pause,
                      min_sample=0.002, progress=progress)
    for res in results:
        res.samples = samples.get(res.impl, [])
    return WorkloadResult(w, results)


# --------------------------------------------------------------------------
# Machine information
# --------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.3g %s") % (n, unit)
        n /= 1024
    return str(n)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    fields: Dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
    if "model name" in fields:
        extra = ""
        if "cpu family" in fields and "model" in fields:
            extra = " (family %s, model %s)" % (fields["cpu family"],
                                                fields["model"])
        return fields["model name"] + extra
    return platform.processor() or platform.machine()


def cache_info() -> str:
    """Cache sizes of cpu0 from sysfs, e.g. 'L1d 32K, L2 1024K, L3 32768K
    (shared by 0-1)'."""
    parts = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        level, kind = _read(d + "/level"), _read(d + "/type")
        size, shared = _read(d + "/size"), _read(d + "/shared_cpu_list")
        if not level or kind == "Instruction":
            continue
        name = "L%s%s" % (level, "d" if kind == "Data" else "")
        parts.append("%s %s (cpus %s)" % (name, size, shared))
    return ", ".join(parts) or "unknown"


def fastbn_config(fastbn) -> str:
    """What fastbn.show_config() prints (or returns), as text."""
    if not hasattr(fastbn, "show_config"):
        return "show_config() not available"
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            ret = fastbn.show_config()
    except Exception as exc:
        return "show_config() failed: %r" % (exc,)
    if isinstance(ret, dict):  # prefer the structured answer
        return "\n".join("%s: %s" % kv for kv in ret.items())
    if isinstance(ret, str):
        return ret.strip()
    return buf.getvalue().strip()


def machine_info(fastbn, torch, threads: int) -> List[Tuple[str, str]]:
    """(label, value) pairs for the report header."""
    ncpu = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = ncpu
    mem = ""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = ", %s RAM" % _fmt_bytes(int(line.split()[1]) * 1024)
    try:
        loads = os.getloadavg()
        load = "%.2f %.2f %.2f" % loads
        if loads[0] > 0.5:
            load += " -- the machine is busy: expect noisy numbers"
    except OSError:
        load = "n/a"
    info = [
        ("CPU", "%s, %d logical CPUs (%d usable)%s" % (cpu_model(), ncpu,
                                                        usable, mem)),
        ("caches", cache_info()),
        ("load average", load),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("NumPy", np.__version__),
        ("fastbn", getattr(fastbn, "__version__", "?")),
        ("PyTorch", torch.__version__ if torch is not None else "not used"),
        ("threads", "fastbn %d, torch %s" % (
            threads, torch.get_num_threads() if torch is not None else "-")),
    ]
    config = fastbn_config(fastbn)
    info.append(("fastbn.show_config()", "; ".join(
        line.strip() for line in config.splitlines() if line.strip())))
    return info


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def _f(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else fmt % v


def _time_unit(w: Workload) -> Tuple[str, float]:
    return ("us", 1e6) if w.tiny else ("ms", 1e3)


def workload_rows(wr: WorkloadResult) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of one workload's table."""
    unit, scale = _time_unit(wr.workload)
    head = ["implementation", "median " + unit, "min " + unit, "time/floor",
            "min/floor", "vs numpy", "GB/s", "check"]
    rows = []
    for r in wr.results:
        med = r.median * scale if r.median is not None else None
        best = r.best * scale if r.best is not None else None
        check = r.status
        if r.ok and r.error is not None and r.role != "floor":
            check = "ok (%.0e)" % r.error
        rows.append([r.impl, _f(med, "%.3f" if wr.workload.tiny or
                                (med or 0) < 10 else "%.2f"),
                     _f(best, "%.3f" if wr.workload.tiny or
                        (best or 0) < 10 else "%.2f"),
                     _f(wr.ratio(r), "%.2fx"), _f(wr.ratio_min(r), "%.2fx"),
                     _f(wr.speedup(r), "%.1fx"),
                     _f(wr.gbps(r), "%.1f"), check])
    return head, rows


def summary_rows(wrs: Sequence[WorkloadResult]) -> Tuple[List[str],
                                                         List[List[str]]]:
    """One line per workload: fastbn against the floor, target, NumPy and
    the best other implementation."""
    head = ["workload", "fastbn time/floor", "target", "met", "numpy/floor",
            "best other", "fastbn vs best other"]
    rows = []
    for wr in wrs:
        w = wr.workload
        if wr.note:
            rows.append([w.key, "-", w.target_text, "-", "-", "-", wr.note])
            continue
        fb = wr.get("fastbn (out=)")
        user = wr.get("fastbn") if w.tiny else fb
        met = "-"
        if user is not None and user.median is not None:
            if w.target_ratio is not None and wr.ratio(user) is not None:
                met = "yes" if wr.ratio(user) <= w.target_ratio else "NO"
            elif w.target_us is not None:
                met = "yes" if user.median * 1e6 <= w.target_us else "NO"
            if user.failed:
                met = "FAILED"
        ratio = wr.ratio(fb) if fb is not None else None
        if w.tiny and user is not None and user.median is not None:
            ratio_text = "%.2fx (%.1f us/call)" % (wr.ratio(user) or 0,
                                                   user.median * 1e6)
        else:
            ratio_text = _f(ratio, "%.2fx")
        np_res = wr.get("numpy")
        other = wr.best_other()
        vs = "-"
        if other is not None and user is not None and user.median:
            if other.median >= user.median:
                vs = "%.2fx faster" % (other.median / user.median)
            else:
                vs = "%.2fx SLOWER" % (user.median / other.median)
        rows.append([w.key, ratio_text, w.target_text, met,
                     _f(wr.ratio(np_res) if np_res else None, "%.1fx"),
                     "%s %.2fx" % (other.impl, wr.ratio(other) or 0)
                     if other else "-", vs])
    return head, rows


def thread_rows(wrs: Sequence[WorkloadResult], threads: int
                ) -> Tuple[List[str], List[List[str]]]:
    """fastbn at 1 thread against `threads` threads (same run)."""
    head = ["workload", "1 thread", "%d threads" % threads, "speed-up",
            "speed-up of min times"]
    rows = []
    for wr in wrs:
        one, many = wr.get("fastbn (out=, 1 thread)"), wr.get("fastbn (out=)")
        if one is None or many is None or not one.median or not many.median:
            continue
        unit, scale = _time_unit(wr.workload)
        rows.append([wr.workload.key, "%.3f %s" % (one.median * scale, unit),
                     "%.3f %s" % (many.median * scale, unit),
                     "%.2fx" % (one.median / many.median),
                     "%.2fx" % (one.best / many.best)])
    return head, rows


def text_table(head: List[str], rows: List[List[str]]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]

    def line(cells):
        out = []
        for i, (c, wd) in enumerate(zip(cells, widths)):
            out.append(str(c).ljust(wd) if i == 0 or i == len(cells) - 1
                       else str(c).rjust(wd))
        return "  ".join(out).rstrip()
    return "\n".join([line(head), line(["-" * wd for wd in widths])] +
                     [line(r) for r in rows])


def md_table(head: List[str], rows: List[List[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def esc(c):
        return str(c).replace("|", "\\|")
    align = ["---"] + ["---:"] * (len(head) - 2) + ["---"]
    return "\n".join(["| " + " | ".join(map(esc, head)) + " |",
                      "|" + "|".join(align) + "|"] +
                     ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


NOTES = (
    "time/floor: median time divided by the median time of np.copyto of the "
    "same array (1 read + 1 write of x's bytes), measured in the same run; "
    "min/floor: the same with the minimum times (steadier on a busy "
    "machine).",
    "GB/s counts the bytes the operation must move: 1 read + 1 write of x "
    "for the forward modes; 3 reads (dy, x, y) + 1 write (dx) for the "
    "backward, whose floor is still the same copy, so it cannot reach 1.0x "
    "(about 2x is its true floor).",
    "numpy: as users write it (x.mean, x.var, (x-mean)/np.sqrt(var+eps)*"
    "gamma+beta, np.maximum(0, .)); numpy tuned: preallocated buffers, "
    "in-place ufuncs, per-channel constants, einsum.",
    "Implementations of a workload are timed interleaved, round by round; "
    "each result was first checked against a float64 NumPy reference "
    "(check column: largest error relative to the largest value).",
    "fastbn without out= allocates its output on every call (fresh pages "
    "fault on first touch); peers that allocate (numpy, torch) pay it too.",
)


def render(wrs: Sequence[WorkloadResult], info, threads: int, settings: str,
           markdown: bool = False) -> str:
    """The whole report, as plain text or Markdown."""
    table = md_table if markdown else text_table
    out = []
    if markdown:
        out.append("# fastbn benchmark\n")
        out += ["- **%s**: %s" % (k, v) for k, v in info]
        out.append("- **settings**: %s\n" % settings)
    else:
        out.append("fastbn benchmark")
        width = max(len(k) for k, _ in info)
        out += ["  %s  %s" % (k.ljust(width), v) for k, v in info]
        out.append("  %s  %s\n" % ("settings".ljust(width), settings))
    for wr in wrs:
        w = wr.workload
        title = w.title + (" -- target %s" % w.target_text
                           if w.target_text else "")
        out.append(("## " if markdown else "== ") + title)
        if wr.note:
            out.append("\n" + wr.note + "\n" if markdown else wr.note + "\n")
            continue
        out.append(("\n" if markdown else "") + table(*workload_rows(wr)) +
                   "\n")
    out.append(("## " if markdown else "== ") + "Summary")
    out.append(("\n" if markdown else "") + table(*summary_rows(wrs)) + "\n")
    head, rows = thread_rows(wrs, threads)
    if rows:
        out.append(("## " if markdown else "== ") +
                   "fastbn: 1 thread vs %d threads" % threads)
        out.append(("\n" if markdown else "") + table(head, rows) + "\n")
    elif threads == 1:
        out.append("(no 1-thread vs N-thread comparison: run with "
                   "--threads N, N > 1)\n")
    out.append(("## " if markdown else "== ") + "Notes")
    out.append(("\n" if markdown else "") +
               "\n".join(("- " if markdown else "  * ") + n for n in NOTES))
    return "\n".join(out) + "\n"


def to_json(wrs: Sequence[WorkloadResult], info, threads: int,
            settings: str) -> dict:
    """All results as a JSON-serialisable dict (times in seconds)."""
    data = {"machine": dict(info), "threads": threads, "settings": settings,
            "workloads": []}
    for wr in wrs:
        w = wr.workload
        entry = {"key": w.key, "mode": w.mode, "layout": w.layout,
                 "shape": list(w.shape), "axis": w.axis, "dtype": w.dtype,
                 "bytes": w.nbytes, "min_bytes_moved": w.min_bytes,
                 "target_ratio": w.target_ratio, "target_us": w.target_us,
                 "note": wr.note, "results": []}
        for r in wr.results:
            entry["results"].append({
                "impl": r.impl, "role": r.role, "status": r.status,
                "threads": r.threads, "max_rel_error": r.error,
                "median_s": r.median, "min_s": r.best,
                "time_over_floor": wr.ratio(r),
                "min_over_floor_min": wr.ratio_min(r),
                "speedup_vs_numpy": wr.speedup(r), "gbps": wr.gbps(r),
                "samples_s": r.samples})
        data["workloads"].append(entry)
    return data


def plot(wrs: Sequence[WorkloadResult], path: str, title: str) -> None:
    """PNG bar chart: time / floor per workload and implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrs = [wr for wr in wrs if not wr.note and wr.floor]
    names: List[str] = []
    for wr in wrs:
        for r in wr.results:
            if r.median is not None and r.impl not in names:
                names.append(r.impl)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.45 * len(wrs) * len(names)
                                    / 2.5))
    height = 0.8 / max(1, len(names))
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        ys, vals = [], []
        for i, wr in enumerate(wrs):
            r = wr.get(name)
            if r is not None and r.median is not None:
                ys.append(i + (j - (len(names) - 1) / 2) * height)
                vals.append(wr.ratio(r))
        bars = ax.barh(ys, vals, height=height, color=cmap(j % 10),
                       label=name)
        for b, v in zip(bars, vals):
            ax.text(b.get_width() * 1.03, b.get_y() + b.get_height() / 2,
                    "%.2g" % v, va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(wrs)))
    ax.set_yticklabels([wr.workload.key for wr in wrs])
    ax.invert_yaxis()
    ax.set_xlabel("time / np.copyto of the same bytes (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlim(right=ax.get_xlim()[1] * 2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastbn.bench",
        description="Time fastbn against NumPy, PyTorch and np.copyto (the "
                    "memory floor) on standard batch-norm workloads.")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, float32 only, no torch.compile "
                        "(under a minute)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for fastbn and torch (default: "
                        "fastbn.get_num_threads()); fastbn is also timed at "
                        "1 thread")
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown report")
    p.add_argument("--plot", metavar="FILE",
                   help="write a PNG chart of time / floor (needs matplotlib)")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--no-torch", action="store_true",
                   help="do not time PyTorch even if it is installed")
    p.add_argument("--no-compile", action="store_true",
                   help="skip torch.compile (always skipped with --quick)")
    p.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="timing rounds per workload (default 7 with --quick, "
                        "25 otherwise; tiny workloads 4x as many)")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated workload keys: " +
                        ", ".join(w.key for w in WORKLOADS))
    p.add_argument("--pause", type=float, default=0.01, metavar="S",
                   help="seconds of sleep between samples (default 0.01; "
                        "libgomp's idle threads spin ~7 ms after a parallel "
                        "region and would steal a core from the next one)")
    args = p.parse_args(argv)
    if args.only:
        args.only = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = set(args.only) - {w.key for w in WORKLOADS}
        if unknown:
            p.error("unknown workload(s): %s" % ", ".join(sorted(unknown)))
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install matplotlib "
                    "(or fastbn[plot])")
    return args


def import_torch(threads: int):
    """torch with `threads` intra-op threads, or None if not importable."""
    try:
        import torch
    except Exception:
        return None
    torch.set_num_threads(threads)
    return torch


class Progress:
    """Progress messages on stderr ("[k/n] workload: what"), rewritten in
    place on a terminal."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.k, self.key = total, stream, 0, ""
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.t0 = time.perf_counter()

    def start(self, key: str) -> None:
        self.k += 1
        self.key = key

    def __call__(self, msg: str) -> None:
        text = "[%d/%d %5.1fs] %s: %s" % (self.k, self.total,
                                           time.perf_counter() - self.t0,
                                           self.key, msg)
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write("done in %.1f s\n" % (time.perf_counter() - self.t0))
        self.stream.flush()


def _blas_limits(threads: int):
    """threadpoolctl limit for NumPy's BLAS, if threadpoolctl is there."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def main(argv=None) -> int:
    """Run the report; 0 if every verification passed, else 1."""
    args = parse_args(argv)
    import fastbn

    threads = args.threads or fastbn.get_num_threads()
    torch = None if args.no_torch else import_torch(threads)
    compile_torch = (torch is not None and not args.quick and
                     not args.no_compile)
    has_backward = hasattr(fastbn, "batch_norm_backward")
    workloads = select_workloads(args.quick, args.only)
    rounds = args.repeats or (7 if args.quick else 25)
    settings = "%s, %d rounds (tiny: %d), median of interleaved samples%s" % (
        "--quick" if args.quick else "full", rounds, 4 * rounds,
        ", torch.compile" if compile_torch else "")
    info = machine_info(fastbn, torch, threads)
    progress = Progress(len(workloads))
    results = []
    with _blas_limits(threads):
        for w in workloads:
            progress.start(w.key)
            if w.mode == "backward" and not has_backward:
                results.append(WorkloadResult(w, [], note=(
                    "skipped: fastbn.batch_norm_backward is not available "
                    "in this build")))
                continue
            results.append(run_workload(
                w, fastbn, threads, 4 * rounds if w.tiny else rounds,
                torch=torch, compile_torch=compile_torch, pause=args.pause,
                progress=progress))
    progress.done()
    sys.stdout.write(render(results, info, threads, settings))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render(results, info, threads, settings, markdown=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(results, info, threads, settings), f, indent=1)
    if args.plot:
        plot(results, args.plot, "fastbn, %d threads: %s" % (
            threads, info[0][1][:60]))
    failed = [(wr.workload.key, r.impl) for wr in results for r in wr.results
              if r.failed]
    if failed:
        sys.stdout.write("VERIFICATION FAILED: %s\n" % ", ".join(
            "%s/%s" % f for f in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
