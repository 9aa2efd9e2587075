"""The functional API: statistics, training and inference forward, backward.

Each function checks its arguments (fastbn._checks), views the input as a
C-contiguous (outer, C, inner) block, and calls one kernel through
fastbn._kernels.  The contract (layouts, dtypes, errors, determinism) is
docs/contract.md, "Conventions everywhere".
"""
import numpy as np

from . import _ghost, _kernels
from ._checks import (_VIEWS, _plain, as_data, eps_value, like_x, no_partial_overlap,
                      output, per_channel, stat_dtype, view)
from ._threads import _nthreads

__all__ = ["batch_stats", "moments", "merge_moments", "batch_norm_train",
           "batch_norm_infer", "batch_norm_backward"]


def _mpi():
    from . import _mpi
    return _mpi


def batch_stats(x, axis=1):
    """Per-channel mean and biased (population) variance.

    Parameters
    ----------
    x : ndarray
        The data: float32, float64, float16 or bfloat16, ``ndim >= 2``.
        Non-contiguous and read-only arrays are accepted.
    axis : int, default 1
        The channel axis (``1`` for NCHW/NCL/NC, ``-1`` for channels-last).
        Statistics are taken over every other axis.

    Returns
    -------
    mean, var : ndarray of shape (C,)
        The per-channel mean and biased variance, in ``x.dtype`` (float32
        for float16 and bfloat16 ``x``).

    Raises
    ------
    TypeError
        If ``x`` is not a float array of a supported dtype.
    ValueError
        If ``axis`` is out of range, ``x`` has fewer than 2 dimensions, or a
        channel has no value.

    See Also
    --------
    moments : mergeable partial moments, for data in chunks or processes.

    Notes
    -----
    Statistics are accumulated in double with a two-pass variance per
    cache-resident block, merged with Chan et al.'s formula, so float32 data
    with a large offset keeps its accuracy (mean 1e4, std 1: the variance
    within 1e-4 relative of the float64 value) and the variance is never
    negative.  float16 and bfloat16 data are summed in float32 partial sums
    of at most 128 values with the corrected two-pass form, then in double:
    the variance within 7.7e-6 relative, the mean within 7.7e-6 standard
    deviations.  The result is bitwise the same for every thread count.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)   # (N, C, L)
    >>> mean, var = fastbn.batch_stats(x)
    >>> print(mean, var)
    [ 7.5 11.5 15.5] [37.25 37.25 37.25]
    >>> mean, var = fastbn.batch_stats(x.transpose(0, 2, 1), axis=-1)  # channels-last
    >>> print(mean)
    [ 7.5 11.5 15.5]
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
    """Mergeable per-channel moments ``(count, mean, m2)``.

    Parameters
    ----------
    x : ndarray
        The data: float32, float64, float16 or bfloat16, ``ndim >= 2``.
    axis : int, default 1
        The channel axis; the moments are taken over every other axis.

    Returns
    -------
    count : int
        The number of values per channel (0 for an empty batch).
    mean : ndarray of shape (C,), float64
        The per-channel mean (zeros for an empty batch).
    m2 : ndarray of shape (C,), float64
        The per-channel sum of squared deviations from the mean.

    Raises
    ------
    TypeError
        If ``x`` is not a float array of a supported dtype.
    ValueError
        If ``axis`` is out of range or ``x`` has fewer than 2 dimensions.

    See Also
    --------
    merge_moments : combine the moments of several parts.
    batch_stats : mean and variance in one call.

    Notes
    -----
    ``mean`` and ``m2`` are float64 whatever ``x.dtype`` is, so that
    merging partial moments stays exact; this is the one function whose
    per-channel results are not in ``x.dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> count, mean, m2 = fastbn.moments(x)
    >>> print(count, mean, m2, mean.dtype)
    8 [ 7.5 11.5 15.5] [298. 298. 298.] float64
    """
    x = as_data(x)
    outer, C, inner, _ = view(x.shape, axis)
    mean, m2 = _kernels.moments(x, outer, C, inner, _nthreads())
    return outer * inner, mean, m2


def merge_moments(parts):
    """Merge partial moments with Chan et al.'s formula.

    Parameters
    ----------
    parts : sequence of (count, mean, m2)
        Triples as returned by :func:`moments`; ``count`` is an int or an
        array of per-channel counts, ``mean`` and ``m2`` have shape ``(C,)``.
        Parts with count 0 contribute nothing.

    Returns
    -------
    mean, var : ndarray of shape (C,), float64
        The mean and biased variance of the union of the parts.

    Raises
    ------
    TypeError
        If a part is not a ``(count, mean, m2)`` triple.
    ValueError
        If ``parts`` is empty, the parts' shapes differ, a count is
        negative, or the merged count of a channel is 0.

    See Also
    --------
    moments : the moments of one part.

    Notes
    -----
    The merge is exact algebra in float64 (no ``E[x^2] - E[x]^2``
    cancellation) and correct for parts of unequal size: the same formula
    merges the statistics of synchronised batch norm across MPI ranks.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    >>> parts = [fastbn.moments(chunk) for chunk in np.array_split(x, 2)]
    >>> mean, var = fastbn.merge_moments(parts)
    >>> print(mean, var)
    [ 7.5 11.5 15.5] [37.25 37.25 37.25]
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


