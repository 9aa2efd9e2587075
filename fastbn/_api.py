"""The functional API: statistics, training and inference forward, backward.

Each function checks its arguments (fastbn._checks), views the input as a
C-contiguous (outer, C, inner) block, and calls one kernel through
fastbn._kernels.  The contract: docs/contract.md.
"""
import numpy as np

from . import _kernels
from ._checks import (_plain, as_data, eps_value, like_x, no_partial_overlap, output,
                      per_channel, stat_dtype, view)
from ._threads import _nthreads

__all__ = ["batch_stats", "moments", "merge_moments", "batch_norm_train",
           "batch_norm_infer", "batch_norm_backward"]


def _mpi():
    from . import _mpi
    return _mpi


def batch_stats(x, axis=1):
    """Per-channel mean and biased (population) variance of ``x``.

    Statistics are taken over every axis but ``axis``.  Accumulation is in
    double with a two-pass variance per cache-resident block, merged with
    Chan's formula, so float32 data with a large offset keeps its accuracy
    and the variance is never negative.  float16 and bfloat16 data are
    summed in float partial sums of at most 128 values with the corrected
    two-pass form, then in double: the variance within 7.7e-6 relative, the
    mean within 7.7e-6 standard deviations (README, "Half precision").

    Returns ``(mean, var)``, each of shape ``(C,)`` and ``x.dtype``
    (float32 for float16 and bfloat16 ``x``).
    """
    x = as_data(x)
    outer, C, inner, _ = view(x.shape, axis)
    n = outer * inner
    if n < 1:
        raise ValueError(f"batch_stats needs at least 1 value per channel, "
                         f"x of shape {x.shape} has none (axis={axis})")
    mean, m2 = _kernels.moments(x, outer, C, inner, _nthreads())
    sdt = stat_dtype(x.dtype)
    return mean.astype(sdt), (m2 / n).astype(sdt)


def moments(x, axis=1):
    """Mergeable per-channel moments ``(count, mean, m2)`` of ``x``.

    ``count`` is the number of values per channel (an int), ``mean`` and
    ``m2`` (the sum of squared deviations from the mean) are float64 arrays
    of shape ``(C,)`` whatever ``x.dtype`` is, so that merging partial
    moments (``merge_moments``) stays exact.  An empty batch gives
    ``count == 0`` and zeros.
    """
    x = as_data(x)
    outer, C, inner, _ = view(x.shape, axis)
    mean, m2 = _kernels.moments(x, outer, C, inner, _nthreads())
    return outer * inner, mean, m2


