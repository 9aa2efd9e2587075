"""Ghost (virtual) batches and batch renormalization: argument checks and
the calls of their kernels (csrc/ghost_impl.h).

Ghost batch normalization (Hoffer et al. 2017, TabNet): with
``virtual_batch_size=k`` the batch axis (axis 0) is split into ``G = N // k``
groups of ``k`` consecutive samples, each normalised with its own
statistics; ``mean`` and ``invstd`` have shape ``(G, C)``.  The groups are
contiguous blocks of the ``(outer, C, inner)`` view, and the kernels run
them as ``G`` independent batch norms in one parallel job (no copies, no
Python loop); ``k = N`` is the ordinary kernel itself.  float16 and bfloat16 data run
in their own instantiation of the same kernels (float32 per-channel arrays
and statistics, as the ordinary half calls).

Batch renormalization (Ioffe 2017) is the layer's ``renorm=True``: the
kernels fold ``r`` and ``d`` into each channel's scale and shift.
"""
import math
import numbers
import operator

import numpy as np

from . import _kernels
from ._checks import (as_data, like_x, no_partial_overlap, output, per_channel,
                      stat_dtype, view)
from ._threads import _nthreads

_RENORM_KEYS = ("rmax", "dmax")


def check_virtual_batch_size(k):
    """``virtual_batch_size`` as an int >= 1, or None."""
    if k is None:
        return None
    if isinstance(k, bool):
        raise TypeError("virtual_batch_size must be a positive integer or None, "
                        "got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"virtual_batch_size must be a positive integer or None, "
                        f"got {type(k).__name__}") from None
    if k < 1:
        raise ValueError(f"virtual_batch_size must be >= 1 (samples per ghost "
                         f"batch), got {k}")
    return k


def groups(shape, axis, k):
    """The number of ghost batches ``G`` of ``k`` samples in an array of
    ``shape`` whose channel axis is ``axis`` (normalised)."""
    if axis == 0:
        raise ValueError("virtual_batch_size splits the batch axis (axis 0) into "
                         "ghost batches, so the channel axis must not be 0; got "
                         "axis=0")
    n = shape[0]
    if n % k:
        raise ValueError(f"virtual_batch_size={k} must divide the batch size: axis "
                         f"0 of x (shape {shape}) has {n} samples, {n % k} left "
                         f"over")
    return n // k


def check_renorm_clipping(clipping):
    """``renorm_clipping`` as ``(rmax, dmax)`` floats (inf: no clipping)."""
    if clipping is None:
        return math.inf, math.inf
    if not hasattr(clipping, "keys") or not hasattr(clipping, "__getitem__"):
        raise TypeError(f"renorm_clipping must be a dict with keys 'rmax' and "
                        f"'dmax' or None, got {type(clipping).__name__}")
    unknown = [k for k in clipping.keys() if k not in _RENORM_KEYS]
    if unknown:
        hint = (" (rmin is 1/rmax here)" if "rmin" in unknown else "")
        raise ValueError(f"renorm_clipping has unknown key(s) {unknown}{hint}; "
                         f"allowed keys are 'rmax' (>= 1) and 'dmax' (>= 0)")
    vals = []
    for key, low in (("rmax", 1.0), ("dmax", 0.0)):
        v = clipping.get(key, None) if hasattr(clipping, "get") else (
            clipping[key] if key in clipping.keys() else None)
        if v is None:
            vals.append(math.inf)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            try:
                v = float(np.asarray(v).item())
            except Exception:
                raise TypeError(f"renorm_clipping['{key}'] must be a number, got "
                                f"{type(v).__name__}") from None
        v = float(v)
        if not v >= low:
            raise ValueError(f"renorm_clipping['{key}'] must be >= {low:g}, got {v}")
        vals.append(v)
    return vals[0], vals[1]