def _mask(activation, y, beta, residual, comm):
    """The backward's activation code: ``activation``'s; without one, ReLU
    when ``y`` is given.  The mask comes from ``y``, or without it from
    ``x`` and the forward's ``beta``, which must then be given (a residual
    or ``comm`` needs ``y``)."""
    if activation is None:
        return 0 if y is None else 1
    code = _activation(activation, False)
    if y is None:
        if residual or comm is not None:
            what = "residual=True" if residual else "comm="
            raise ValueError(f"activation={activation!r} with {what} needs the "
                             f"forward's output y= (the gradient flows where y "
                             f"passes the activation)")
        if beta is None:
            raise TypeError(f"activation={activation!r} needs the forward's output y= "
                            f"or its beta=: without y the mask is recomputed from x "
                            f"and beta (pass the forward's beta, or zeros if it had "
                            f"none)")
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
    shape = x.shape
    v = _VIEWS.get((shape, axis)) if type(axis) is int else None  # (view's cache)
    outer, C, inner, a = view(shape, axis) if v is None else v
    dt = x.dtype
    if gamma is not None or beta is not None:
        sdt = stat_dtype(dt)  # per-channel arrays: float32 for half x
        if gamma is not None:
            gamma = per_channel(gamma, "gamma", C, sdt)
        if beta is not None:
            beta = per_channel(beta, "beta", C, sdt)
    if type(eps) is not float or not eps > 0:
        eps = eps_value(eps)
    z = None
    if residual is not None:
        z = like_x(residual, "residual", x)
    elif out is None:
        return x, outer, C, inner, a, gamma, beta, eps, None, np.empty(shape, dt)
    elif _plain(out, True) and out.shape == shape and out.dtype == dt:
        # (output's fast path, inline: a tiny call spent ~10 % of its time there)
        if out is not x and _kernels.partial_overlap(out, x):
            no_partial_overlap(out, "out", x)  # (raises)
        return x, outer, C, inner, a, gamma, beta, eps, None, out
    if out is None:
        y = np.empty(shape, dt)
    else:
        y = output(out, x)
        if y is not x or z is not None:
            no_partial_overlap(y, "out", x, z)
    return x, outer, C, inner, a, gamma, beta, eps, z, y


