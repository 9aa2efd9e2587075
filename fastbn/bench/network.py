"""A network step written in NumPy (issue 10): a ResNet basic block.

Forward: 3x3 convolution (im2col + matmul), batch norm + ReLU, 3x3
convolution, batch norm, residual add + ReLU; then the backward of all of
it (weight, scale, shift and input gradients).  Activations are
channels-last (N, H, W, C): the matmul of the im2col columns with the
weights gives that layout directly, so batch norm runs with ``axis=-1``.

The same step runs with two batch norms:

- fastbn: ``batch_norm_train`` with the ReLU (and the residual add) fused,
  ``batch_norm_backward`` with ``y=`` (and ``residual=True``), at the
  default thread count and at 1 thread;
- NumPy, written as users write it (``x.mean``, ``x.var``, whole-array
  expressions, the textbook backward).

Both are checked against the float64 step (batch norm by fastbn's float64
oracle, fastbn._reference),
then timed, interleaved, with NumPy's BLAS at its default thread count:
every batch norm follows a matmul, as in a real network.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import _reference as oracle
from .impls import threads_name
from .inputs import EPS, TOLERANCE
from .timing import Result

#: (N, H, W, C) of the block's input: ResNet-18/34 stage 2 at batch 16.
SHAPE = (16, 28, 28, 64)
QUICK_SHAPE = (8, 28, 28, 64)
AXES = (0, 1, 2)


def im2col(x: np.ndarray) -> np.ndarray:
    """The (N*H*W, 9*C) columns of a 3x3 convolution with padding 1 of a
    channels-last x, ordered (kh, kw, c)."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, h, w, 3, 3, c), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = xp[:, i:i + h, j:j + w, :]
    return cols.reshape(n * h * w, 9 * c)


