"""The floor: a copy of the same bytes on the same number of threads.

Batch normalization is memory-bound, so every time is compared with the
time of copying x's bytes (one read and one write).  One core cannot
saturate the memory bus, so a copy on one thread is not the floor of a
kernel running on N threads: the floor for N threads is ``np.copyto`` of N
slices of the array copied on N threads at once (N - 1 persistent Python
worker threads and the caller; np.copyto releases the GIL while it copies,
which :func:`copyto_releases_gil` checks).  Waking the workers costs some
microseconds per call, so on small arrays one thread copies faster: the
floor reported for N threads is the faster of the N-thread copy and a
single np.copyto (:func:`select_floor`).  For 1 thread it is the single
np.copyto.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .timing import Impl

#: Slices of the N-thread copy start at multiples of this many bytes.
SLICE_ALIGN = 4096


def split_bounds(size: int, itemsize: int, n: int) -> List[int]:
    """Element offsets splitting `size` elements into `n` contiguous slices
    of nearly equal size, each starting at a multiple of SLICE_ALIGN bytes
    (n + 1 offsets, from 0 to size; slices may be empty for tiny arrays)."""
    unit = max(1, SLICE_ALIGN // itemsize)
    bounds = [min(size, (size * i // n) // unit * unit) for i in range(n)]
    return bounds + [size]


class CopyTeam:
    """N - 1 persistent worker threads that, with the caller, copy N slices
    of an array at once.

    Each worker blocks on its own lock between copies; :meth:`copy` hands
    out the slices, copies slice 0 itself and returns when every slice is
    done.  One caller at a time.
    """

    def __init__(self, nthreads: int):
        if nthreads < 2:
            raise ValueError("a CopyTeam needs at least 2 threads")
        self.nthreads = nthreads
        self._jobs: List[Optional[Tuple[np.ndarray, np.ndarray]]] = \
            [None] * (nthreads - 1)
        self._go = [threading.Lock() for _ in range(nthreads - 1)]
        self._done = [threading.Lock() for _ in range(nthreads - 1)]
        for lock in self._go + self._done:
            lock.acquire()
        self._threads = [threading.Thread(target=self._work, args=(i,),
                                          name="fastbn-bench-copy-%d" % i,
                                          daemon=True)
                         for i in range(nthreads - 1)]
        for t in self._threads:
            t.start()

    def _work(self, i: int) -> None:
        while True:
            self._go[i].acquire()
            job = self._jobs[i]
            if job is None:
                return
            np.copyto(job[0], job[1])
            self._done[i].release()

    def slices(self, dst: np.ndarray, src: np.ndarray
               ) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(dst, src) slice pairs of two C-contiguous arrays, one per
        thread."""
        if not (dst.flags.c_contiguous and src.flags.c_contiguous):
            raise ValueError("CopyTeam copies C-contiguous arrays only")
        d, s = dst.reshape(-1), src.reshape(-1)
        b = split_bounds(d.size, d.itemsize, self.nthreads)
        return [(d[b[i]:b[i + 1]], s[b[i]:b[i + 1]])
                for i in range(self.nthreads)]

    def copy(self, pairs: List[Tuple[np.ndarray, np.ndarray]]) -> None:
        """Copy every (dst, src) pair of :meth:`slices`, pair k on thread k
        (pair 0 on the caller)."""
        for i in range(self.nthreads - 1):
            self._jobs[i] = pairs[i + 1]
            self._go[i].release()
        np.copyto(pairs[0][0], pairs[0][1])
        for lock in self._done:
            lock.acquire()

    def close(self) -> None:
        """Stop the workers."""
        for i in range(self.nthreads - 1):
            self._jobs[i] = None
            self._go[i].release()
        for t in self._threads:
            t.join()


_TEAMS: Dict[int, CopyTeam] = {}


def copy_team(nthreads: int) -> CopyTeam:
    """The process's CopyTeam of `nthreads` threads (made on first use; its
    daemon threads sleep between copies and end with the process)."""
    if nthreads not in _TEAMS:
        _TEAMS[nthreads] = CopyTeam(nthreads)
    return _TEAMS[nthreads]


def _same_as(x: np.ndarray):
    """check() of a copy: the result must equal x."""
    def check(result):
        ok = bool(np.array_equal(result, x))
        return ok, 0.0 if ok else float("inf"), "ok" if ok else "copy differs"
    return check


def copy_impls(x: np.ndarray, threads: int) -> List[Impl]:
    """The floor's implementations: np.copyto of x into a preallocated
    array on 1 thread and, for threads > 1, split over `threads` threads
    (each into its own destination)."""
    dst = np.empty_like(x)

    def single():
        np.copyto(dst, x)
        return dst

    impls = [Impl("np.copyto (1 thread)", "floor", single, threads=1,
                  check=_same_as(x))]
    if threads > 1:
        team = copy_team(threads)
        dst_n = np.empty_like(x)
        pairs = team.slices(dst_n, x)

        def split():
            team.copy(pairs)
            return dst_n
        impls.append(Impl("np.copyto (%d threads)" % threads, "floor", split,
                          threads=threads, check=_same_as(x)))
    return impls


def select_floor(single: Optional[float], team: Optional[float]
                 ) -> Tuple[Optional[float], str]:
    """The floor from the single copy's time and the N-thread copy's time
    (either may be missing): the faster one, and which it was ("1 thread",
    "N threads" or "" when neither was measured)."""
    if team is not None and (single is None or team < single):
        return team, "N threads"
    if single is not None:
        return single, "1 thread"
    return None, ""


def copyto_releases_gil(nbytes: int = 64 * 2 ** 20, attempts: int = 3
                        ) -> bool:
    """Whether np.copyto releases the GIL while it copies.

    A Python thread records timestamps in a loop while the caller copies
    `nbytes`; if np.copyto held the GIL, no timestamp could fall inside
    the middle of the copy.  True as soon as one attempt sees the thread
    run during a copy.
    """
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    for _ in range(attempts):
        stamps: List[float] = []
        stop = threading.Event()

        def tick():
            while not stop.is_set():
                stamps.append(time.perf_counter())

        t = threading.Thread(target=tick, daemon=True)
        t.start()
        time.sleep(0.005)  # let the thread start ticking
        t0 = time.perf_counter()
        np.copyto(dst, src)
        t1 = time.perf_counter()
        stop.set()
        t.join()
        lo, hi = t0 + 0.2 * (t1 - t0), t1 - 0.2 * (t1 - t0)
        if any(lo < s < hi for s in stamps):
            return True
    return False
