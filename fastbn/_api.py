"""The functional API: statistics, training and inference forward, backward.

Each function checks its arguments (fastbn._checks), views the input as a
C-contiguous (outer, C, inner) block, and calls one kernel through
fastbn._kernels.  See API.md for the contract.
"""
import numpy as np

from . import _ghost, _kernels
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


# the activations' codes in the kernels (fastbn.h's FBN_ACT_*)
_ACTIVATIONS = {"relu": 1, "relu6": 2}
ACTIVATION_NAMES = (None, "relu", "relu6")


def _activation(activation, relu):
    """The kernels' code of the activation given by ``activation`` (None,
    "relu" or "relu6") and the older ``relu`` flag (True: "relu")."""
    if activation is None:
        return 1 if relu else 0
    code = _ACTIVATIONS.get(activation) if isinstance(activation, str) else None
    if code is None:
        raise ValueError(f"activation must be None, 'relu' or 'relu6', got "
                         f"{activation!r}")
    if relu and code != 1:
        raise ValueError(f"relu=True and activation={activation!r} ask for two "
                         f"different activations; pass only activation="
                         f"{activation!r}")
    return code


def _mask(activation, y):
    """The backward's activation code: ``activation``'s, which needs the
    forward's output ``y``; without one, ReLU when ``y`` is given."""
    if activation is None:
        return 0 if y is None else 1
    code = _activation(activation, False)
    if y is None:
        raise ValueError(f"activation={activation!r} needs the forward's output y= "
                         f"(the gradient flows where y passes the activation)")
    return code


def _run(op, body, comm, *args):
    """``body(*args)``; with ``comm``, through fastbn._mpi.run, so that an
    error on any rank raises on every rank (``op``: "FORWARD" or
    "BACKWARD")."""
    if comm is None:
        return body(*args)
    return _mpi().run(getattr(_mpi(), op), comm, body, *args)


def _forward_args(x, gamma, beta, axis, eps, residual, out):
    """The checked arguments of a forward call: (x, outer, C, inner, axis,
    gamma, beta, eps, z, y), axis normalised.  The common case (plain
    arrays, no gamma/beta, a float eps) takes the inline tests; anything
    else goes through fastbn._checks, whose errors name the argument."""
    if not _plain(x):
        x = as_data(x)
    outer, C, inner, a = view(x.shape, axis)
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
    return x, outer, C, inner, a, gamma, beta, eps, z, y


