"""Running one workload (verify every implementation, then time them side
by side) and the ratios derived from its results.

Every ratio to the floor uses the floor of the row's thread count
(:meth:`WorkloadResult.floor`): the faster of the 1-thread copy and the
N-thread copy for an N-thread row, the 1-thread copy for a 1-thread row.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .floor import select_floor
from .impls import call_once, check_result
from .timing import Impl, Result, measure
from .workloads import Workload


@dataclasses.dataclass
class WorkloadResult:
    """All results of one workload, with derived ratios.

    ``threads`` is the run's thread count N: the thread count of rows whose
    implementation does not control threads (NumPy), whose ratios use the
    N-thread floor (the machine's floor).
    """

    workload: Workload
    results: List[Result]
    threads: int
    note: str = ""

    def get(self, name: str) -> Optional[Result]:
        for r in self.results:
            if r.impl == name:
                return r
        return None

    def find(self, role: str, threads: Optional[int] = None
             ) -> Optional[Result]:
        """The first result of `role` at `threads` threads (any if None)."""
        for r in self.results:
            if r.role == role and (threads is None or r.threads == threads):
                return r
        return None

    def row_threads(self, r: Result) -> int:
        return r.threads if r.threads is not None else self.threads

    def floor(self, threads: int, stat: str = "median"
              ) -> Tuple[Optional[float], str]:
        """(floor time, which copy) for `threads` threads; `stat` is
        "median" or "best" (the minimum)."""
        single = self.find("floor", 1)
        team = self.find("floor", threads) if threads > 1 else None
        return select_floor(getattr(single, stat) if single else None,
                            getattr(team, stat) if team else None)

    def ratio(self, r: Result) -> Optional[float]:
        """Median time / the floor at the row's thread count."""
        f = self.floor(self.row_threads(r))[0]
        return r.median / f if (f and r.median is not None) else None

    def ratio_min(self, r: Result) -> Optional[float]:
        """Minimum time / the floor's minimum time (less sensitive to a busy
        machine than the medians)."""
        f = self.floor(self.row_threads(r), "best")[0]
        return r.best / f if (f and r.best is not None) else None

    def speedup(self, r: Result) -> Optional[float]:
        """NumPy (as users write it) time / this time."""
        n = self.find("numpy")
        if n is None or not n.median or not r.median:
            return None
        return n.median / r.median

    def gbps(self, r: Result) -> Optional[float]:
        """Achieved GB/s, counting the bytes the operation must move (the
        copy's bytes for the copies)."""
        if not r.median:
            return None
        b = (self.workload.floor_bytes if r.role == "floor"
             else self.workload.min_bytes)
        return b / r.median / 1e9

    def best_other(self, threads: Optional[int] = None) -> Optional[Result]:
        """The fastest verified implementation that is neither fastbn nor a
        copy (at `threads` threads, or any; NumPy rows always count)."""
        others = [r for r in self.results if r.role not in ("fastbn", "floor")
                  and r.ok and r.median is not None and
                  (threads is None or r.threads in (None, threads))]
        return min(others, key=lambda r: r.median) if others else None

    def fastbn_vs(self, role: str, threads: int, stat: str = "median"
                  ) -> Optional[float]:
        """fastbn's time / the time of `role` ("eager", "compile") at the
        same thread count; > 1 is a loss."""
        fb, other = self.find("fastbn", threads), self.find(role, threads)
        if fb is None or other is None or not other.ok:
            return None
        a, b = getattr(fb, stat), getattr(other, stat)
        return a / b if (a is not None and b) else None

    def fastbn_over_floor(self, threads: int) -> Optional[float]:
        """fastbn's median time / the floor at `threads` threads."""
        fb = self.find("fastbn", threads)
        return self.ratio(fb) if fb is not None else None


def _equal(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def verify_all(w: Workload, impls: Sequence[Impl], ref,
               progress: Callable[[str], None] = lambda s: None
               ) -> Tuple[List[Result], List[Impl]]:
    """Call every implementation once and check it against `ref`.

    A result bitwise equal to an already verified result of the same role
    (the same implementation at another thread count) is accepted without
    comparing again.  Returns the results (status, error) and the
    implementations to time: every one that ran, including wrong ones
    (shown as FAILED); optional ones that raise are skipped.
    """
    results, timed = [], []
    verified: Dict[str, Tuple[tuple, float]] = {}
    for i, imp in enumerate(impls):
        progress("verifying %s (%d/%d)" % (imp.name, i + 1, len(impls)))
        t0 = time.perf_counter()
        value, msg = call_once(imp)
        raised = msg is not None
        if imp.role == "compile" and not raised:
            progress("%s: first call %.1f s" % (imp.name,
                                               time.perf_counter() - t0))
        if raised:
            ok, err = False, math.inf
            if imp.optional:
                results.append(Result(imp.name, imp.role, "skipped: " + msg,
                                      threads=imp.threads))
                continue
        else:
            outs = None if imp.check else imp.outputs(value)
            prev = verified.get(imp.role)
            if prev is not None and outs is not None and _equal(prev[0],
                                                                outs):
                ok, err, msg = True, prev[1], "ok"
            else:
                ok, err, msg = check_result(imp, w, ref, value)
                if ok and outs is not None:
                    verified.setdefault(imp.role, (outs, err))
        results.append(Result(imp.name, imp.role,
                              "ok" if ok else "FAILED: " + msg,
                              None if err == math.inf else err,
                              threads=imp.threads))
        if not raised:  # wrong numbers are still timed
            timed.append(imp)
    return results, timed


def run_workload(w: Workload, impls: Sequence[Impl], ref, rounds: int,
                 threads: int, *, pause: float = 0.01,
                 min_sample: float = 0.002,
                 progress: Callable[[str], None] = lambda s: None
                 ) -> WorkloadResult:
    """Verify every implementation, then time the ones that ran."""
    results, timed = verify_all(w, impls, ref, progress)
    samples = measure(timed, rounds, pause=pause, min_sample=min_sample,
                      progress=progress)
    for res in results:
        res.samples = samples.get(res.impl, [])
    return WorkloadResult(w, results, threads)
