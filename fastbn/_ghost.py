"""Ghost (virtual) batches and batch renormalization: their argument checks
(the calls are fastbn._api's, where a ghost batch is a group count).

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

import numpy as np

from ._checks import count


_RENORM_KEYS = ("rmax", "dmax")


def check_virtual_batch_size(k):
    """``virtual_batch_size`` as an int >= 1, or None."""
    return count(k, "virtual_batch_size", or_none=True,
                 unit=" (samples per ghost batch)")


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
