"""Pure-NumPy float64 reference implementation of fastbn's forward API.

This module is the oracle of the test suite.  Every function is written
naively and in float64 so that it is obviously correct; speed does not
matter.  The channel axis is moved to the end and the data reshaped to
``(n, C)`` (``n`` values per channel), then the textbook formulas are applied
column by column:

    mean = sum(x) / n
    var  = sum((x - mean)**2) / n            (biased, two passes in float64)
    y    = (x - mean) / sqrt(var + eps) * gamma + beta (+ residual), then ReLU

All functions accept any float input (it is converted to float64 first) and
return float64 results; callers compare them with fastbn's output in the
tolerance of fastbn's dtype.  ``relu`` uses ``np.maximum(y, 0)``, which
propagates NaN, as fastbn does.

Other test files may import these functions (``from reference import ...``)
and add their own reference functions in their own modules.
"""

import numpy as np

__all__ = [
    "normalize_axis",
    "to_columns",
    "from_columns",
    "batch_stats",
    "moments",
    "merge_moments",
    "batch_norm_train",
    "batch_norm_infer",
]


def normalize_axis(axis, ndim):
    """Return ``axis`` as a non-negative index for an array of ``ndim`` dims."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for ndim {ndim}")
    return axis % ndim


def to_columns(x, axis=1):
    """View ``x`` as a float64 ``(n, C)`` array: one column per channel.

    Returns the 2-D array and the shape of ``x`` with the channel axis moved
    to the end (needed by :func:`from_columns`).
    """
    x = np.asarray(x, dtype=np.float64)
    axis = normalize_axis(axis, x.ndim)
    moved = np.moveaxis(x, axis, -1)
    n = int(np.prod(moved.shape[:-1]))
    return moved.reshape(n, x.shape[axis]), moved.shape


def from_columns(cols, moved_shape, axis):
    """Inverse of :func:`to_columns`: back to the original axis order."""
    return np.moveaxis(cols.reshape(moved_shape), -1, axis)


def _per_channel(a, name, channels):
    """A per-channel argument as float64 of shape (C,), or None."""
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {a.shape}")
    return a


def batch_stats(x, axis=1):
    """Per-channel mean and biased (population) variance, float64 ``(C,)``."""
    cols, _ = to_columns(x, axis)
    n = cols.shape[0]
    mean = cols.sum(axis=0) / n
    var = ((cols - mean) ** 2).sum(axis=0) / n
    return mean, var


def moments(x, axis=1):
    """Mergeable moments ``(count, mean, m2)``.

    ``count`` is the number of values per channel (an int), ``mean`` the
    per-channel mean and ``m2`` the per-channel sum of squared deviations
    from the mean (both float64 of shape ``(C,)``).  For ``count == 0`` mean
    and m2 are zero.
    """
    cols, _ = to_columns(x, axis)
    n = cols.shape[0]
    if n == 0:
        zeros = np.zeros(cols.shape[1])
        return 0, zeros, zeros.copy()
    mean = cols.sum(axis=0) / n
    m2 = ((cols - mean) ** 2).sum(axis=0)
    return n, mean, m2


def merge_moments(parts):
    """Combine ``[(count, mean, m2), ...]`` into the overall ``(mean, var)``.

    Uses the exact decomposition of the total sum of squares:
    ``M2 = sum(m2_i) + sum(n_i * (mean_i - mean)**2)``; ``var = M2 / N``.
    Counts may be ints or per-channel arrays.
    """
    counts = [np.asarray(c, dtype=np.float64) for c, _, _ in parts]
    means = [np.asarray(m, dtype=np.float64) for _, m, _ in parts]
    m2s = [np.asarray(s, dtype=np.float64) for _, _, s in parts]
    total = sum(counts)
    mean = sum(c * m for c, m in zip(counts, means)) / total
    m2 = sum(m2s) + sum(c * (m - mean) ** 2 for c, m in zip(counts, means))
    return mean, m2 / total


def _apply(x, mean, var, gamma, beta, axis, eps, relu, residual):
    cols, moved_shape = to_columns(x, axis)
    channels = cols.shape[1]
    gamma = _per_channel(gamma, "gamma", channels)
    beta = _per_channel(beta, "beta", channels)
    y = (cols - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    if residual is not None:
        zcols, _ = to_columns(residual, axis)
        y = y + zcols
    if relu:
        y = np.maximum(y, 0.0)  # NaN-propagating
    return from_columns(y, moved_shape, normalize_axis(axis, np.ndim(x)))


def batch_norm_train(x, gamma=None, beta=None, *, axis=1, eps=1e-5,
                     relu=False, residual=None):
    """Training-mode forward in float64.

    Returns ``(y, mean, invstd)`` with ``invstd = 1 / sqrt(var + eps)`` and
    ``var`` the biased batch variance.
    """
    mean, var = batch_stats(x, axis)
    y = _apply(x, mean, var, gamma, beta, axis, eps, relu, residual)
    return y, mean, 1.0 / np.sqrt(var + eps)


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis=1,
                     eps=1e-5, relu=False, residual=None):
    """Inference-mode forward in float64 with given (running) statistics."""
    cols, _ = to_columns(x, axis)
    channels = cols.shape[1]
    mean = _per_channel(mean, "mean", channels)
    var = _per_channel(var, "var", channels)
    return _apply(x, mean, var, gamma, beta, axis, eps, relu, residual)