def merge_moments(parts):
    """Merge partial moments with Chan et al.'s formula.

    ``parts`` is a sequence of ``(count, mean, m2)`` as returned by
    ``moments`` (count an int or an array of per-channel counts); parts
    with count 0 contribute nothing.  Returns ``(mean, var)`` of the union
    in float64, ``var`` biased.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("parts must hold at least one (count, mean, m2) triple")
    n = mean = m2 = None
    for i, part in enumerate(parts):
        try:
            cb, mb, qb = part
        except (TypeError, ValueError):
            raise TypeError(f"parts[{i}] must be a (count, mean, m2) triple") from None
        cb = np.asarray(cb, dtype=np.float64)
        mb = np.asarray(mb, dtype=np.float64)
        qb = np.asarray(qb, dtype=np.float64)
        if mb.ndim != 1 or qb.shape != mb.shape or cb.ndim > 1 or (
                cb.ndim == 1 and cb.shape != mb.shape):
            raise ValueError(f"parts[{i}]: mean and m2 must have the same shape (C,) "
                             f"and count must be a scalar or of that shape; got "
                             f"{cb.shape}, {mb.shape}, {qb.shape}")
        if np.any(cb < 0):
            raise ValueError(f"parts[{i}]: count must be >= 0")
        if n is None:
            n, mean, m2 = np.broadcast_to(cb, mb.shape).copy(), mb.copy(), qb.copy()
            continue
        if mb.shape != mean.shape:
            raise ValueError(f"parts[{i}] has {mb.shape[0]} channels, "
                             f"parts[0] has {mean.shape[0]}")
        tot = n + cb
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(tot > 0, cb / tot, 0.0)
            d = np.where(cb > 0, mb - mean, 0.0)
            mean = mean + d * f
            m2 = m2 + np.where(cb > 0, qb, 0.0) + d * d * (n * f)
        n = tot
    if np.any(n == 0):
        raise ValueError("merge_moments: the merged count is 0 for some channel")
    return mean, m2 / n


def _forward_args(x, gamma, beta, axis, eps, residual, out):
    """The checked arguments of a forward call: (x, outer, C, inner, gamma,
    beta, eps, z, y).  The common case (plain arrays, no gamma/beta, a float
    eps) takes the inline tests; anything else goes through
    fastbn._checks, whose errors name the argument."""
    if not _plain(x):
        x = as_data(x)
    outer, C, inner, _ = view(x.shape, axis)
    dt = x.dtype
    sdt = stat_dtype(dt)  # per-channel arrays: float32 for half x
    if gamma is not None:
        gamma = per_channel(gamma, "gamma", C, sdt)
    if beta is not None:
        beta = per_channel(beta, "beta", C, sdt)
    if type(eps) is not float or not eps > 0:
        eps = eps_value(eps)
    z = None if residual is None else like_x(residual, "residual", x)
    if out is None:
        y = np.empty(x.shape, dt)
    else:
        y = output(out, x)
        if y is not x or z is not None:
            no_partial_overlap(y, "out", x, z)
    return x, outer, C, inner, gamma, beta, eps, z, y


def _train(x, gamma, beta, axis, eps, relu, residual, out, comm, want_var):
    """Shared body of batch_norm_train and the layer.  Returns
    (y, mean, invstd, var64 or None, count).  With comm, call it through
    fastbn._mpi.run (an error on any rank then raises on every rank)."""
    x, outer, C, inner, gamma, beta, eps, z, y = _forward_args(
        x, gamma, beta, axis, eps, residual, out)
    if comm is not None:
        mean, invstd, var, count = _mpi().train_forward(
            comm, x, outer, C, inner, gamma, beta, z, eps, bool(relu), y, _nthreads())
        return y, mean, invstd, var, count
    n = outer * inner
    if n < 2:
        raise ValueError(f"training needs at least 2 values per channel; x of shape "
                         f"{x.shape} has {n} (axis={axis})")
    res = _kernels.train_forward(x, outer, C, inner, gamma, beta, z, eps,
                                 bool(relu), y, _nthreads(), want_var)
    if want_var:
        return y, res[0], res[1], res[2], n
    return y, res[0], res[1], None, n


def batch_norm_train(x, gamma=None, beta=None, *, axis=1, eps=1e-5, relu=False,
                     residual=None, out=None, comm=None, virtual_batch_size=None):
    """Training-mode batch normalization.

    ``y = relu((x - mean) / sqrt(var + eps) * gamma + beta + residual)`` with
    the batch mean and biased variance per channel (channel axis ``axis``),
    gamma/beta optional (None: scale 1 / shift 0), residual and ReLU
    optional, all in one fused pass per channel where the channel fits in
    cache.  ``out`` (C-contiguous, x's shape and dtype; ``out=x`` works in
    place) receives y.  ``comm`` (an mpi4py communicator) synchronises the
    statistics over all its ranks; an argument error on any rank then
    raises on every rank (RuntimeError on the ranks whose arguments were
    valid), and ranks that disagree on the channel count or dtype raise
    ValueError.

    ``virtual_batch_size=k`` (ghost batch normalization, Hoffer et al.
    2017): axis 0 (the batch axis; not the channel axis) is split into
    ``G = N // k`` groups of ``k`` consecutive samples (samples
    ``g*k .. g*k+k-1`` form group ``g``), each normalised with its own
    statistics; ``mean`` and ``invstd`` then have shape ``(G, C)`` (pass
    them and the same ``virtual_batch_size`` to batch_norm_backward).
    ``N % k`` must be 0; ``k = N`` gives ordinary batch norm bit for bit.
    Keras's ``virtual_batch_size`` groups every G-th sample instead.  Not
    combinable with ``comm``.

    Returns ``(y, mean, invstd)`` with ``invstd = 1/sqrt(var + eps)``.
    """
    if virtual_batch_size is not None:
        return _ghost_train(x, gamma, beta, axis, eps, relu, residual, out, comm,
                            virtual_batch_size)
    args = (x, gamma, beta, axis, eps, relu, residual, out, comm, False)
    if comm is not None:  # an error on any rank raises on every rank
        y, mean, invstd, _, _ = _mpi().run(_mpi().FORWARD, comm, _train, *args)
    else:
        y, mean, invstd, _, _ = _train(*args)
    return y, mean, invstd


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis=1, eps=1e-5,
                     relu=False, residual=None, out=None):
    """Inference-mode batch normalization with given statistics.

    ``y = relu((x - mean) / sqrt(var + eps) * gamma + beta + residual)`` in
    one pass.  ``mean`` and ``var`` (e.g. running statistics) have shape
    ``(C,)`` and are cast to ``x.dtype`` (float32 for half ``x``).  Returns
    y (``out`` if given).
    """
    x, outer, C, inner, gamma, beta, eps, z, y = _forward_args(
        x, gamma, beta, axis, eps, residual, out)
    sdt = stat_dtype(x.dtype)
    mean = per_channel(mean, "mean", C, sdt, allow_none=False)
    var = per_channel(var, "var", C, sdt, allow_none=False)
    _kernels.infer_forward(x, outer, C, inner, mean, var, gamma, beta, z, eps,
                           bool(relu), y, _nthreads())
    return y


def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, axis=1, y=None,
                        training=True, residual=False, out=None, comm=None,
                        virtual_batch_size=None):
    """Gradients of batch normalization.

    ``dy`` is the gradient of the loss with respect to the forward output,
    ``x`` the forward input, ``mean`` and ``invstd`` what the forward
    returned (or the running statistics' mean and ``1/sqrt(var+eps)`` for
    ``training=False``), ``gamma`` the scale (None: 1).  When the forward
    fused a ReLU, pass its output as ``y``: the gradient flows where
    ``y > 0``.  ``training=False`` gives the gradient through frozen
    statistics, ``dx = dy' * gamma * invstd``.  ``out`` receives dx.

    Returns ``(dx, dgamma, dbeta)``, and with ``residual=True`` (the
    forward fused a residual add) also the residual's gradient ``dy'``:
    ``(dx, dgamma, dbeta, dresidual)``.  ``dgamma = sum(dy' * xhat)`` and
    ``dbeta = sum(dy')`` are always returned, even when the forward had no
    gamma or beta.  ``comm`` all-reduces the two per-channel sums (with
    ``training=True``), with the same error guarantee as batch_norm_train.
    With ``virtual_batch_size=k`` (as given to batch_norm_train) the
    gradient is that of each ghost batch through its own statistics
    (``mean``, ``invstd`` of shape ``(G, C)``); ``dgamma`` and ``dbeta``
    are summed over the groups.
    """
    if virtual_batch_size is not None:
        return _ghost_backward(dy, x, mean, invstd, gamma, axis, y, training,
                               residual, out, comm, virtual_batch_size)
    args = (dy, x, mean, invstd, gamma, axis, y, training, residual, out, comm)
    if comm is not None and training:  # an error on any rank raises on every rank
        return _mpi().run(_mpi().BACKWARD, comm, _backward, *args)
    return _backward(*args)


def _backward(dy, x, mean, invstd, gamma, axis, y, training, residual, out, comm):
    """Body of batch_norm_backward (with comm and training, through
    fastbn._mpi.run)."""
    x = as_data(x)
    outer, C, inner, _ = view(x.shape, axis)
    dt = x.dtype
    dy = like_x(dy, "dy", x)
    yv = None if y is None else like_x(y, "y", x)
    sdt = stat_dtype(dt)  # per-channel arrays: float32 for half x
    mean = per_channel(mean, "mean", C, sdt, allow_none=False)
    invstd = per_channel(invstd, "invstd", C, sdt, allow_none=False)
    gamma = per_channel(gamma, "gamma", C, sdt)
    dx = output(out, x)
    if out is not None:
        no_partial_overlap(dx, "out", x, dy, yv)
    dz = np.empty(x.shape, dt) if residual else None
    training = bool(training)
    if comm is not None and training:
        dgamma, dbeta = _mpi().backward(comm, dy, x, yv, outer, C, inner, mean,
                                        invstd, gamma, dx, dz, _nthreads())
    else:
        if training and outer * inner < 2:
            raise ValueError(f"training needs at least 2 values per channel; x of "
                             f"shape {x.shape} has {outer * inner} (axis={axis})")
        dgamma, dbeta = _kernels.backward(dy, x, yv, outer, C, inner, mean, invstd,
                                          gamma, training, dx, dz, _nthreads())
    if residual:
        return dx, dgamma, dbeta, dz
    return dx, dgamma, dbeta


def _ghost_train(x, gamma, beta, axis, eps, relu, residual, out, comm, k):
    """batch_norm_train with virtual_batch_size (fastbn._ghost)."""
    from . import _ghost
    k = _ghost.check_virtual_batch_size(k)
    if comm is not None:
        _ghost.comm_error(False, comm)
    y, mean, invstd, _, _, _, _ = _ghost.train(x, gamma, beta, axis, eps, relu,
                                               residual, out, k)
    return y, mean, invstd


def _ghost_backward(dy, x, mean, invstd, gamma, axis, y, training, residual, out,
                    comm, k):
    """batch_norm_backward with virtual_batch_size (fastbn._ghost)."""
    from . import _ghost
    k = _ghost.check_virtual_batch_size(k)
    if comm is not None:
        _ghost.comm_error(True, comm)
    return _ghost.backward(dy, x, mean, invstd, gamma, axis, y, training, residual,
                           out, k)
