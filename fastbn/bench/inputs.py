"""Inputs of a workload, its float64 reference, and the comparison.

Every implementation is called once on these inputs and its result compared
with the reference before it is timed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import _reference as oracle
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
    return oracle.batch_norm_train(x, gamma, beta, axis=w.channel_axis, eps=EPS,
                                   relu=True)


def reference(w: Workload, inp: Inputs) -> Tuple[np.ndarray, ...]:
    """float64 reference outputs of a workload (fastbn._reference, the
    oracle of the test suite too).

    train: (y, mean, invstd); infer: (y,); backward: (dx, dgamma, dbeta).
    """
    if w.mode == "train":
        if inp.train_ref is not None:
            return inp.train_ref
        return ref_train(w, inp.x, inp.gamma, inp.beta)
    if w.mode == "infer":
        return (oracle.batch_norm_infer(inp.x, inp.running_mean, inp.running_var,
                                        inp.gamma, inp.beta, axis=w.channel_axis,
                                        eps=EPS, relu=True),)
    # backward with a fused ReLU: the mask from the forward's y
    return oracle.batch_norm_backward(inp.dy, inp.x, inp.mean, inp.invstd,
                                      inp.gamma, axis=w.channel_axis, y=inp.y)[:3]


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