def train(x, gamma, beta, axis, eps, relu, residual, out, k, rn=None,
          want_var=False):
    """Training forward over ghost batches of ``k`` samples (``k`` None: one
    group), renormalised with ``rn = (running_mean64, sigma64, rmax, dmax)``
    when given.  Returns ``(y, mean, invstd, var64, r, d, n)``: statistics of
    shape ``(G, C)`` (var64 None unless ``want_var``; r, d None without
    ``rn``), ``n`` the values per channel of a group."""
    from ._api import _forward_args
    x, outer, C, inner, gamma, beta, eps, z, y = _forward_args(
        x, gamma, beta, axis, eps, residual, out)
    a = view(x.shape, axis)[3]
    G = 1 if k is None else groups(x.shape, a, k)
    n = (outer // G) * inner if G else 0
    if n < 2:
        what = f"each ghost batch of {k} samples" if k is not None else "x"
        raise ValueError(f"training needs at least 2 values per channel; {what} "
                         f"(x of shape {x.shape}, axis={axis}) has {n}")
    if rn is None:
        mean, invstd, var, r, d = _kernels.train_forward_ghost(
            x, G, outer, C, inner, gamma, beta, z, eps, bool(relu), y, _nthreads(),
            want_var)
    else:
        rm, sigma, rmax, dmax = rn
        mean, invstd, var, r, d = _kernels.train_forward_ghost(
            x, G, outer, C, inner, gamma, beta, z, eps, bool(relu), y, _nthreads(),
            want_var, rm, sigma, rmax, dmax)
    return y, mean, invstd, var, r, d, n


def per_group(v, name, G, C, dtype):
    """A ``(G, C)`` statistic (``(C,)`` also accepted when ``G == 1``) as a
    C-contiguous array of ``dtype``."""
    if v is None:
        raise TypeError(f"{name} must be an array of shape ({G}, {C}), got None")
    a = np.asarray(v)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array of shape ({G}, {C}), got dtype "
                        f"{a.dtype}")
    if a.shape != (G, C) and not (G == 1 and a.shape == (C,)):
        raise ValueError(f"{name} must have shape ({G}, {C}): one row per ghost batch "
                         f"(G = {G}) and one column per channel, got shape {a.shape}")
    return np.require(a, dtype, ["C", "A"])


def backward(dy, x, mean, invstd, gamma, axis, y, training, residual, out, k,
             r=None, d=None):
    """Gradients over ghost batches of ``k`` samples (``k`` None: one group),
    with a renormalised forward's ``r`` and ``d`` (float64, ``(G, C)``) held
    constant when given.  Returns what batch_norm_backward returns."""
    x = as_data(x)
    outer, C, inner, a = view(x.shape, axis)
    dt = x.dtype
    sdt = stat_dtype(dt)  # per-channel arrays: float32 for half x
    G = 1 if k is None else groups(x.shape, a, k)
    dy = like_x(dy, "dy", x)
    yv = None if y is None else like_x(y, "y", x)
    gamma = per_channel(gamma, "gamma", C, sdt)
    dx = output(out, x)
    if out is not None:
        no_partial_overlap(dx, "out", x, dy, yv)
    dz = np.empty(x.shape, dt) if residual else None
    training = bool(training)
    n = (outer // G) * inner if G else 0
    if G == 0:  # an empty batch
        if training:
            raise ValueError(f"training needs at least 2 values per channel; x of "
                             f"shape {x.shape} has none (axis={axis})")
        dgamma, dbeta = np.zeros(C, sdt), np.zeros(C, sdt)
    else:
        mean = per_group(mean, "mean", G, C, sdt)
        invstd = per_group(invstd, "invstd", G, C, sdt)
        if training and n < 2:
            raise ValueError(f"training needs at least 2 values per channel; each "
                             f"ghost batch of {k} samples (x of shape {x.shape}, "
                             f"axis={axis}) has {n}")
        if r is not None:
            r = np.require(r, np.float64, ["C", "A"])
            d = np.require(d, np.float64, ["C", "A"])
        dgamma, dbeta = _kernels.backward_ghost(dy, x, yv, G, outer, C, inner, mean,
                                                invstd, gamma, r, d, training, dx, dz,
                                                _nthreads())
    if residual:
        return dx, dgamma, dbeta, dz
    return dx, dgamma, dbeta


def comm_error(backward, comm):
    """Raise the ValueError of ``comm=`` with ``virtual_batch_size`` (in the
    forward, or the backward when ``backward``); with a usable communicator
    the other ranks are told first (they raise too, none waits in a
    collective)."""
    err = ValueError("virtual_batch_size cannot be combined with comm= (ghost "
                     "batches are local by definition); pass one or the other")
    try:
        from . import _mpi
        _mpi.report_failure(_mpi.BACKWARD if backward else _mpi.FORWARD, comm, err)
    except Exception:  # no mpi4py or not a communicator: nobody to tell
        pass
    raise err