def _train(x, gamma, beta, axis, eps, relu, residual, out, comm, want_var, k=None,
           rn=None, activation=None):
    """The training forward of batch_norm_train and the layer, over ghost
    batches of ``k`` samples (None: one group, ordinary batch norm),
    renormalised with ``rn = (running_mean64, sigma64, rmax, dmax)`` when
    given.  Returns ``(y, mean, invstd, var64 or None, count)`` (statistics
    of shape ``(G, C)`` with ``k``, else ``(C,)``; ``count`` the values per
    channel of a group, of the global batch with ``comm``), followed by
    ``r`` and ``d`` with ``rn``.  With comm, call it through ``_run`` (an
    error on any rank then raises on every rank)."""
    act = (1 if relu else 0) if activation is None else _activation(activation, relu)
    x, outer, C, inner, a, gamma, beta, eps, z, y = _forward_args(
        x, gamma, beta, axis, eps, residual, out)
    if comm is not None:
        mean, invstd, var, count = _mpi().train_forward(
            comm, x, outer, C, inner, gamma, beta, z, eps, act, y, _nthreads())
        return y, mean, invstd, var, count
    G = 1 if k is None else _ghost.groups(x.shape, a, k)
    n = (outer // G) * inner if G else 0
    if n < 2:
        what = (f"x of shape {x.shape} has {n} (axis={axis})" if k is None else
                f"each ghost batch of {k} samples (x of shape {x.shape}, "
                f"axis={axis}) has {n}")
        raise ValueError(f"training needs at least 2 values per channel; {what}")
    if rn is None:
        mean, invstd, var, r, d = _kernels.train_forward(
            x, G, outer, C, inner, gamma, beta, z, eps, act, y, _nthreads(), want_var,
            k is not None)
        return y, mean, invstd, var, n
    mean, invstd, var, r, d = _kernels.train_forward(
        x, G, outer, C, inner, gamma, beta, z, eps, act, y, _nthreads(), want_var,
        k is not None, rn)
    return y, mean, invstd, var, n, r, d


def _ghost_k(virtual_batch_size, comm, backward):
    """``virtual_batch_size`` checked; with ``comm`` the ValueError of
    combining them, told to every rank."""
    k = _ghost.check_virtual_batch_size(virtual_batch_size)
    if comm is not None:
        _ghost.comm_error(backward, comm)
    return k


def batch_norm_train(x, gamma=None, beta=None, *, axis=1, eps=1e-5, relu=False,
                     residual=None, out=None, comm=None, virtual_batch_size=None,
                     activation=None):
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

    ``activation`` (None, ``"relu"`` or ``"relu6"``, the latter
    ``min(max(t, 0), 6)``) is fused the same way; ``relu=True`` means
    ``activation="relu"``.

    Returns ``(y, mean, invstd)`` with ``invstd = 1/sqrt(var + eps)``.
    """
    k = None if virtual_batch_size is None else _ghost_k(virtual_batch_size, comm,
                                                          False)
    args = (x, gamma, beta, axis, eps, relu, residual, out, comm, False, k, None,
            activation)
    if comm is None:
        y, mean, invstd, _, _ = _train(*args)
    else:
        y, mean, invstd, _, _ = _run("FORWARD", _train, comm, *args)
    return y, mean, invstd


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis=1, eps=1e-5,
                     relu=False, residual=None, out=None, activation=None):
    """Inference-mode batch normalization with given statistics.

    ``y = relu((x - mean) / sqrt(var + eps) * gamma + beta + residual)`` in
    one pass.  ``mean`` and ``var`` (e.g. running statistics) have shape
    ``(C,)`` and are cast to ``x.dtype`` (float32 for half ``x``).
    ``activation`` (None, ``"relu"`` or ``"relu6"``) as in
    batch_norm_train.  Returns y (``out`` if given).
    """
    act = (1 if relu else 0) if activation is None else _activation(activation, relu)
    x, outer, C, inner, _, gamma, beta, eps, z, y = _forward_args(
        x, gamma, beta, axis, eps, residual, out)
    sdt = stat_dtype(x.dtype)
    mean = per_channel(mean, "mean", C, sdt, allow_none=False)
    var = per_channel(var, "var", C, sdt, allow_none=False)
    _kernels.infer_forward(x, outer, C, inner, mean, var, gamma, beta, z, eps, act, y,
                           _nthreads())
    return y


def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, axis=1, y=None,
                        training=True, residual=False, out=None, comm=None,
                        virtual_batch_size=None, activation=None):
    """Gradients of batch normalization.

    ``dy`` is the gradient of the loss with respect to the forward output,
    ``x`` the forward input, ``mean`` and ``invstd`` what the forward
    returned (or the running statistics' mean and ``1/sqrt(var+eps)`` for
    ``training=False``), ``gamma`` the scale (None: 1).  When the forward
    fused a ReLU, pass its output as ``y``: the gradient flows where
    ``y > 0``.  ``training=False`` gives the gradient through frozen
    statistics, ``dx = dy' * gamma * invstd``.  ``out`` receives dx.
    After a forward with ``activation="relu6"``, pass its output as ``y``
    and ``activation="relu6"``: the gradient flows where ``0 < y < 6``.

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
    k = None if virtual_batch_size is None else _ghost_k(virtual_batch_size, comm,
                                                          True)
    args = (dy, x, mean, invstd, gamma, axis, y, training, residual, out, comm, k,
            None, None, activation)
    if comm is not None and training:
        return _run("BACKWARD", _backward, comm, *args)
    return _backward(*args)


def _backward(dy, x, mean, invstd, gamma, axis, y, training, residual, out, comm,
              k=None, r=None, d=None, activation=None):
    """Body of batch_norm_backward and the layer's backward: over ghost
    batches of ``k`` samples (None: one group), with a renormalised
    forward's ``r`` and ``d`` (float64, ``(G, C)``) held constant when
    given.  With comm and training, call it through ``_run``."""
    x = as_data(x)
    outer, C, inner, a = view(x.shape, axis)
    dt = x.dtype
    sdt = stat_dtype(dt)  # per-channel arrays: float32 for half x
    G = 1 if k is None else _ghost.groups(x.shape, a, k)
    dy = like_x(dy, "dy", x)
    yv = None if y is None else like_x(y, "y", x)
    act = (0 if yv is None else 1) if activation is None else _mask(activation, yv)
    if k is None:
        mean = per_channel(mean, "mean", C, sdt, allow_none=False)
        invstd = per_channel(invstd, "invstd", C, sdt, allow_none=False)
    gamma = per_channel(gamma, "gamma", C, sdt)
    dx = output(out, x)
    if out is not None:
        no_partial_overlap(dx, "out", x, dy, yv)
    dz = np.empty(x.shape, dt) if residual else None
    training = bool(training)
    n = (outer // G) * inner if G else 0
    if comm is not None and training:
        dgamma, dbeta = _mpi().backward(comm, dy, x, yv, outer, C, inner, mean,
                                        invstd, gamma, dx, dz, _nthreads(), act)
    elif G == 0:  # an empty batch in ghost batches
        if training:
            raise ValueError(f"training needs at least 2 values per channel; x of "
                             f"shape {x.shape} has none (axis={axis})")
        dgamma, dbeta = np.zeros(C, sdt), np.zeros(C, sdt)
    else:
        if k is not None:
            mean = _ghost.per_group(mean, "mean", G, C, sdt)
            invstd = _ghost.per_group(invstd, "invstd", G, C, sdt)
        if training and n < 2:
            what = (f"x of shape {x.shape} has {n} (axis={axis})" if k is None else
                    f"each ghost batch of {k} samples (x of shape {x.shape}, "
                    f"axis={axis}) has {n}")
            raise ValueError(f"training needs at least 2 values per channel; {what}")
        if r is not None:
            r = np.require(r, np.float64, ["C", "A"])
            d = np.require(d, np.float64, ["C", "A"])
        dgamma, dbeta = _kernels.backward(dy, x, yv, act, G, outer, C, inner, mean,
                                          invstd, gamma, r, d, training, dx, dz,
                                          _nthreads())
    if residual:
        return dx, dgamma, dbeta, dz
    return dx, dgamma, dbeta
