"""Inputs of a workload, the float64 NumPy reference, and the comparison.

Every implementation is called once on these inputs and its result compared
with the reference before it is timed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .workloads import Workload

EPS = 1e-5
#: Largest allowed error, relative to the largest reference value, per dtype.
TOLERANCE = {"float32": 2e-3, "float64": 1e-9}


@dataclasses.dataclass
class Inputs:
    """Arrays shared by every implementation (and every mode) of one array.

    ``train_ref`` is the float64 training forward (y, mean, invstd): the
    reference of the training mode, and where the backward's ``y``,
    ``mean`` and ``invstd`` come from.
    """

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    dy: Optional[np.ndarray] = None
    train_ref: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    y: Optional[np.ndarray] = None  # forward output, x.dtype
    mean: Optional[np.ndarray] = None  # batch mean, x.dtype
    invstd: Optional[np.ndarray] = None  # batch invstd, x.dtype


def bshape(w: Workload) -> Tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against x."""
    return tuple(w.channels if i == w.channel_axis else 1
                 for i in range(w.ndim))


def make_inputs(w: Workload, seed: int = 0, backward: Optional[bool] = None
                ) -> Inputs:
    """Random inputs (offset, scaled normal data) for a workload.

    With ``backward`` (default: when w is a backward workload) the inputs
    also hold dy and the forward's y, mean and invstd (from the float64
    training forward, kept as ``train_ref``): then one Inputs serves all
    three modes of the array.
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(w.dtype)
    c = w.channels
    x = rng.standard_normal(w.shape, dtype=np.float32).astype(dt)
    x *= 2.0
    x += 0.5
    inp = Inputs(x, gamma=rng.uniform(0.5, 1.5, c).astype(dt),
                 beta=rng.normal(0.0, 0.5, c).astype(dt),
                 running_mean=rng.normal(0.5, 0.1, c).astype(dt),
                 running_var=rng.uniform(3.0, 5.0, c).astype(dt))
    if backward if backward is not None else w.mode == "backward":
        inp.train_ref = ref_train(w, inp.x, inp.gamma, inp.beta)
        y64, mean64, invstd64 = inp.train_ref
        inp.y, inp.mean, inp.invstd = (y64.astype(dt), mean64.astype(dt),
                                       invstd64.astype(dt))
        inp.dy = rng.standard_normal(w.shape, dtype=np.float32).astype(dt)
    return inp


def ref_train(w: Workload, x, gamma, beta):
    """float64 training forward + ReLU: (y, mean, invstd)."""
    b = bshape(w)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=w.reduce_axes)
    x64 -= mean.reshape(b)
    var = np.square(x64).mean(axis=w.reduce_axes)
    invstd = 1.0 / np.sqrt(var + EPS)
    x64 *= (invstd * gamma).reshape(b)
    x64 += beta.astype(np.float64).reshape(b)
    np.maximum(x64, 0.0, out=x64)
    return x64, mean, invstd


def reference(w: Workload, inp: Inputs) -> Tuple[np.ndarray, ...]:
    """float64 NumPy reference outputs of a workload.

    train: (y, mean, invstd); infer: (y,); backward: (dx, dgamma, dbeta).
    """
    b = bshape(w)
    f64 = np.float64
    if w.mode == "train":
        if inp.train_ref is not None:
            return inp.train_ref
        return ref_train(w, inp.x, inp.gamma, inp.beta)
    if w.mode == "infer":
        a = inp.gamma.astype(f64) / np.sqrt(inp.running_var.astype(f64) + EPS)
        y = inp.x.astype(f64)
        y -= inp.running_mean.astype(f64).reshape(b)
        y *= a.reshape(b)
        y += inp.beta.astype(f64).reshape(b)
        return (np.maximum(y, 0.0, out=y),)
    # backward with a fused ReLU: dy' = dy * (y > 0)
    g = inp.dy.astype(f64)
    g *= inp.y > 0
    invstd = inp.invstd.astype(f64)
    xhat = inp.x.astype(f64)
    xhat -= inp.mean.astype(f64).reshape(b)
    xhat *= invstd.reshape(b)
    dbeta = g.sum(axis=w.reduce_axes)
    dgamma = (g * xhat).sum(axis=w.reduce_axes)
    n = w.count
    k = inp.gamma.astype(f64) * invstd
    xhat *= dgamma.reshape(b) / n
    g -= dbeta.reshape(b) / n
    g -= xhat
    g *= k.reshape(b)
    return g, dgamma, dbeta


def compare(outputs: Sequence[np.ndarray], ref: Sequence[np.ndarray],
            dtype: str) -> Tuple[bool, float, str]:
    """Check outputs against the reference (pairwise, as many as given).

    Returns (ok, worst relative error, message).  The error of each array
    is max |out - ref| / max |ref|.
    """
    tol = TOLERANCE[dtype]
    worst = 0.0
    for i, (out, r) in enumerate(zip(outputs, ref)):
        out = np.asarray(out)
        if out.shape != r.shape:
            return False, math.inf, "output %d has shape %s, expected %s" % (
                i, out.shape, r.shape)
        if not np.all(np.isfinite(out)):
            return False, math.inf, "output %d has NaN or Inf" % i
        scale = max(float(np.max(np.abs(r))), 1e-30)
        diff = out.astype(np.float64)
        diff -= r
        err = float(max(diff.max(), -diff.min())) / scale
        worst = max(worst, err)
        if not err <= tol:
            return False, err, "output %d: relative error %.2g > %.0g" % (
                i, err, tol)
    return True, worst, "ok"
