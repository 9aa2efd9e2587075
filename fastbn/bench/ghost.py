"""Ghost batches and batch renormalization (issue 14): their cost against
ordinary batch norm.

Each row times a variant and the ordinary call it replaces on the same
input, side by side in the same rounds (timing.measure), at the report's
thread count; the ratio is the median over the rounds of variant/ordinary
of the same round (paired, so a noisy neighbour hurts both alike).

- ghost batch norm, ``virtual_batch_size = N/8``, against ordinary batch
  norm on (256,64,28,28) float32 (target: <= 1.15x), the same in NHWC and
  for the backward (shown), and a TabNet-like (16384,64) in groups of 128
  rows, also against a Python loop of ordinary calls on each group's slice;
- batch renormalization: the layer's training forward with
  ``renorm=True`` against the same layer without it (target: <= 1.05x).

Every variant is verified first: each ghost batch must equal an ordinary
call on its slice bit for bit, and unclipped renormalization must equal
normalisation with the running statistics (float32 tolerance).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import List, Optional, Tuple

import numpy as np

from .. import _reference as oracle
from .timing import Impl, Result, fmt_time, measure

#: (label, shape, axis, k, mode, target): ghost rows (k = N/8 for the
#: standard shape), mode "train" or "backward"
GHOST_ROWS = [
    ("ghost train, k=N/8", (256, 64, 28, 28), 1, 32, "train", 1.15),
    ("ghost train NHWC, k=N/8", (256, 28, 28, 64), -1, 32, "train", None),
    ("ghost backward, k=N/8", (256, 64, 28, 28), 1, 32, "backward", None),
    ("ghost train TabNet, k=128", (16384, 64), 1, 128, "train", None),
]
QUICK_GHOST_ROWS = [
    ("ghost train, k=N/8", (64, 64, 28, 28), 1, 8, "train", 1.15),
    ("ghost train TabNet, k=128", (4096, 64), 1, 128, "train", None),
]
#: (label, shape, axis, target): renormalization rows
RENORM_ROWS = [
    ("renorm layer train", (32, 64, 56, 56), 1, 1.05),
    ("renorm layer train NHWC", (32, 56, 56, 64), -1, None),
]
QUICK_RENORM_ROWS = [("renorm layer train", (16, 64, 56, 56), 1, 1.05)]


@dataclasses.dataclass
class GhostRow:
    """One variant against the ordinary call (and optionally a Python loop
    over the groups)."""

    label: str
    shape: Tuple[int, ...]
    variant: Result
    base: Result
    target: Optional[float] = None
    loop: Optional[Result] = None

    def _ratio(self, other: Result) -> Optional[float]:
        a, b = self.variant.samples, other.samples
        if not a or not b or len(a) != len(b):
            return None
        return statistics.median(x / y for x, y in zip(a, b))

    @property
    def ratio(self) -> Optional[float]:
        """Median over the rounds of variant / ordinary."""
        return self._ratio(self.base)

    @property
    def loop_ratio(self) -> Optional[float]:
        """Median over the rounds of variant / Python loop of slices."""
        return None if self.loop is None else self._ratio(self.loop)

    @property
    def met(self) -> Optional[bool]:
        r = self.ratio
        if self.target is None or r is None:
            return None
        return r <= self.target

    @property
    def failed(self) -> bool:
        return any(r is not None and r.failed
                   for r in (self.variant, self.base, self.loop))


@dataclasses.dataclass
class GhostResult:
    threads: int
    rows: List[GhostRow]
    seconds: float


def _threads(fastbn, n):
    return lambda: fastbn.num_threads(n)


def _ghost_row(fastbn, label, shape, axis, k, mode, target, threads, rounds,
               pause, say) -> GhostRow:
    rng = np.random.default_rng(14)
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    g = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    y = np.empty_like(x)
    N = shape[0]
    status = "ok"
    # verification: every group equals an ordinary call on its slice
    yg, mg, sg = fastbn.batch_norm_train(x, g, b, axis=axis, virtual_batch_size=k)
    for i in range(N // k):
        sl = slice(i * k, (i + 1) * k)
        yi, mi, si = fastbn.batch_norm_train(x[sl], g, b, axis=axis)
        if not (np.array_equal(yg[sl], yi) and np.array_equal(mg[i], mi)
                and np.array_equal(sg[i], si)):
            status = "FAILED: group %d differs from an ordinary call" % i
            break
    setup = _threads(fastbn, threads)
    loop = None
    if mode == "train":
        impls = [
            Impl("variant", "fastbn", lambda: fastbn.batch_norm_train(
                x, g, b, axis=axis, out=y, virtual_batch_size=k), threads=threads,
                setup=setup),
            Impl("ordinary", "fastbn", lambda: fastbn.batch_norm_train(
                x, g, b, axis=axis, out=y), threads=threads, setup=setup)]
        if len(shape) == 2:  # a Python loop of ordinary calls, one per group
            def per_group():
                for i in range(N // k):
                    sl = slice(i * k, (i + 1) * k)
                    fastbn.batch_norm_train(x[sl], g, b, axis=axis, out=y[sl])
            impls.append(Impl("loop", "fastbn", per_group, threads=threads,
                              setup=setup))
    else:
        dy = rng.standard_normal(shape).astype(np.float32)
        dx = np.empty_like(x)
        _, m0, s0 = fastbn.batch_norm_train(x, g, b, axis=axis)
        impls = [
            Impl("variant", "fastbn", lambda: fastbn.batch_norm_backward(
                dy, x, mg, sg, g, axis=axis, out=dx, virtual_batch_size=k),
                threads=threads, setup=setup),
            Impl("ordinary", "fastbn", lambda: fastbn.batch_norm_backward(
                dy, x, m0, s0, g, axis=axis, out=dx), threads=threads, setup=setup)]
    samples = measure(impls, rounds, pause=pause, progress=say)
    res = {imp.name: Result(imp.name, imp.role, status if imp.name == "variant"
                            else "ok", samples=samples[imp.name], threads=threads)
           for imp in impls}
    return GhostRow(label, shape, res["variant"], res["ordinary"], target,
                    res.get("loop"))


def _renorm_row(fastbn, label, shape, axis, target, threads, rounds, pause,
                say) -> GhostRow:
    rng = np.random.default_rng(15)
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, C).astype(np.float32)

    def layer(**kw):
        bn = fastbn.BatchNorm(C, axis=axis, **kw)
        bn.running_mean[...] = rm
        bn.running_var[...] = rv
        return bn
    # verification: unclipped renorm normalises with the running statistics
    bn = layer(renorm=True)
    want = oracle.batch_norm_infer(x, rm, rv, bn.gamma, bn.beta, axis=axis)
    err = float(np.max(np.abs(bn(x) - want)))
    status = "ok" if err <= 1e-4 else "FAILED: error %.1e" % err
    clip = {"rmax": 3.0, "dmax": 5.0}  # the paper's final values
    rn, plain = layer(renorm=True, renorm_clipping=clip), layer()
    setup = _threads(fastbn, threads)
    impls = [Impl("variant", "fastbn", lambda: rn(x), threads=threads, setup=setup),
             Impl("ordinary", "fastbn", lambda: plain(x), threads=threads,
                  setup=setup)]
    samples = measure(impls, rounds, pause=pause, progress=say)
    return GhostRow(label, shape,
                    Result("variant", "fastbn", status, error=err,
                           samples=samples["variant"], threads=threads),
                    Result("ordinary", "fastbn", "ok", samples=samples["ordinary"],
                           threads=threads), target)


def run_ghost(fastbn, threads: int, rounds: int, *, quick: bool = False,
              pause: float = 0.01, progress=None) -> GhostResult:
    """Time every ghost and renormalization row; see the module docstring."""
    t0 = time.perf_counter()
    ghost = QUICK_GHOST_ROWS if quick else GHOST_ROWS
    renorm = QUICK_RENORM_ROWS if quick else RENORM_ROWS
    if progress is not None:
        progress.part("ghost/renorm", [float(np.prod(r[1])) for r in ghost] +
                      [float(np.prod(r[1])) for r in renorm])
    say = progress or (lambda s: None)
    rows = []
    for label, shape, axis, k, mode, target in ghost:
        if progress is not None:
            progress.start("%s %s" % (label, shape))
        rows.append(_ghost_row(fastbn, label, shape, axis, k, mode, target,
                               threads, rounds, pause, say))
    for label, shape, axis, target in renorm:
        if progress is not None:
            progress.start("%s %s" % (label, shape))
        rows.append(_renorm_row(fastbn, label, shape, axis, target, threads,
                                rounds, pause, say))
    return GhostResult(threads, rows, time.perf_counter() - t0)


def ghost_rows(res: GhostResult):
    """(head, rows) of the report's table."""
    head = ["row", "x", "variant median", "ordinary median", "variant/ordinary",
            "target", "met", "variant/loop of slices", "check"]
    rows = []
    for r in res.rows:
        ratio = r.ratio
        rows.append([r.label, "(%s)" % ",".join(map(str, r.shape)),
                     fmt_time(r.variant.median), fmt_time(r.base.median),
                     "-" if ratio is None else "%.3fx" % ratio,
                     "-" if r.target is None else "<= %.2fx" % r.target,
                     "-" if r.met is None else ("yes" if r.met else "NO"),
                     "-" if r.loop_ratio is None else "%.2fx" % r.loop_ratio,
                     r.variant.status])
    return head, rows


