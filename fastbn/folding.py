"""Folding tools: fold a BatchNorm into the linear layer before it, or move
its scale into the layer after it.

Both work on PyTorch's weight layout: a dense weight is ``(out, in)`` and a
convolution weight ``(out, in, *kernel)`` (e.g. ``(out, in, kh, kw)``), so
``weight[o]`` is what produces output channel ``o`` and ``weight[:, i]`` is
what reads input channel ``i``.  Arithmetic is done in float64; results
have the weight's dtype.  Inputs are never modified.
"""
import numpy as np

from .layer import BatchNorm

__all__ = ["fold_into_linear", "absorb_scale"]


def _check_bn(bn):
    if not isinstance(bn, BatchNorm):
        raise TypeError(f"bn must be a fastbn.BatchNorm, got {type(bn).__name__}")


def _weight(w, name):
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        w = np.asarray(w)
    w = np.asarray(w)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {w.dtype}")
    if w.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions ((out, in) or "
                         f"(out, in, kh, kw)), got shape {w.shape}")
    return w


def _result_dtype(w):
    return w.dtype if w.dtype.kind == "f" else np.dtype(np.float64)


def fold_into_linear(weight, bias, bn):
    """Fold an inference-mode BatchNorm into the linear layer before it.

    For ``h = weight @ x + bias`` (dense) or a convolution followed by
    ``bn``, returns ``(w2, b2)`` such that ``w2 @ x + b2 == bn(h)`` in
    evaluation mode::

        s  = gamma / sqrt(running_var + eps)
        w2 = weight * s          (row o scaled by s[o])
        b2 = (bias - running_mean) * s + beta

    Parameters
    ----------
    weight : array_like
        The layer's weight, PyTorch's layout: ``(out, in)`` dense or
        ``(out, in, kh, kw)`` (any kernel rank) convolution, with
        ``out == bn.num_features``.
    bias : array_like of shape (out,) or None
        The layer's bias; None means 0.
    bn : BatchNorm
        The layer after it, with running statistics (its gamma/beta may be
        None: 1/0).

    Returns
    -------
    w2 : ndarray
        The folded weight, of ``weight``'s shape and dtype (float64 for an
        integer weight).
    b2 : ndarray of shape (out,)
        The folded bias (always an array).

    Raises
    ------
    TypeError
        If ``bn`` is not a :class:`BatchNorm` or the weight is not real.
    ValueError
        If the shapes do not match ``bn.num_features`` or ``bn`` has no
        running statistics.

    See Also
    --------
    absorb_scale : move the scale into the layer after a ReLU.

    Notes
    -----
    The arithmetic is in float64.  A fused ReLU (``bn.relu=True``) is not
    part of the fold: apply it after the folded layer.  The inputs are not
    modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> rng = np.random.default_rng(0)
    >>> W, b = rng.standard_normal((3, 5)), rng.standard_normal(3)
    >>> bn = fastbn.BatchNorm(3, dtype=np.float64)
    >>> _ = bn(rng.standard_normal((16, 5)) @ W.T + b)   # trains the statistics
    >>> bn = bn.eval()
    >>> W2, b2 = fastbn.fold_into_linear(W, b, bn)
    >>> x = rng.standard_normal((4, 5))
    >>> np.allclose(x @ W2.T + b2, bn(x @ W.T + b))
    True
    """
    _check_bn(bn)
    w = _weight(weight, "weight")
    out = w.shape[0]
    if out != bn.num_features:
        raise ValueError(f"weight has {out} output channels (axis 0 of shape "
                         f"{w.shape}) but bn has num_features={bn.num_features}")
    if not bn.track_running_stats:
        raise ValueError("fold_into_linear needs running statistics; bn was "
                         "created with track_running_stats=False")
    if bias is not None:
        b = np.asarray(bias)
        if b.dtype.kind not in "fiu":
            raise TypeError(f"bias must be a real array, got dtype {b.dtype}")
        if b.shape != (out,):
            raise ValueError(f"bias must have shape ({out},) (the output channels "
                             f"of weight), got {b.shape}")
        b = b.astype(np.float64)
    else:
        b = np.zeros(out)
    s = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    if bn.gamma is not None:
        s = s * bn.gamma.astype(np.float64)
    b2 = (b - bn.running_mean.astype(np.float64)) * s
    if bn.beta is not None:
        b2 = b2 + bn.beta.astype(np.float64)
    w2 = w.astype(np.float64) * s.reshape((out,) + (1,) * (w.ndim - 1))
    dt = _result_dtype(w)
    return w2.astype(dt), b2.astype(dt)