def _train(x, gamma, beta, axis, eps, relu, residual, out, comm, want_var, k=None,
           rn=None, activation=None, want_lo=False):
    """The training forward of batch_norm_train and the layer, over ghost
    batches of ``k`` samples (None: one group, ordinary batch norm),
    renormalised with ``rn = (running_mean64, sigma64, rmax, dmax)`` when
    given.  Returns ``(y, mean, invstd, var64 or None, count)`` (statistics
    of shape ``(G, C)`` with ``k``, else ``(C,)``; ``count`` the values per
    channel of a group, of the global batch with ``comm``), followed by
    ``r`` and ``d`` with ``rn``, then, with ``want_lo``, ``mean_lo``: the
    part of the double batch mean below ``mean``'s precision (``mean``'s
    shape and dtype; ``None`` with comm), which ``_backward`` takes to
    rebuild the activation's mask from ``x`` without a second pass over it.
    With comm, call it through ``_run`` (an error on any rank then raises
    on every rank)."""
    act = (1 if relu else 0) if activation is None else _activation(activation, relu)
    x, outer, C, inner, a, gamma, beta, eps, z, y = _forward_args(
        x, gamma, beta, axis, eps, residual, out)
    if comm is not None:
        mean, invstd, var, count = _mpi().train_forward(
            comm, x, outer, C, inner, gamma, beta, z, eps, act, y, _nthreads())
        return (y, mean, invstd, var, count) + ((None,) if want_lo else ())
    G = 1 if k is None else _ghost.groups(x.shape, a, k)
    n = (outer // G) * inner if G else 0
    if n < 2:
        what = (f"x of shape {x.shape} has {n} (axis={axis})" if k is None else
                f"each ghost batch of {k} samples (x of shape {x.shape}, "
                f"axis={axis}) has {n}")
        raise ValueError(f"training needs at least 2 values per channel; {what}")
    mean, invstd, var, r, d, lo = _kernels.train_forward(
        x, G, outer, C, inner, gamma, beta, z, eps, act, y, _nthreads(), want_var,
        k is not None, rn, want_lo)
    res = (y, mean, invstd, var, n) + ((r, d) if rn is not None else ())
    return res + ((lo,) if want_lo else ())


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
    """Training-mode batch normalization: batch statistics, then normalise.

    ``y = relu((x - mean) / sqrt(var + eps) * gamma + beta + residual)`` per
    channel with the batch mean and biased variance; ``gamma``, ``beta``,
    ``residual`` and the ReLU are optional, and all of it runs in one fused
    pass per channel where the channel fits in cache.

    Parameters
    ----------
    x : ndarray
        The data: float32, float64, float16 or bfloat16, ``ndim >= 2``.
        Non-contiguous, Fortran-ordered and read-only arrays are accepted
        (copied once when needed); ``x`` is never modified (unless ``out=x``).
    gamma : array_like of shape (C,), optional
        The scale; None means 1 (TensorFlow's ``scale=False``).  Cast to
        ``x.dtype`` (float32 for half ``x``).
    beta : array_like of shape (C,), optional
        The shift; None means 0 (``center=False``).
    axis : int, default 1
        The channel axis (``1``: NCHW/NCL/NC, ``-1``: channels-last).
    eps : float, default 1e-5
        Added to the variance before the square root; must be > 0.
    relu : bool, default False
        Fuse ``max(0, .)`` into the same pass.
    activation : {None, "relu", "relu6"}, optional
        The activation fused into the same pass (``"relu6"``:
        ``min(max(0, .), 6)``); ``relu=True`` is ``activation="relu"``.
    residual : ndarray, optional
        An array of ``x``'s shape added after the affine and before the ReLU
        (a ResNet block's ``relu(BN(x) + z)``); float16, float32, float64 or
        bfloat16, cast to ``x.dtype``.
    out : ndarray, optional
        A C-contiguous array of ``x``'s shape and dtype that receives ``y``;
        ``out=x`` works in place.
    comm : mpi4py communicator, optional
        Synchronised batch norm: the statistics are those of the union of
        every rank's ``x`` (exactly, for unequal and empty local batches).
    virtual_batch_size : int, optional
        Ghost batch normalization (Hoffer et al. 2017): axis 0 is split into
        ``G = N // k`` groups of ``k`` consecutive samples, each normalised
        with its own statistics.  Not combinable with ``comm``.

    Returns
    -------
    y : ndarray
        The output, of ``x``'s shape and dtype (``out`` if given).
    mean : ndarray of shape (C,), or (G, C) with ``virtual_batch_size``
        The batch mean, in ``x.dtype`` (float32 for half ``x``).
    invstd : ndarray of shape (C,), or (G, C) with ``virtual_batch_size``
        ``1 / sqrt(var + eps)``, what :func:`batch_norm_backward` needs.

    Raises
    ------
    TypeError
        If ``x`` (or ``residual``, ``out``) has an unsupported dtype, or an
        argument has the wrong type.
    ValueError
        If ``axis`` is out of range, a per-channel array has the wrong
        shape, ``eps <= 0``, a channel has fewer than 2 values, ``out`` does
        not match ``x``, or ``N % virtual_batch_size != 0``.
    RuntimeError
        With ``comm``: on the ranks whose arguments were valid, when another
        rank's were not (that rank raises its own error; no rank hangs).

    See Also
    --------
    batch_norm_backward : the gradients of this call.
    batch_norm_infer : normalisation with given (running) statistics.
    BatchNorm : the layer, with running statistics.

    Notes
    -----
    The variance used for normalisation is the biased (population)
    variance.  Results are bitwise identical for every thread count, plan
    and SIMD level, and the same data as NCHW (``axis=1``) or NHWC
    (``axis=-1``) gives the same numbers within float rounding.  With
    ``comm``, ranks that disagree on the channel count or dtype raise
    ValueError on every rank.  With ``virtual_batch_size=k``, samples
    ``g*k .. g*k+k-1`` form group ``g`` (Keras groups every G-th sample
    instead), and ``k = N`` gives ordinary batch norm bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 2, 2)   # (N, C, L)
    >>> y, mean, invstd = fastbn.batch_norm_train(x)
    >>> print(mean)
    [6.5 8.5]
    >>> print(np.round(y[:, 0], 3))
    [[-1.444 -1.222]
     [-0.556 -0.333]
     [ 0.333  0.556]
     [ 1.222  1.444]]

    Scale, shift and a fused ReLU:

    >>> gamma = np.array([2.0, 1.0], np.float32)
    >>> beta = np.array([0.5, 0.0], np.float32)
    >>> y, mean, invstd = fastbn.batch_norm_train(x, gamma, beta, relu=True)
    >>> print(np.round(y[:, 0], 3))
    [[0.    0.   ]
     [0.    0.   ]
     [1.167 1.611]
     [2.944 3.389]]

    Ghost batches of 2 samples: one row of statistics per group.

    >>> y, mean, invstd = fastbn.batch_norm_train(x, virtual_batch_size=2)
    >>> print(mean)
    [[ 2.5  4.5]
     [10.5 12.5]]
    """
    k = None if virtual_batch_size is None else _ghost_k(virtual_batch_size, comm,
                                                          False)
    if comm is None:
        y, mean, invstd, _, _ = _train(x, gamma, beta, axis, eps, relu, residual, out,
                                       None, False, k, None, activation)
    else:
        y, mean, invstd, _, _ = _run("FORWARD", _train, comm, x, gamma, beta, axis, eps,
                                     relu, residual, out, comm, False, k, None,
                                     activation)
    return y, mean, invstd


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis=1, eps=1e-5,
                     relu=False, residual=None, out=None, activation=None):
    """Inference-mode batch normalization with given statistics.

    ``y = relu((x - mean) / sqrt(var + eps) * gamma + beta + residual)`` in
    one pass, with ``mean`` and ``var`` given (e.g. running statistics).

    Parameters
    ----------
    x : ndarray
        The data: float32, float64, float16 or bfloat16, ``ndim >= 2``.
    mean, var : array_like of shape (C,)
        The statistics to normalise with; cast to ``x.dtype`` (float32 for
        half ``x``).
    gamma, beta : array_like of shape (C,), optional
        The scale (None: 1) and shift (None: 0).
    axis : int, default 1
        The channel axis.
    eps : float, default 1e-5
        Added to ``var`` before the square root; must be > 0.
    relu : bool, default False
        Fuse ``max(0, .)`` into the same pass.
    activation : {None, "relu", "relu6"}, optional
        As in :func:`batch_norm_train`: the activation fused into the same
        pass (``"relu6"``: ``min(max(0, .), 6)``); ``relu=True`` is
        ``activation="relu"``.
    residual : ndarray, optional
        An array of ``x``'s shape added before the ReLU.
    out : ndarray, optional
        A C-contiguous array of ``x``'s shape and dtype that receives ``y``;
        ``out=x`` works in place.

    Returns
    -------
    y : ndarray
        The output, of ``x``'s shape and dtype (``out`` if given).  An empty
        ``x`` gives an empty ``y``.

    Raises
    ------
    TypeError
        If an array has an unsupported dtype or an argument the wrong type.
    ValueError
        If ``axis`` is out of range, a per-channel array has the wrong shape,
        ``eps <= 0`` or ``out`` does not match ``x``.

    See Also
    --------
    batch_norm_train : normalisation with the batch's own statistics.

    Notes
    -----
    The affine is folded into two per-channel constants first, so the pass
    costs about what a copy of ``x`` costs.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)   # (N, C)
    >>> y = fastbn.batch_norm_infer(x, mean=[1.0, 0.0], var=[4.0, 1.0], eps=1e-12)
    >>> print(y)
    [[ 0. -2.]
     [ 1.  4.]]
    >>> print(fastbn.batch_norm_infer(x, [1.0, 0.0], [4.0, 1.0], eps=1e-12, relu=True))
    [[0. 0.]
     [1. 4.]]
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
                        virtual_batch_size=None, activation=None, beta=None):
    """Gradients of batch normalization.

    Parameters
    ----------
    dy : ndarray
        The gradient of the loss with respect to the forward output; of
        ``x``'s shape, float16, float32, float64 or bfloat16 (cast to
        ``x.dtype``).
    x : ndarray
        The forward input.
    mean, invstd : array_like of shape (C,), or (G, C) with ``virtual_batch_size``
        What the forward returned, or for ``training=False`` the running
        mean and ``1 / sqrt(running_var + eps)``.
    gamma : array_like of shape (C,), optional
        The scale of the forward (None: 1).
    axis : int, default 1
        The channel axis.
    y : ndarray, optional
        The forward output, when the forward fused an activation: the
        gradient flows where ``y > 0``.  Without it (and without a
        residual) the mask is recomputed from ``x`` and ``beta``.
    training : bool, default True
        True: the gradient through the batch statistics.  False: through
        frozen statistics, ``dx = dy' * gamma * invstd``.
    residual : bool, default False
        True when the forward fused a residual add: the residual's gradient
        is returned too.
    out : ndarray, optional
        A C-contiguous array of ``x``'s shape and dtype that receives ``dx``.
    comm : mpi4py communicator, optional
        With ``training=True``, all-reduce the two per-channel sums over the
        ranks (the gradient of synchronised batch norm).
    virtual_batch_size : int, optional
        As given to :func:`batch_norm_train`: the gradient of each ghost
        batch through its own statistics.
    activation : {None, "relu", "relu6"}, optional
        The forward's activation: the gradient flows where ``y > 0``
        (``"relu"``) or ``0 < y < 6`` (``"relu6"``), ``y`` the forward's
        output, given or recomputed from ``x``.  None with ``y`` given
        means ``"relu"``.
    beta : array_like of shape (C,), optional
        The forward's shift, for an activation without ``y``: the mask is
        then recomputed from ``x``, the statistics, ``gamma`` and ``beta``
        in the forward's own arithmetic, bit for bit the mask of its ``y``
        (so the forward's output need not be kept).  Pass zeros when the
        forward had no ``beta``.  Cast to ``x.dtype`` (float32 for half
        ``x``); ignored when ``y`` is given.

    Returns
    -------
    dx : ndarray
        The gradient with respect to ``x``, in ``x.dtype``.
    dgamma, dbeta : ndarray of shape (C,)
        ``sum(dy' * xhat)`` and ``sum(dy')`` (``dy'`` is ``dy`` masked by
        the ReLU), always returned, even when the forward had no gamma or
        beta; summed over the groups with ``virtual_batch_size``.
    dresidual : ndarray
        Only with ``residual=True``: the residual's gradient ``dy'``,
        written in the same pass.

    Raises
    ------
    TypeError
        If an array has an unsupported dtype or an argument the wrong type,
        or ``activation`` is given with neither ``y`` nor ``beta``.
    ValueError
        If a shape does not match ``x``, ``axis`` is out of range, a channel
        has fewer than 2 values in training, ``out`` does not match, or
        ``activation`` is given without ``y`` together with
        ``residual=True`` or (training) ``comm``, whose masks need ``y``.
    RuntimeError
        With ``comm``: on the ranks whose arguments were valid, when another
        rank's were not.

    See Also
    --------
    batch_norm_train : the forward pass.

    Notes
    -----
    The backward reads ``dy``, ``x`` (and ``y``) once for the two sums and
    once more for ``dx`` when a channel does not fit in cache.  Results are
    bitwise identical for every thread count.

    The mask from ``x`` (an activation, ``beta`` and no ``y``) gives
    bitwise the gradients of the call with ``y`` when ``mean``, ``invstd``,
    ``gamma`` and ``beta`` are those of the forward: for
    ``training=True`` what :func:`batch_norm_train` returned (for float32
    and the half types the batch mean is taken again from ``x`` with the
    forward's own arithmetic, since the returned mean is rounded); for
    ``training=False`` the statistics :func:`batch_norm_infer` used, with
    ``invstd = 1 / sqrt(var + eps)`` computed in float64 and cast to the
    per-channel dtype.  A residual or ``comm`` needs ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 2, 2)
    >>> y, mean, invstd = fastbn.batch_norm_train(x, relu=True)
    >>> dy = np.ones_like(y)
    >>> dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, invstd, y=y)
    >>> print(dbeta)
    [4. 4.]
    >>> print(np.round(dgamma, 3))
    [3.556 3.556]
    >>> dx.shape, dx.dtype
    ((4, 2, 2), dtype('float32'))

    The same gradients without keeping ``y``: the mask is recomputed from
    ``x`` and the forward's ``beta`` (zeros: the forward had none):

    >>> dx2, _, _ = fastbn.batch_norm_backward(dy, x, mean, invstd, activation="relu",
    ...                                         beta=np.zeros(2, np.float32))
    >>> print(np.array_equal(dx, dx2))
    True

    Without a ReLU a constant ``dy`` has no effect on ``x`` through the
    normalisation:

    >>> y, mean, invstd = fastbn.batch_norm_train(x)
    >>> dx, _, _ = fastbn.batch_norm_backward(dy, x, mean, invstd)
    >>> print(np.abs(dx).max() < 1e-6)
    True
    """
    k = None if virtual_batch_size is None else _ghost_k(virtual_batch_size, comm,
                                                          True)
    if comm is not None and training:
        return _run("BACKWARD", _backward, comm, dy, x, mean, invstd, gamma, axis, y,
                    training, residual, out, comm, k, None, None, activation, beta)
    return _backward(dy, x, mean, invstd, gamma, axis, y, training, residual, out, comm,
                     k, None, None, activation, beta)


def _backward(dy, x, mean, invstd, gamma, axis, y, training, residual, out, comm,
              k=None, r=None, d=None, activation=None, beta=None, mean_lo=None):
    """Body of batch_norm_backward and the layer's backward: over ghost
    batches of ``k`` samples (None: one group), with a renormalised
    forward's ``r`` and ``d`` (float64, ``(G, C)``) held constant when
    given; with an activation and no ``y``, the mask from ``x`` and the
    forward's ``beta`` (required then: zeros for a forward without one)
    and, in training, its ``mean_lo`` (``_train(..., want_lo=True)``'s, of
    ``mean``'s shape; None: the batch means of ``x`` are taken again, one
    more pass over ``x``).  With comm and training, call it through
    ``_run``."""
    x = as_data(x)
    outer, C, inner, a = view(x.shape, axis)
    dt = x.dtype
    sdt = stat_dtype(dt)  # per-channel arrays: float32 for half x
    G = 1 if k is None else _ghost.groups(x.shape, a, k)
    dy = like_x(dy, "dy", x)
    yv = None if y is None else like_x(y, "y", x)
    act = ((0 if yv is None else 1) if activation is None else
           _mask(activation, yv, beta, residual, comm if training else None))
    if k is None:
        mean = per_channel(mean, "mean", C, sdt, allow_none=False)
        invstd = per_channel(invstd, "invstd", C, sdt, allow_none=False)
        mean_lo = per_channel(mean_lo, "mean_lo", C, sdt)
    gamma = per_channel(gamma, "gamma", C, sdt)
    beta = per_channel(beta, "beta", C, sdt)
    if yv is not None or act == 0:
        beta = mean_lo = None  # (the mask comes from y, or there is none)
    elif not training:
        mean_lo = None  # (the inference forward's mean is mean itself)
    dx = output(out, x)
    if out is not None:
        no_partial_overlap(dx, "out", x, dy, yv)
    dz = np.empty(x.shape, dt) if residual else None
    training = bool(training)
    if r is not None:
        r = np.require(r, np.float64, ["C", "A"])
        d = np.require(d, np.float64, ["C", "A"])
    if comm is not None and training:
        dgamma, dbeta = _mpi().backward(comm, dy, x, yv, outer, C, inner, mean,
                                        invstd, gamma, dx, dz, _nthreads(), act)
    elif k is None:  # ordinary batch norm: one group
        if training and outer * inner < 2:
            raise ValueError(f"training needs at least 2 values per channel; x of "
                             f"shape {x.shape} has {outer * inner} (axis={axis})")
        dgamma, dbeta = _kernels.backward(dy, x, yv, act, 1, outer, C, inner, mean,
                                          invstd, gamma, beta, r, d, training, dx, dz,
                                          _nthreads(), mean_lo)
    elif G == 0:  # an empty batch in ghost batches
        if training:
            raise ValueError(f"training needs at least 2 values per channel; x of "
                             f"shape {x.shape} has none (axis={axis})")
        dgamma, dbeta = np.zeros(C, sdt), np.zeros(C, sdt)
    else:
        mean = _ghost.per_group(mean, "mean", G, C, sdt)
        invstd = _ghost.per_group(invstd, "invstd", G, C, sdt)
        if mean_lo is not None:
            mean_lo = _ghost.per_group(mean_lo, "mean_lo", G, C, sdt)
        n = (outer // G) * inner
        if training and n < 2:
            raise ValueError(f"training needs at least 2 values per channel; each "
                             f"ghost batch of {k} samples (x of shape {x.shape}, "
                             f"axis={axis}) has {n}")
        dgamma, dbeta = _kernels.backward(dy, x, yv, act, G, outer, C, inner, mean,
                                          invstd, gamma, beta, r, d, training, dx, dz,
                                          _nthreads(), mean_lo)
    if residual:
        return dx, dgamma, dbeta, dz
    return dx, dgamma, dbeta
