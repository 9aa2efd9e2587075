"""The implementations that are timed: fastbn, NumPy (as users write it, and
tuned), PyTorch eager and torch.compile.  The floor (the copies) is in
``floor.py``.

Each builder returns an :class:`~fastbn.bench.timing.Impl`: a closure over
the workload's inputs and a preallocated output where the implementation
takes one, with the thread count it runs at.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, List, Sequence, Tuple

import numpy as np

from .floor import copy_impls
from .inputs import EPS, Inputs, bshape, compare
from .timing import Impl
from .workloads import Workload


def threads_name(n: int) -> str:
    return "1 thread" if n == 1 else "%d threads" % n


def fastbn_threads(fastbn, n: int) -> Callable[[], ContextManager]:
    """setup() running fastbn at n threads."""
    return lambda: fastbn.num_threads(n)


def torch_threads(torch, n: int) -> Callable[[], ContextManager]:
    """setup() running torch at n intra-op threads (set, not restored:
    every torch implementation sets its own)."""
    def setup():
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return contextlib.nullcontext()
    return setup


# --------------------------------------------------------------------------
# fastbn
# --------------------------------------------------------------------------

def fastbn_impl(w: Workload, inp: Inputs, fastbn, threads: int, name: str,
                out: bool = True, mask: str = "lo") -> Impl:
    """fastbn at `threads` threads, into a preallocated output of its own
    (``out``), or allocating its output on every call.  The backward takes
    the ReLU's mask from x, beta and the forward's statistics: with ``mask``
    "lo" also the low part of its batch mean that the training forward hands
    out (what the layer and the torch bridge run: y need not be kept, and x
    is read once), with "x" the public ``batch_norm_backward(beta=)``, which
    takes the batch means of x again; with "y" from the forward's output y
    (as PyTorch's threshold_backward does)."""
    x, g, b, ax = inp.x, inp.gamma, inp.beta, w.axis
    o = np.empty_like(x) if out else None
    check = None
    if w.mode == "train":
        def fn():
            return fastbn.batch_norm_train(x, g, b, axis=ax, eps=EPS,
                                           relu=True, out=o)
    elif w.mode == "infer":
        m, v = inp.running_mean, inp.running_var

        def fn():
            return fastbn.batch_norm_infer(x, m, v, g, b, axis=ax, eps=EPS,
                                           relu=True, out=o)
    else:
        dy, y, m, s = inp.dy, inp.y, inp.mean, inp.invstd
        if mask == "y":
            def fn():
                return fastbn.batch_norm_backward(dy, x, m, s, g, axis=ax, y=y,
                                                  out=o)
        elif mask == "lo":
            # the statistics and mean_lo of fastbn's own forward (the layer's)
            _, m, s, _, _, lo = fastbn._api._train(x, g, b, ax, EPS, True, None, None,
                                                   None, False, want_lo=True)
            bwd = fastbn._api._backward

            def fn():
                return bwd(dy, x, m, s, g, ax, None, True, False, o, None, None, None,
                           None, "relu", b, lo)
            check = _mask_from_x_check(w, inp, fastbn, (m, s))
        else:
            def fn():
                return fastbn.batch_norm_backward(dy, x, m, s, g, axis=ax, beta=b,
                                                  activation="relu", out=o)
            check = _mask_from_x_check(w, inp, fastbn)
    return Impl(name, "fastbn", fn, threads=threads,
                setup=fastbn_threads(fastbn, threads), check=check)


def _mask_from_x_check(w: Workload, inp: Inputs, fastbn, stats=None):
    """The check of a backward whose mask comes from x: against the float64
    reference with the mask of the float32 (x.dtype) forward's output, the
    mask that backward reproduces (the float64 forward's mask may differ
    where a value rounds across 0: one such value is a large error in its
    dx), and the (mean, invstd) it was given (``stats``; None: the inputs');
    the reference is made on first use."""
    from .. import _reference as oracle
    ref = []
    m, s = (inp.mean, inp.invstd) if stats is None else stats

    def check(result):
        if not ref:
            yf = fastbn.batch_norm_train(inp.x, inp.gamma, inp.beta, axis=w.axis,
                                         eps=EPS, relu=True)[0]
            ref.append(oracle.batch_norm_backward(
                inp.dy, inp.x, m, s, inp.gamma,
                axis=w.channel_axis, y=yf)[:3])
        return compare(tuple(np.asarray(r) for r in result), ref[0], w.dtype)
    return check


# --------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------

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
        mean, var = inp.running_mean.reshape(b), inp.running_var.reshape(b)

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
    """The (outer, C, inner) view of a C-contiguous array ((outer, C) when
    inner == 1), the einsum subscripts reducing it to (C,), the broadcast
    shape of a per-channel vector and the reduction axes."""
    outer, c, inner = w.view
    if inner == 1:
        return a.reshape(outer, c), "oc,oc->c", (1, -1), (0,)
    return a.reshape(outer, c, inner), "oci,oci->c", (1, -1, 1), (0, 2)


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
        a = (gamma / np.sqrt(inp.running_var + EPS)).astype(dt)
        c = (beta - inp.running_mean * a).astype(dt)

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


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------

def _torch_nchw(torch, w: Workload, a: np.ndarray):
    """A torch tensor sharing a's memory, channels at dimension 1
    (channels-last memory for channels-last input)."""
    t = torch.from_numpy(a)
    if w.channel_axis != 1:
        perm = (0, w.ndim - 1) + tuple(range(1, w.ndim - 1))
        t = t.permute(*perm)
    return t


def _torch_to_numpy(torch, w: Workload):
    """Convert torch results (channels at dimension 1) back to NumPy in x's
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


def torch_eager_impl(w: Workload, inp: Inputs, torch, threads: int,
                     name: str = "torch eager") -> Impl:
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
        m = torch.from_numpy(inp.running_mean)
        v = torch.from_numpy(inp.running_var)

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
    return Impl(name, "eager", fn, to_numpy=_torch_to_numpy(torch, w),
                threads=threads, setup=torch_threads(torch, threads))


def torch_compile_impls(w: Workload, inp: Inputs, torch,
                        threads: Sequence[int], names: Sequence[str]
                        ) -> List[Impl]:
    """torch.compile (inductor, ``dynamic=False``) of the same computation,
    one compiled function for this shape, timed at each thread count (the
    compiled kernels follow torch's thread count at run time).  The first
    call, made during verification, compiles."""
    F = torch.nn.functional
    x = _torch_nchw(torch, w, inp.x)
    gamma, beta = torch.from_numpy(inp.gamma), torch.from_numpy(inp.beta)
    torch._dynamo.reset()  # a fresh cache: never the recompile limit
    if w.mode == "train":
        def f(x, gamma, beta):
            return torch.relu(F.batch_norm(x, None, None, gamma, beta,
                                           training=True, eps=EPS))
        cf = torch.compile(f, dynamic=False)

        def fn():
            return cf(x, gamma, beta)
    elif w.mode == "infer":
        m = torch.from_numpy(inp.running_mean)
        v = torch.from_numpy(inp.running_var)

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
    return [Impl(name, "compile", fn, to_numpy=_torch_to_numpy(torch, w),
                 threads=t, setup=torch_threads(torch, t), optional=True)
            for t, name in zip(threads, names)]


# --------------------------------------------------------------------------
# The sets of implementations
# --------------------------------------------------------------------------

def build_impls(w: Workload, inp: Inputs, fastbn, threads: int,
                torch=None, compile_torch: bool = False,
                compare_one_thread: bool = True) -> List[Impl]:
    """Every implementation of a kernel workload, in table order: fastbn
    (out=) at `threads` (and at 1 thread; backward workloads also with the
    mask from y), fastbn without out= (main workloads), NumPy naive and
    tuned, the copies, torch eager and torch.compile at `threads`."""
    impls = [fastbn_impl(w, inp, fastbn, threads, "fastbn (out=)")]
    if w.mode == "backward":  # the mask from y, for comparison
        impls.append(fastbn_impl(w, inp, fastbn, threads, "fastbn (out=, y=)",
                                 mask="y"))
    if w.mode == "backward" and compare_one_thread and threads != 1:
        impls.append(fastbn_impl(w, inp, fastbn, 1, "fastbn (out=, y=, 1 thread)",
                                 mask="y"))
    if w.main:
        impls.append(fastbn_impl(w, inp, fastbn, threads, "fastbn",
                                 out=False))
    if compare_one_thread and threads != 1:
        impls.append(fastbn_impl(w, inp, fastbn, 1,
                                 "fastbn (out=, 1 thread)"))
    impls += [numpy_naive_impl(w, inp), numpy_tuned_impl(w, inp)]
    impls += copy_impls(inp.x, threads)
    if torch is not None:
        impls.append(torch_eager_impl(w, inp, torch, threads))
        if compile_torch:
            impls += torch_compile_impls(w, inp, torch, [threads],
                                         ["torch.compile"])
    return impls


def build_sweep_impls(w: Workload, inp: Inputs, fastbn,
                      thread_counts: Sequence[int], torch=None,
                      compile_torch: bool = False) -> List[Impl]:
    """The sweep's implementations of one workload: fastbn (out=), torch
    eager (and torch.compile) at every thread count, and the copies (1
    thread and the largest count)."""
    impls = [fastbn_impl(w, inp, fastbn, t, "fastbn (%s)" % threads_name(t))
             for t in thread_counts]
    impls += copy_impls(inp.x, max(thread_counts))
    if torch is not None:
        impls += [torch_eager_impl(w, inp, torch, t, "torch eager (%s)" %
                                   threads_name(t)) for t in thread_counts]
        if compile_torch:
            impls += torch_compile_impls(
                w, inp, torch, thread_counts,
                ["torch.compile (%s)" % threads_name(t)
                 for t in thread_counts])
    return impls


def check_result(impl: Impl, w: Workload, ref, result
                 ) -> Tuple[bool, float, str]:
    """Compare what ``impl.fn()`` returned with the reference."""
    if impl.check is not None:
        return impl.check(result)
    return compare(impl.outputs(result), ref, w.dtype)


def call_once(impl: Impl):
    """Call an implementation once (with its thread setting); returns
    (result, None) or (None, error message)."""
    try:
        with impl.setup():
            return impl.fn(), None
    except Exception as exc:  # shown in the table, never hidden
        text = str(exc).splitlines()[0] if str(exc) else ""
        return None, "%s: %s" % (type(exc).__name__, text)


def verify(impl: Impl, w: Workload, ref) -> Tuple[bool, float, str]:
    """Call an implementation once and compare its result with `ref`.

    Exceptions become a failed check whose message names the exception.
    """
    result, err = call_once(impl)
    if err is not None:
        return False, math.inf, err
    return check_result(impl, w, ref, result)
