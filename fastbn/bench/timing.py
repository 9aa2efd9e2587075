"""Timing: implementations ready to call, interleaved sampling, statistics.

An :class:`Impl` is one implementation of one workload (a closure over its
inputs and outputs) with the thread count it runs at.  :func:`measure`
times several of them side by side, round by round, so that a noisy
neighbour on a shared machine hurts all of them alike.  A :class:`Result`
holds one implementation's verification status and samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import time
from typing import (Any, Callable, ContextManager, Dict, List, Optional,
                    Sequence, Tuple)

import numpy as np


@dataclasses.dataclass
class Impl:
    """One implementation of a workload, ready to call.

    ``fn()`` does the work; ``to_numpy(result)`` turns its result into a
    tuple of NumPy arrays in the reference's order (used only to verify).
    ``role`` is one of "fastbn", "numpy", "tuned", "floor", "eager",
    "compile".  ``threads`` is the thread count it runs at (None: not
    controlled, e.g. NumPy's single-threaded ufuncs); ``setup()`` returns
    a context manager that sets it (entered around every sample).
    ``check`` replaces the comparison with the reference (the copies).
    ``optional`` implementations that raise are reported as skipped
    (torch.compile without a compiler), not as failures.
    """

    name: str
    role: str
    fn: Callable[[], Any]
    to_numpy: Optional[Callable[[Any], Tuple[np.ndarray, ...]]] = None
    threads: Optional[int] = None
    setup: Callable[[], ContextManager] = contextlib.nullcontext
    optional: bool = False
    check: Optional[Callable[[Any], Tuple[bool, float, str]]] = None

    def outputs(self, result) -> Tuple[np.ndarray, ...]:
        """The result as a tuple of NumPy arrays."""
        if self.to_numpy is not None:
            return self.to_numpy(result)
        if isinstance(result, np.ndarray):
            return (result,)
        return tuple(np.asarray(r) for r in result)


def _run(fn: Callable[[], Any], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def measure(impls: Sequence[Impl], rounds: int, *, min_sample: float = 0.002,
            pause: float = 0.01,
            progress: Callable[[str], None] = lambda s: None
            ) -> Dict[str, List[float]]:
    """Time implementations side by side; seconds per call, one list each.

    After a warm-up call, each implementation is calibrated so that a
    sample (``number`` calls) takes at least `min_sample` seconds.  Then,
    in each of `rounds` rounds, every implementation takes one sample, in
    an order rotated from round to round.  `pause` seconds of sleep
    between samples let the OpenMP threads of the previous implementation
    stop spinning (libgomp's idle threads spin for milliseconds after a
    parallel region; they would steal a core on a 2-core machine).  The
    garbage collector is off while timing.
    """
    numbers = {}
    for imp in impls:
        with imp.setup():
            imp.fn()  # warm-up
            t = _run(imp.fn, 1)
        numbers[imp.name] = max(1, min(100000, math.ceil(min_sample /
                                                         max(t, 1e-9))))
    samples: Dict[str, List[float]] = {imp.name: [] for imp in impls}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            progress("round %d/%d" % (r + 1, rounds))
            k = r % max(1, len(impls))
            for imp in list(impls[k:]) + list(impls[:k]):
                n = numbers[imp.name]
                with imp.setup():
                    t = _run(imp.fn, n)
                samples[imp.name].append(t / n)
                if pause:
                    time.sleep(pause)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def percentile(samples: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100) of samples, linear interpolation
    between order statistics (NumPy's default); None if empty."""
    if not samples:
        return None
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclasses.dataclass
class Result:
    """Verification and timing of one implementation on one workload."""

    impl: str
    role: str
    status: str  # "ok", "FAILED: ..." or "skipped: ..."
    error: Optional[float] = None
    samples: List[float] = dataclasses.field(default_factory=list)
    threads: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    @property
    def best(self) -> Optional[float]:
        return min(self.samples) if self.samples else None

    @property
    def p90(self) -> Optional[float]:
        return percentile(self.samples, 90)


def fmt_time(seconds: Optional[float]) -> str:
    """'12.3 us' below a millisecond, '1.234 ms' above."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return "%.1f us" % (seconds * 1e6)
    return "%.3f ms" % (seconds * 1e3)
