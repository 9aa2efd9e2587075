"""The float64 oracle: batch normalization written plainly in NumPy.

This module is what the test suite and the benchmark's checks compare
fastbn with.  Every function is the textbook formula in float64 (inputs of
any float dtype, bfloat16 too, are widened first), written for clarity,
not speed, and returns float64 results; callers compare them with
fastbn's output within the tolerance of fastbn's dtype.  It never calls
fastbn's kernels.

Per channel (channel axis ``axis``, statistics over every other axis), with
``n`` values per channel:

    mean   = sum(x) / n
    var    = sum((x - mean)**2) / n                  (biased, two passes)
    invstd = 1 / sqrt(var + eps)
    y      = relu((x - mean) * invstd * gamma + beta + residual)

and the gradient, with ``g = dy * (y > 0)`` (``g = dy`` without ``y``) and
``xhat = (x - mean) * invstd``:

    dbeta  = sum(g),  dgamma = sum(g * xhat)
    dx     = gamma * invstd * (g - dbeta/n - xhat * dgamma/n)   (training)
    dx     = gamma * invstd * g                                 (frozen)

Ghost batches (``virtual_batch_size=k``) are the general case: axis 0 is
split into ``G = N // k`` groups of ``k`` consecutive samples and each group
is an independent batch norm (statistics of shape ``(G, C)``); without it
there is one group.  ``relu`` uses ``np.maximum(y, 0)``, which propagates
NaN, as fastbn does.
"""
import math

import numpy as np

__all__ = [
    "normalize_axis", "to_columns", "from_columns", "batch_stats", "moments",
    "merge_moments", "batch_norm_train", "batch_norm_infer",
    "batch_norm_backward", "batch_renorm_train", "column_moments",
]


