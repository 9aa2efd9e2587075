"""fastbn.sklearn.StandardScaler against scikit-learn's (issue 13).

On a (1,000,000 x 64) array (``--quick``: 200,000 x 64), float32 and
float64, without and with 1 % NaN, four operations are timed side by
side, interleaved round by round:

- ``fit``, ``transform`` (copy=True, the default), ``fit_transform``;
- ``partial_fit`` over the array in 10 row chunks (a fresh scaler).

Before timing, every fastbn result is checked against scikit-learn's on
the same data: ``mean_``, ``var_``, ``scale_`` and the transformed data
within relative 1e-5 (float32) or 1e-10 (float64), with an absolute
1e-6 / 1e-12 for transformed values near 0.  The ``transform`` and
``fit_transform`` rows also show the time of ``np.copy`` of the array (the
floor of any transform that returns a new array: a fresh array, whose pages
the OS zeroes when they are first written, one read and one write), and
the ``fit_transform`` rows that of ``fastbn.batch_norm_train(x, axis=-1)``
(the same arithmetic without scikit-learn's validation).

Needs scikit-learn; without it the part reports that it was skipped.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .impls import threads_name
from .timing import Impl, measure

SHAPE = (1_000_000, 64)
QUICK_SHAPE = (200_000, 64)
OPS = ("fit", "transform", "fit_transform", "partial_fit x10")
CHUNKS = 10
NAN_SHARE = 0.01
RTOL = {"float32": 1e-5, "float64": 1e-10}
ATOL = {"float32": 1e-6, "float64": 1e-12}


def target(dtype: str, nan: bool, op: str) -> Optional[float]:
    """The issue-13 speed-up target (scikit-learn time / fastbn time) of a
    row: float32 fit and fit_transform 10x (5x with NaN), transform 4x,
    partial_fit 5x; float64 5x (transform 4x)."""
    if op == "transform":
        return 4.0
    if op == "partial_fit x10":
        return 5.0
    if dtype == "float32" and not nan:
        return 10.0
    return 5.0


@dataclasses.dataclass
class ScalerRow:
    """One (dtype, NaN or not, operation): median seconds per call."""

    dtype: str
    nan: bool
    op: str
    fastbn: Optional[float]
    sklearn: Optional[float]
    status: str                 # "ok" or "FAILED: ..."
    error: Optional[float] = None   # worst relative error seen
    copy: Optional[float] = None    # np.copy of the array (transform rows)
    bn: Optional[float] = None      # fastbn.batch_norm_train(x, axis=-1)
    ratios: List[float] = dataclasses.field(default_factory=list)

    @property
    def speedup(self) -> Optional[float]:
        """scikit-learn / fastbn: the median of the ratios of the two in
        each round (they run side by side)."""
        if self.ratios:
            return statistics.median(self.ratios)
        if self.fastbn and self.sklearn:
            return self.sklearn / self.fastbn
        return None

    @property
    def target(self) -> Optional[float]:
        return target(self.dtype, self.nan, self.op)

    @property
    def met(self) -> Optional[bool]:
        s = self.speedup
        return None if s is None else s >= self.target

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")


@dataclasses.dataclass
class ScalerResult:
    shape: Tuple[int, int]
    threads: int
    rows: List[ScalerRow]
    skipped: str = ""
    seconds: float = 0.0
    versions: str = ""


def make_data(shape, dtype, nan: bool, seed: int = 13) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, p = shape
    x = rng.standard_normal(shape, dtype=np.float32 if dtype == "float32" else np.float64)
    x *= rng.uniform(0.5, 4, p).astype(x.dtype)
    x += rng.uniform(-20, 20, p).astype(x.dtype)
    if nan:
        x[rng.random(shape, dtype=np.float32) < NAN_SHARE] = np.nan
    return x


def _rel_error(a, b, rtol, atol) -> float:
    """The worst |a - b| / (atol/rtol + |b|) * rtol: <= rtol passes
    (NaN in the same places)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
        return float("inf")
    ok = ~na
    d = np.abs(a[ok] - b[ok]) / (atol / rtol + np.abs(b[ok]))
    return float(d.max(initial=0.0))


def verify(ours, ref, Y, R, dtype) -> Tuple[str, float]:
    """Compare fitted attributes and transformed data with scikit-learn's."""
    rtol, atol = RTOL[dtype], ATOL[dtype]
    worst, what = 0.0, ""
    for name in ("mean_", "var_", "scale_"):
        e = _rel_error(getattr(ours, name), getattr(ref, name), rtol, 0.0)
        if e > worst:
            worst, what = e, name
    if Y is not None:
        if Y.dtype != R.dtype:
            return "FAILED: dtype %s, scikit-learn %s" % (Y.dtype, R.dtype), float("inf")
        e = _rel_error(Y, R, rtol, atol)
        if e > worst:
            worst, what = e, "transformed data"
    if worst > rtol:
        return "FAILED: %s relative error %.2g > %.0g" % (what, worst, rtol), worst
    return "ok", worst


