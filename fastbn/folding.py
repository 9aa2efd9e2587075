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

    For ``h = weight @ x + bias`` (dense, ``weight`` of shape ``(out, in)``)
    or a convolution (``weight`` of shape ``(out, in, kh, kw)``, any kernel
    rank) followed by ``bn`` with ``bn.num_features == out``, returns
    ``(w2, b2)`` such that ``w2 @ x + b2 == bn(h)`` in eval mode:

        s  = gamma / sqrt(running_var + eps)
        w2 = weight * s   (row o scaled by s[o])
        b2 = (bias - running_mean) * s + beta

    ``bias=None`` means no bias (0); ``bn``'s gamma/beta may be None (1/0).
    The running statistics are used, so ``bn`` must track them.  A fused
    ReLU (``bn.relu=True``) is not part of the fold: apply it after the
    folded layer.  Returns new arrays of the weight's dtype (``b2`` always
    an array); the inputs are not modified.
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
    whose input channels (axis 1 of ``(out, in)`` or ``(out, in, kh, kw)``)
    are multiplied by gamma.  This is why TensorFlow suggests
    ``scale=False`` before a ReLU.

    Returns ``(bn2, next_w2)``: ``bn2`` is a new ``BatchNorm`` with the same
    configuration but ``scale=False``, ``beta2 = beta / gamma`` (or no beta
    when ``bn`` has none), copies of the running statistics,
    ``num_batches_tracked`` and the training/eval mode; ``next_w2`` a new
    array of the weight's dtype.  The identity holds in eval mode (running
    statistics) and in training mode (the batch statistics do not depend on
    gamma).  The next layer's bias is unchanged.

    Valid when the BatchNorm's output goes through a positively homogeneous
    activation (ReLU, fused or not; leaky ReLU; identity) straight into the
    next layer, without a residual add in between.  A channel with
    ``gamma <= 0`` (or NaN) raises ``ValueError`` naming the channels.  A
    layer without scale is returned as a copy with an unchanged copy of the
    weight.  The inputs are not modified.
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