def normalize_axis(axis, ndim):
    """``axis`` as a non-negative index for an array of ``ndim`` dimensions."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for ndim {ndim}")
    return axis % ndim


def to_columns(x, axis=1):
    """``x`` as a float64 ``(n, C)`` array, one column per channel, and the
    shape of ``x`` with the channel axis moved last (for from_columns)."""
    x = np.asarray(x, dtype=np.float64)
    axis = normalize_axis(axis, x.ndim)
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(-1, x.shape[axis]), moved.shape


def from_columns(cols, moved_shape, axis):
    """Inverse of :func:`to_columns`: back to the original axis order."""
    return np.moveaxis(cols.reshape(moved_shape), -1, axis)


class _Groups:
    """The grouped view of an array of ``shape`` with channel axis ``axis``:
    axis 0 split into ``G`` groups of ``k`` samples (``k`` None: one group of
    all), the axes to reduce over, and the shape that broadcasts a ``(G, C)``
    statistic against the grouped data."""

    def __init__(self, shape, axis, k=None):
        self.shape = tuple(shape)
        a = normalize_axis(axis, len(shape))
        n = self.shape[0]
        if k is None:
            self.G, self.k = 1, n
        else:
            if a == 0 or n % k:
                raise ValueError(f"virtual_batch_size={k} cannot split axis 0 of "
                                 f"shape {shape} with channel axis {axis}")
            self.G, self.k = n // k, k
        self.grouped = (self.G, self.k) + self.shape[1:]
        ca = a + 1  # the channel axis in the grouped view
        self.C = self.shape[a]
        self.reduce = tuple(i for i in range(1, len(self.grouped)) if i != ca)
        self.bshape = tuple(self.G if i == 0 else self.C if i == ca else 1
                            for i in range(len(self.grouped)))
        self.n = math.prod(self.grouped[i] for i in self.reduce)

    def data(self, a):
        """``a`` (of the full shape) as float64 in the grouped view (a copy)."""
        return np.array(a, dtype=np.float64).reshape(self.grouped)

    def stat(self, v):
        """A ``(C,)`` or ``(G, C)`` statistic broadcastable to the data."""
        v = np.asarray(v, dtype=np.float64)
        return np.broadcast_to(v, (self.G, self.C)).reshape(self.bshape)

    def out(self, v, k):
        """A ``(G, C)`` statistic as returned: ``(C,)`` without ghost batches."""
        return v if k is not None else v[0]


def _per_channel(v, C, default):
    """gamma or beta as float64 of shape (C,) (``default`` for None)."""
    if v is None:
        return np.full(C, float(default))
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (C,):
        raise ValueError(f"per-channel array must have shape ({C},), got {v.shape}")
    return v


def _group_stats(g, xg):
    """Mean and biased variance of every (group, channel), each (G, C)."""
    mean = xg.sum(axis=g.reduce) / g.n
    d = xg - mean.reshape(g.bshape)
    d *= d
    return mean, d.sum(axis=g.reduce) / g.n


def _finish(g, yg, gamma, beta, relu, residual, activation=None):
    """affine, residual and the activation (``relu=True``: ReLU;
    ``activation``: None, "relu" or "relu6") applied in place to the
    normalised data."""
    yg *= g.stat(_per_channel(gamma, g.C, 1.0))
    yg += g.stat(_per_channel(beta, g.C, 0.0))
    if residual is not None:
        yg += g.data(residual)
    if relu or activation in ("relu", "relu6"):
        np.maximum(yg, 0.0, out=yg)  # NaN-propagating
    if activation == "relu6":
        np.minimum(yg, 6.0, out=yg)
    return yg.reshape(g.shape)


def batch_stats(x, axis=1):
    """Per-channel mean and biased variance, float64 of shape ``(C,)``."""
    g = _Groups(np.shape(x), axis)
    mean, var = _group_stats(g, g.data(x))
    return mean[0], var[0]


def moments(x, axis=1):
    """Mergeable moments ``(count, mean, m2)``: the values per channel (an
    int), the mean and the sum of squared deviations from it (float64
    ``(C,)``; zeros for an empty batch)."""
    g = _Groups(np.shape(x), axis)
    if g.n == 0:
        return 0, np.zeros(g.C), np.zeros(g.C)
    mean, var = batch_stats(x, axis)
    return g.n, mean, var * g.n


def merge_moments(parts):
    """``[(count, mean, m2), ...]`` combined into ``(mean, var)`` by the
    exact decomposition ``M2 = sum(m2_i) + sum(n_i * (mean_i - mean)**2)``;
    counts may be ints or per-channel arrays."""
    counts = [np.asarray(c, dtype=np.float64) for c, _, _ in parts]
    means = [np.asarray(m, dtype=np.float64) for _, m, _ in parts]
    m2s = [np.asarray(s, dtype=np.float64) for _, _, s in parts]
    total = sum(counts)
    mean = sum(c * m for c, m in zip(counts, means)) / total
    m2 = sum(m2s) + sum(c * (m - mean) ** 2 for c, m in zip(counts, means))
    return mean, m2 / total


def batch_norm_train(x, gamma=None, beta=None, *, axis=1, eps=1e-5, relu=False,
                     residual=None, virtual_batch_size=None, activation=None):
    """Training forward: ``(y, mean, invstd)`` with the batch statistics
    (``(C,)``, or ``(G, C)`` with ``virtual_batch_size``)."""
    k = virtual_batch_size
    g = _Groups(np.shape(x), axis, k)
    xg = g.data(x)
    mean, var = _group_stats(g, xg)
    invstd = 1.0 / np.sqrt(var + eps)
    xg -= g.stat(mean)
    xg *= g.stat(invstd)
    y = _finish(g, xg, gamma, beta, relu, residual, activation)
    return y, g.out(mean, k), g.out(invstd, k)


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis=1, eps=1e-5,
                     relu=False, residual=None, activation=None):
    """Inference forward with given (running) statistics of shape ``(C,)``."""
    g = _Groups(np.shape(x), axis)
    mean = _per_channel(mean, g.C, 0.0)
    var = _per_channel(var, g.C, 1.0)
    xg = g.data(x)
    xg -= g.stat(mean)
    xg *= g.stat(1.0 / np.sqrt(var + eps))
    return _finish(g, xg, gamma, beta, relu, residual, activation)


def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, axis=1, y=None,
                        training=True, virtual_batch_size=None, activation=None):
    """Gradients ``(dx, dgamma, dbeta, dresidual)`` given the forward's
    ``mean`` and ``invstd`` (``(G, C)`` with ``virtual_batch_size``; ``(C,)``
    is taken for one group), ``y`` the output of a forward with a fused ReLU
    (the mask ``y > 0``; ``0 < y < 6`` with ``activation="relu6"``) and
    ``training=False`` for frozen statistics.
    ``dgamma`` and ``dbeta`` are summed over the groups; ``dresidual`` is
    ``g = dy * (y > 0)`` (or ``dy``)."""
    g = _Groups(np.shape(x), axis, virtual_batch_size)
    grad = g.data(dy)
    if y is not None:
        yd = g.data(y)
        grad *= (yd > 0) & (yd < 6) if activation == "relu6" else yd > 0
    xhat = g.data(x)
    xhat -= g.stat(mean)
    xhat *= g.stat(invstd)
    dbeta = grad.sum(axis=g.reduce)
    dgamma = (grad * xhat).sum(axis=g.reduce)
    scale = g.stat(_per_channel(gamma, g.C, 1.0)) * g.stat(invstd)
    if training:
        xhat *= g.stat(dgamma / g.n)
        dx = grad - g.stat(dbeta / g.n)
        dx -= xhat
        dx *= scale
    else:
        dx = grad * scale
    return (dx.reshape(g.shape), dgamma.sum(axis=0), dbeta.sum(axis=0),
            grad.reshape(g.shape))


def batch_renorm_train(x, gamma, beta, running_mean, running_var, *, axis=1,
                       eps=1e-5, rmax=math.inf, dmax=math.inf, relu=False,
                       residual=None, virtual_batch_size=None, rd=None):
    """Batch renormalization (Ioffe 2017) per ghost batch: with the batch's
    ``mu_B``, ``sigma_B = sqrt(var_B + eps)`` and the running statistics'
    ``sigma = sqrt(running_var + eps)``, ``r = clip(sigma_B / sigma, 1/rmax,
    rmax)``, ``d = clip((mu_B - running_mean) / sigma, -dmax, dmax)`` and
    ``y = relu(gamma * ((x - mu_B) / sigma_B * r + d) + beta + residual)``.
    ``rd = (r, d)`` replaces the computed ones (to differentiate with them
    held constant).  Returns ``(y, r, d)``, r and d of shape ``(G, C)``."""
    g = _Groups(np.shape(x), axis, virtual_batch_size)
    xg = g.data(x)
    mean, var = _group_stats(g, xg)
    sb = np.sqrt(var + eps)
    s = np.sqrt(np.asarray(running_var, np.float64) + eps)
    if rd is None:
        r = np.clip(sb / s, 1 / rmax, rmax)
        d = np.clip((mean - np.asarray(running_mean, np.float64)) / s, -dmax, dmax)
    else:
        r, d = (np.asarray(v, np.float64) for v in rd)
    xg -= g.stat(mean)
    xg *= g.stat(r / sb)
    xg += g.stat(d)
    return _finish(g, xg, gamma, beta, relu, residual), r, d


def column_moments(x, w=None):
    """Per column of a 2-D ``x``: ``(count, mean, m2)`` in float64 with NaN
    skipped and optional row weights ``w`` (count is then the weight sum)."""
    x = np.asarray(x, np.float64)
    ok = ~np.isnan(x)
    w = np.ones(x.shape[0]) if w is None else np.asarray(w, np.float64)
    ww = ok * w[:, None]
    k = ww.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, x, 0.0).T @ w / k
    d = np.where(ok, x - mean, 0.0)
    return k, mean, (ww * d * d).sum(axis=0)