GHOST_NOTES = [
    "Ghost/renorm rows: float32, the report's thread count; variant/ordinary "
    "is the median over the rounds of the variant's time over the ordinary "
    "call's time in the same round.  Ghost rows time batch_norm_train (or "
    "batch_norm_backward) with virtual_batch_size=k against the same call "
    "without it, outputs preallocated; the TabNet row also against a Python "
    "loop of ordinary calls on each group's slice (what one parallel job for "
    "all groups saves).  Renorm rows time BatchNorm(renorm=True, "
    "renorm_clipping={'rmax': 3, 'dmax': 5}) against BatchNorm() in training "
    "mode, running statistics updated in both.",
]


def ghost_json(res: GhostResult) -> dict:
    def rj(r: Optional[Result]):
        if r is None:
            return None
        return {"status": r.status, "median": r.median, "min": r.best,
                "samples": list(r.samples), "threads": r.threads}
    return {"threads": res.threads, "seconds": res.seconds,
            "rows": [{"label": r.label, "shape": list(r.shape),
                      "ratio": r.ratio, "target": r.target, "met": r.met,
                      "loop_ratio": r.loop_ratio, "variant": rj(r.variant),
                      "ordinary": rj(r.base), "loop": rj(r.loop)}
                     for r in res.rows]}