def col2im(dcols: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """The input gradient from the gradient of im2col's columns."""
    n, h, w, c = shape
    d = dcols.reshape(n, h, w, 3, 3, c)
    dxp = np.zeros((n, h + 2, w + 2, c), dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + h, j:j + w, :] += d[:, :, :, i, j, :]
    return np.ascontiguousarray(dxp[:, 1:-1, 1:-1, :])


class NumpyBN:
    """Batch norm (+ residual) + ReLU over axes (0, 1, 2) as NumPy users
    write it.  ``seconds`` accumulates the time spent in it."""

    name = "NumPy batch norm"

    def __init__(self):
        self.seconds = 0.0

    def forward(self, x, gamma, beta, residual=None):
        t0 = time.perf_counter()
        mean = x.mean(axis=AXES)
        var = x.var(axis=AXES)
        invstd = 1.0 / np.sqrt(var + EPS)
        xhat = (x - mean) * invstd
        y = gamma * xhat + beta
        if residual is not None:
            y = y + residual
        y = np.maximum(y, 0)
        self.seconds += time.perf_counter() - t0
        return y, (xhat, invstd, y)

    def backward(self, dy, cache, gamma, residual=False):
        t0 = time.perf_counter()
        xhat, invstd, y = cache
        n = y.size // y.shape[-1]
        g = dy * (y > 0)
        dbeta = g.sum(axis=AXES)
        dgamma = (g * xhat).sum(axis=AXES)
        dx = gamma * invstd / n * (n * g - dbeta - xhat * dgamma)
        self.seconds += time.perf_counter() - t0
        return (dx, dgamma, dbeta, g) if residual else (dx, dgamma, dbeta)


class ReferenceBN:
    """The float64 oracle (fastbn._reference) as the block's batch norm:
    the reference step."""

    def forward(self, x, gamma, beta, residual=None):
        y, mean, invstd = oracle.batch_norm_train(x, gamma, beta, axis=-1, eps=EPS,
                                                  relu=True, residual=residual)
        return y, (x, mean, invstd, y)

    def backward(self, dy, cache, gamma, residual=False):
        x, mean, invstd, y = cache
        res = oracle.batch_norm_backward(dy, x, mean, invstd, gamma, axis=-1, y=y)
        return res if residual else res[:3]


class FastbnBN:
    """fastbn's fused batch norm (+ residual) + ReLU, channels-last."""

    name = "fastbn"

    def __init__(self, fastbn):
        self.fastbn = fastbn
        self.seconds = 0.0

    def forward(self, x, gamma, beta, residual=None):
        t0 = time.perf_counter()
        y, mean, invstd = self.fastbn.batch_norm_train(
            x, gamma, beta, axis=-1, eps=EPS, relu=True, residual=residual)
        self.seconds += time.perf_counter() - t0
        return y, (x, mean, invstd, y)

    def backward(self, dy, cache, gamma, residual=False):
        t0 = time.perf_counter()
        x, mean, invstd, y = cache
        out = self.fastbn.batch_norm_backward(dy, x, mean, invstd, gamma,
                                              axis=-1, y=y, residual=residual)
        self.seconds += time.perf_counter() - t0
        return out


def make_block(shape: Tuple[int, ...], dtype=np.float32, seed: int = 0
               ) -> Dict[str, np.ndarray]:
    """Input, weights (He initialisation), BN parameters and the output
    gradient of one block."""
    rng = np.random.default_rng(seed)
    c = shape[-1]

    def weight():
        return rng.standard_normal((9 * c, c)) * np.sqrt(2.0 / (9 * c))
    arrays = dict(x=rng.standard_normal(shape), w1=weight(), w2=weight(),
                  g1=rng.uniform(0.5, 1.5, c), b1=rng.normal(0, 0.1, c),
                  g2=rng.uniform(0.5, 1.5, c), b2=rng.normal(0, 0.1, c),
                  dout=rng.standard_normal(shape))
    return {k: v.astype(dtype) for k, v in arrays.items()}


def block_step(p: Dict[str, np.ndarray], bn) -> Dict[str, np.ndarray]:
    """One forward and backward step of the basic block; the output and
    every gradient."""
    x = p["x"]
    shape = x.shape
    c = shape[-1]
    cols1 = im2col(x)
    c1 = (cols1 @ p["w1"]).reshape(shape)
    a1, cache1 = bn.forward(c1, p["g1"], p["b1"])
    cols2 = im2col(a1)
    c2 = (cols2 @ p["w2"]).reshape(shape)
    y, cache2 = bn.forward(c2, p["g2"], p["b2"], residual=x)
    # backward
    dc2, dg2, db2, dres = bn.backward(p["dout"], cache2, p["g2"],
                                      residual=True)
    dc2 = dc2.reshape(-1, c)
    dw2 = cols2.T @ dc2
    da1 = col2im(dc2 @ p["w2"].T, shape)
    dc1, dg1, db1 = bn.backward(da1, cache1, p["g1"])
    dc1 = dc1.reshape(-1, c)
    dw1 = cols1.T @ dc1
    dx = col2im(dc1 @ p["w1"].T, shape) + dres
    return dict(y=y, dx=dx, dw1=dw1, dw2=dw2, dgamma1=dg1, dbeta1=db1,
                dgamma2=dg2, dbeta2=db2)


def compare_step(out: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]
                 ) -> Tuple[bool, float, str]:
    """Largest error of every output and gradient, relative to the largest
    reference value of each; ok within the float32 tolerance."""
    worst, name = 0.0, ""
    for k, r in ref.items():
        scale = max(float(np.max(np.abs(r))), 1e-30)
        o = np.asarray(out[k], np.float64)
        err = float(np.max(np.abs(o - r))) / scale if np.all(
            np.isfinite(o)) else float("inf")
        if err > worst or not name:
            worst, name = err, k
    tol = TOLERANCE["float32"]
    ok = worst <= tol
    return ok, worst, "ok" if ok else "%s: relative error %.2g > %.0g" % (
        name, worst, tol)


@dataclasses.dataclass
class NetworkVariant:
    """One way to run the step: its step times and the time spent in batch
    norm inside each step (Result.samples, seconds)."""

    name: str
    threads: Optional[int]  # fastbn's thread count; None for NumPy BN
    step: Result
    bn: Result