def absorb_scale(bn, next_weight):
    """Move a positive BatchNorm scale through a ReLU into the next layer.

    For ``g > 0``, ``relu(g*t + b) = g * relu(t + b/g)``.  So a BatchNorm
    with scale ``gamma > 0`` followed by a ReLU and a linear/conv layer with
    weight ``next_weight`` computes the same function as a BatchNorm without
    scale and with shift ``beta / gamma``, followed by the ReLU and a layer
    whose input channels are multiplied by gamma.  This is why TensorFlow
    suggests ``scale=False`` before a ReLU.

    Parameters
    ----------
    bn : BatchNorm
        The layer whose scale moves.
    next_weight : array_like
        The next layer's weight, ``(out, in)`` or ``(out, in, kh, kw)``,
        with ``in == bn.num_features`` (axis 1 is scaled).

    Returns
    -------
    bn2 : BatchNorm
        A new layer with the same configuration but ``scale=False``,
        ``beta2 = beta / gamma`` (no beta when ``bn`` has none), copies of
        the running statistics, ``num_batches_tracked`` and the mode.
    next_w2 : ndarray
        A new array of the weight's dtype: ``next_weight[:, i] * gamma[i]``.

    Raises
    ------
    ValueError
        If a channel has ``gamma <= 0`` or NaN (the message names the
        channels), the shapes do not match, or ``bn`` fuses a ReLU6.
    TypeError
        If ``bn`` is not a :class:`BatchNorm` or the weight is not real.

    See Also
    --------
    fold_into_linear : fold a BatchNorm into the layer before it.

    Notes
    -----
    The identity holds in evaluation mode (running statistics) and in
    training mode (the batch statistics do not depend on gamma), when the
    BatchNorm's output goes through a positively homogeneous activation
    (ReLU, fused or not; leaky ReLU; identity) straight into the next layer,
    without a residual add in between.  It does not hold for bounded
    activations (ReLU6, clamps), for ``gamma <= 0``, or when the output
    feeds a fixed readout or a sum; the user guide's folding page measures
    what dropping the scale costs there.  The next layer's bias is
    unchanged; a layer without scale is returned as a copy with a copy of
    the weight.  The inputs are not modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> rng = np.random.default_rng(0)
    >>> bn = fastbn.BatchNorm(4, relu=True, dtype=np.float64)
    >>> bn.gamma[:] = [0.5, 1.0, 2.0, 3.0]
    >>> bn.beta[:] = [0.1, -0.2, 0.3, 0.0]
    >>> W = rng.standard_normal((2, 4))
    >>> bn2, W2 = fastbn.absorb_scale(bn, W)
    >>> bn2.gamma is None
    True
    >>> h = rng.standard_normal((8, 4))
    >>> np.allclose(bn(h) @ W.T, bn2(h) @ W2.T)
    True
    >>> bn.gamma[0] = -1.0
    >>> fastbn.absorb_scale(bn, W)
    Traceback (most recent call last):
    ...
    ValueError: ...
    """
    _check_bn(bn)
    w = _weight(next_weight, "next_weight")
    C = bn.num_features
    if w.shape[1] != C:
        raise ValueError(f"next_weight has {w.shape[1]} input channels (axis 1 of "
                         f"shape {w.shape}) but bn has num_features={C}")
    bn2 = bn._copy_config(scale=False)
    bn2.training = bn.training
    if bn.track_running_stats:
        bn2.running_mean[...] = bn.running_mean
        bn2.running_var[...] = bn.running_var
        bn2.num_batches_tracked = bn.num_batches_tracked
    dt = _result_dtype(w)
    if bn.gamma is None:
        if bn.beta is not None:
            bn2.beta[...] = bn.beta
        return bn2, w.astype(dt, copy=True)
    if bn.activation == "relu6":
        raise ValueError("absorb_scale cannot move the scale past a fused ReLU6: "
                         "min(g*t, 6) = g*min(t, 6) holds for g = 1 only (the "
                         "clamp at 6 would move to 6*g); keep the scale in bn")
    g = bn.gamma.astype(np.float64)
    bad = np.flatnonzero(~(g > 0))
    if bad.size:
        shown = bad[:20].tolist()
        more = f" and {bad.size - 20} more" if bad.size > 20 else ""
        raise ValueError(f"absorb_scale needs gamma > 0 in every channel (the "
                         f"identity relu(g*t) = g*relu(t) holds for g > 0 only); "
                         f"gamma <= 0 or NaN in channel(s) {shown}{more}")
    if bn.beta is not None:
        bn2.beta[...] = bn.beta.astype(np.float64) / g
    w2 = w.astype(np.float64) * g.reshape((1, C) + (1,) * (w.ndim - 2))
    return bn2, w2.astype(dt)