def run_scaler(fastbn, threads: int, rounds: int, *, quick: bool = False,
               pause: float = 0.01, progress=None) -> ScalerResult:
    """Check, then time, every (dtype, NaN, operation) row."""
    t0 = time.perf_counter()
    shape = QUICK_SHAPE if quick else SHAPE
    try:
        import sklearn
        from sklearn.preprocessing import StandardScaler as SkScaler

        from fastbn.sklearn import StandardScaler
    except ImportError as exc:
        return ScalerResult(shape, threads, [], skipped="scikit-learn is not "
                            "installed (pip install 'fastbn[sklearn]'): %s" % exc)
    cases = [(d, nan) for d in ("float32", "float64") for nan in (False, True)]
    if progress is not None:
        progress.part("scikit-learn", [1.0] * len(cases))
    say = progress or (lambda s: None)
    rows = []
    for dtype, nan in cases:
        if progress is not None:
            progress.start("%s %s" % (dtype, "1% NaN" if nan else "finite"))
        X = make_data(shape, dtype, nan)
        chunks = np.array_split(X, CHUNKS)
        # correctness first: every operation against scikit-learn's
        say("checking")
        ref = SkScaler().fit(X)
        R = ref.transform(X)
        ours = StandardScaler()
        with fastbn.num_threads(threads):
            Y = ours.fit_transform(X)
        checks = {"fit": verify(ours, ref, None, None, dtype),
                  "fit_transform": verify(ours, ref, Y, R, dtype)}
        with fastbn.num_threads(threads):
            Y = ours.fit(X).transform(X)
        checks["transform"] = verify(ours, ref, Y, R, dtype)
        ours_p, ref_p = StandardScaler(), SkScaler()
        with fastbn.num_threads(threads):
            for c in chunks:
                ours_p.partial_fit(c)
        for c in chunks:
            ref_p.partial_fit(c)
        checks["partial_fit x10"] = verify(ours_p, ref_p, None, None, dtype)
        del Y, R
        fitted = {"fastbn": StandardScaler().fit(X), "sklearn": SkScaler().fit(X)}
        cls = {"fastbn": StandardScaler, "sklearn": SkScaler}

        def op_fn(op, who):
            c = cls[who]
            if op == "fit":
                return lambda: c().fit(X)
            if op == "transform":
                s = fitted[who]
                return lambda: s.transform(X)
            if op == "fit_transform":
                return lambda: c().fit_transform(X)

            def partial():
                s = c()
                for ch in chunks:
                    s.partial_fit(ch)
                return s
            return partial

        for op in OPS:
            say(op)
            impls = [Impl("fastbn", "fastbn", op_fn(op, "fastbn"), threads=threads,
                          setup=lambda: fastbn.num_threads(threads)),
                     Impl("scikit-learn", "numpy", op_fn(op, "sklearn"))]
            if op in ("transform", "fit_transform"):
                impls.append(Impl("np.copy", "floor", lambda: np.copy(X)))
            if op == "fit_transform":
                impls.append(Impl("batch_norm_train", "fastbn",
                                  lambda: fastbn.batch_norm_train(X, axis=-1),
                                  threads=threads,
                                  setup=lambda: fastbn.num_threads(threads)))
            samples = measure(impls, rounds, pause=pause, progress=say)
            med = {k: statistics.median(v) for k, v in samples.items()}
            status, err = checks[op]
            rows.append(ScalerRow(
                dtype, nan, op, med["fastbn"], med["scikit-learn"], status, err,
                copy=med.get("np.copy"), bn=med.get("batch_norm_train"),
                ratios=[s / f for s, f in zip(samples["scikit-learn"],
                                              samples["fastbn"]) if f > 0]))
        del X, chunks, fitted, ref, ours, ours_p, ref_p
    return ScalerResult(shape, threads, rows, seconds=time.perf_counter() - t0,
                        versions="scikit-learn %s" % sklearn.__version__)


def _ms(s: Optional[float]) -> str:
    return "-" if s is None else "%.1f ms" % (s * 1e3)


def scaler_rows(res: ScalerResult):
    """(head, rows) of the table."""
    head = ["dtype", "data", "operation", "scikit-learn", "fastbn", "speed-up",
            "target", "met", "np.copy", "batch_norm_train", "check"]
    rows = []
    for r in res.rows:
        s = r.speedup
        rows.append([r.dtype, "1% NaN" if r.nan else "finite", r.op, _ms(r.sklearn),
                     _ms(r.fastbn), "-" if s is None else "%.1fx" % s,
                     ">= %gx" % r.target, "-" if r.met is None else
                     ("yes" if r.met else "NO"), _ms(r.copy), _ms(r.bn),
                     r.status if not r.status == "ok" or r.error is None else
                     "ok (%.0e)" % r.error])
    return head, rows


def scaler_notes(res: ScalerResult) -> List[str]:
    if res.skipped:
        return ["scikit-learn StandardScaler: skipped, " + res.skipped + "."]
    return [
        "scikit-learn StandardScaler (issue 13): fastbn.sklearn.StandardScaler "
        "(%s) against sklearn.preprocessing.StandardScaler (%s) on a (%s) "
        "array, C order, float32 and float64, finite and with 1%% NaN; the "
        "transform copies (copy=True); partial_fit x10 = a fresh scaler fed "
        "the array in 10 row chunks.  speed-up = scikit-learn time / fastbn "
        "time, the median of the ratios of the two in each round (they run "
        "side by side, interleaved).  np.copy (a new array: allocation, the "
        "OS zeroing its pages, one read and one write; the floor of any "
        "transform that returns a new array) is on the transform rows, and "
        "batch_norm_train (the same arithmetic, channels-last) on the "
        "fit_transform rows, for scale.  Every fastbn result was checked against scikit-learn's "
        "first (check column: worst relative error of mean_, var_, scale_ and "
        "the transformed data; limits 1e-5 float32, 1e-10 float64).  This "
        "part took %.0f s." % (threads_name(res.threads), res.versions,
                               " x ".join(map(str, res.shape)), res.seconds)]


def scaler_json(res: ScalerResult) -> Dict:
    return {"shape": list(res.shape), "threads": res.threads,
            "skipped": res.skipped, "seconds": res.seconds,
            "versions": res.versions,
            "rows": [dict(dataclasses.asdict(r), speedup=r.speedup, target=r.target,
                          met=r.met) for r in res.rows]}