@dataclasses.dataclass
class NetworkResult:
    shape: Tuple[int, ...]
    threads: int
    variants: List[NetworkVariant]
    seconds: float = 0.0

    def get(self, name: str) -> Optional[NetworkVariant]:
        for v in self.variants:
            if v.name == name:
                return v
        return None

    def ratio(self, a: str, b: str, part: str = "step") -> Optional[float]:
        """Step (or batch-norm part) time of variant a / that of variant b:
        the median over rounds of the ratio within each round.  The
        variants of a round run one after the other, so pairing them takes
        out the slow drifts of a shared machine that separate medians keep
        (seen here: the same step at 78 ms in one minute, 116 in another)."""
        va, vb = self.get(a), self.get(b)
        if va is None or vb is None:
            return None
        sa, sb = getattr(va, part).samples, getattr(vb, part).samples
        pairs = [x / y for x, y in zip(sa, sb) if y > 0]
        if not pairs or len(sa) != len(sb):
            return None
        return statistics.median(pairs)

    @property
    def names(self) -> Tuple[str, str, str]:
        """(fastbn at N threads, fastbn at 1 thread, NumPy batch norm)."""
        return ("fastbn (%s)" % threads_name(self.threads),
                "fastbn (1 thread)", NumpyBN.name)

    def targets(self) -> List[Tuple[str, Optional[float], str,
                                    Optional[bool]]]:
        """[(what, ratio, target text, met)] of issue 10."""
        many, one, numpy_bn = self.names
        out = []
        if self.threads > 1:
            r = self.ratio(many, one)
            out.append(("fastbn step, %s / 1 thread" % threads_name(
                self.threads), r, "<= 1.0x", None if r is None else r <= 1.0))
        r = self.ratio(many, numpy_bn)
        out.append(("fastbn step (%s) / NumPy-BN step" % threads_name(
            self.threads), r, "< 1.0x", None if r is None else r < 1.0))
        return out


def run_network(fastbn, threads: int, rounds: int, *,
                shape: Tuple[int, ...] = SHAPE, pause: float = 0.01,
                progress=None) -> NetworkResult:
    """Check the fastbn and NumPy-BN steps against the float64 step, then
    time them interleaved, `rounds` steps each."""
    t0 = time.perf_counter()
    counts = sorted({1, threads}, reverse=True)
    if progress is not None:
        progress.part("network step", [1.0])
        progress.start("ResNet basic block %s" % (shape,))
    say = progress or (lambda s: None)
    say("float64 reference step")
    ref = block_step(make_block(shape, np.float64), ReferenceBN())
    p = make_block(shape, np.float32)
    variants = [("fastbn (%s)" % threads_name(t), t, FastbnBN(fastbn))
                for t in counts] + [(NumpyBN.name, None, NumpyBN())]

    def run(threads_, bn):
        if threads_ is None:
            return block_step(p, bn)
        with fastbn.num_threads(threads_):
            return block_step(p, bn)

    status = {}
    for name, t, bn in variants:
        say("checking %s" % name)
        ok, err, msg = compare_step(run(t, bn), ref)
        status[name] = ("ok" if ok else "FAILED: " + msg, err)
    steps = {name: [] for name, _, _ in variants}
    bns = {name: [] for name, _, _ in variants}
    for r in range(rounds):
        say("round %d/%d" % (r + 1, rounds))
        k = r % len(variants)
        for name, t, bn in variants[k:] + variants[:k]:
            bn.seconds = 0.0
            s0 = time.perf_counter()
            run(t, bn)
            steps[name].append(time.perf_counter() - s0)
            bns[name].append(bn.seconds)
            time.sleep(pause)
    out = [NetworkVariant(name, t,
                          Result(name, "step", status[name][0],
                                 status[name][1], steps[name], t),
                          Result(name, "bn", status[name][0],
                                 status[name][1], bns[name], t))
           for name, t, _ in variants]
    return NetworkResult(tuple(shape), threads, out,
                         time.perf_counter() - t0)
