"""Argument checking shared by the functions and the layer.

Every check names the argument and what was expected.  The common case (a
C-contiguous native float array and matching per-channel arrays) takes the
fast path: a few attribute reads, no copies.
"""
import math
import operator

import numpy as np

from . import _kernels

_plain = _kernels.plain

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)

is_bfloat16 = _kernels.is_bfloat16

#: what x and its companion arrays (dy, residual, y) may be, for the messages
_X_DTYPES = "float32, float64, float16 or bfloat16"


def stat_dtype(dt):
    """The dtype of per-channel arrays for data of dtype ``dt`` (a dtype the
    kernels take): ``dt`` itself, float32 for the half types."""
    return dt if dt.itemsize > 2 else _F32


def is_half(dt):
    """True for float16 (either byte order) and bfloat16."""
    return dt.itemsize == 2 and (dt.kind == "f" or is_bfloat16(dt))


class OutDtypeError(TypeError, ValueError):
    """``out`` has the wrong dtype (both a TypeError and a ValueError)."""


def _dtype_error(name, dt, dtype):
    """The TypeError of an array ``name`` whose dtype ``dt`` is not one of
    _X_DTYPES (``dtype``: what it would have been cast to)."""
    cast = "" if dtype is None else f" (it is cast to {np.dtype(dtype).name})"
    note = (" (float8 and other narrow types are not supported)"
            if dt.itemsize < 2 and dt.kind in "fV" else "")  # ml_dtypes' are "V"
    return TypeError(f"{name} must have dtype {_X_DTYPES}{cast}, got {dt}{note}")


def as_data(x, name="x", dtype=None):
    """``x`` as a C-contiguous, aligned, native float32/float64/float16/
    bfloat16 array (copied only when needed), cast to ``dtype`` when given.

    The one rule for x and its companion arrays (dy, residual, y; the
    layer's x): float16, float32, float64 (either byte order) and bfloat16
    are taken; any other dtype (integer, bool, complex, float8, object,
    strings, float128) raises TypeError naming ``name``."""
    if dtype is None and _plain(x):  # the common case, one C-level look
        return x
    if type(x) is not np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of {_X_DTYPES}, "
                            f"got {type(x).__name__}")
        x = np.asarray(x)
    dt = x.dtype
    if dt is not _F32 and dt is not _F64 and dt != _F32 and dt != _F64:
        if dt.kind == "f" and dt.itemsize in (2, 4, 8):  # float16, byte-swapped
            if not dt.isnative:
                x = x.astype(dt.newbyteorder("="))
        elif not is_bfloat16(dt):  # ml_dtypes' (JAX's, TensorFlow's) bfloat16
            raise _dtype_error(name, dt, dtype)
    if dtype is not None and x.dtype != dtype:
        return np.require(x, dtype, ["C", "A"])
    flags = x.flags
    if not (flags.c_contiguous and flags.aligned):
        # the C kernels read whole aligned elements
        x = np.require(x, None, ["C", "A"])
    return x


_VIEWS = {}


def view(shape, axis):
    """(outer, C, inner, normalised axis) of the channel view of ``shape``."""
    if type(axis) is not int:  # no cache: 1.0 == 1 must still be refused
        return _view(shape, axis)
    v = _VIEWS.get((shape, axis))
    if v is None:
        v = _view(shape, axis)
        if len(_VIEWS) > 512:  # bounded: a few shapes recur in a network
            _VIEWS.clear()
        _VIEWS[shape, axis] = v
    return v


def _view(shape, axis):
    nd = len(shape)
    if nd < 2:
        raise ValueError(f"x must have at least 2 dimensions (batch and channels), "
                         f"got shape {shape}")
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None
    if a < 0:
        a += nd
    if not 0 <= a < nd:
        raise ValueError(f"axis {axis} is out of bounds for x with {nd} dimensions")
    return math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:]), a


def per_channel(v, name, C, dtype, allow_none=True):
    """A per-channel array of shape (C,) and ``dtype`` (cast when needed)."""
    if v is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be an array of shape ({C},), got None")
    if (type(v) is np.ndarray and v.dtype == dtype and v.shape == (C,)
            and v.flags.c_contiguous and v.flags.aligned):
        return v
    a = np.asarray(v)
    if a.dtype.kind not in "fiu" and not is_bfloat16(a.dtype):
        raise TypeError(f"{name} must be a real array of shape ({C},), "
                        f"got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) to match the {C} channels "
                         f"of x, got shape {a.shape}")
    return np.require(a, dtype, ["C", "A"])


def like_x(v, name, x):
    """An array of x's shape, cast to x's dtype (residual, dy, y): any
    dtype that as_data takes, else TypeError naming ``name``."""
    if _plain(v) and v.shape == x.shape and v.dtype == x.dtype:
        return v
    if type(v) is not np.ndarray and not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of x's shape {x.shape}, "
                        f"got {type(v).__name__}")
    if v.shape != x.shape:
        raise ValueError(f"{name} must have x's shape {x.shape}, got {v.shape}")
    return as_data(v, name, x.dtype)


def eps_value(eps):
    if type(eps) is float and eps > 0:
        return eps
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a positive number, got {type(eps).__name__}") \
            from None
    if not e > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return e


def output(out, x, name="out"):
    """The output array: a new one, or ``out`` after checking it."""
    if out is None:
        return np.empty(x.shape, x.dtype)
    if _plain(out, True) and out.shape == x.shape and out.dtype == x.dtype:
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape}, got {out.shape}")
    if out.dtype != x.dtype or not out.dtype.isnative:
        raise OutDtypeError(f"{name} must have dtype {x.dtype} (native byte order), "
                            f"got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype ({out.dtype.itemsize} "
                         f"bytes), as NumPy allocates arrays")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def no_partial_overlap(out, name, *arrays):
    """``out`` may be one of ``arrays`` exactly (in place) but must not
    overlap any of them partially (all C-contiguous)."""
    for a in arrays:
        if a is not None and a is not out and _kernels.partial_overlap(out, a):
            raise ValueError(f"{name} overlaps an input without being the same array")


def count(v, name, or_none=False, unit=""):
    """``v`` as an int >= 1 (a count: num_features, virtual_batch_size,
    threads), None kept when ``or_none``: TypeError naming ``name`` for
    anything that is not an integer (a bool included), ValueError below 1
    (``unit`` says what is counted)."""
    if v is None and or_none:
        return None
    what = "a positive integer" + (" or None" if or_none else "")
    if isinstance(v, bool):
        raise TypeError(f"{name} must be {what}, got bool")
    try:
        n = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type(v).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1{unit}, got {n}")
    return n
