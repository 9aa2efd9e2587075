"""The shape sweep: fastbn against PyTorch eager (and torch.compile) and the
floor on the batch-norm shapes of real networks, at 1 and N threads side by
side, and the counting of losses.

A *loss* is a row where fastbn's median time is larger than PyTorch
eager's (or torch.compile's) at the same thread count.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .impls import build_sweep_impls
from .inputs import make_inputs, reference
from .results import WorkloadResult, run_workload
from .workloads import Workload

#: Relative cost of the modes (backward moves 4 arrays, inference 2).
MODE_COST = {"train": 1.0, "infer": 0.7, "backward": 2.0}


def work_cost(w: Workload, compile_torch: bool = False) -> float:
    """Estimated relative time of one sweep workload, for the ETA: a fixed
    part (pauses, calibration) plus a part proportional to its bytes, and
    a compilation if torch.compile runs on it."""
    return 1.0 + MODE_COST[w.mode] * w.nbytes / 2 ** 23 + \
        (20.0 if compile_torch else 0.0)


def compiles(w: Workload, mode: str) -> bool:
    """Whether torch.compile runs on w under --sweep-compile `mode`."""
    return mode == "all" or (mode == "subset" and w.compile)


@dataclasses.dataclass
class SweepResult:
    """The sweep's rows (one WorkloadResult per workload) and settings."""

    rows: List[WorkloadResult]
    thread_counts: Tuple[int, ...]
    compile_mode: str  # "none", "subset" or "all"
    seconds: float = 0.0


def run_sweep(workloads: Sequence[Workload], fastbn, thread_counts:
              Sequence[int], rounds: int, *, torch=None,
              compile_mode: str = "none", pause: float = 0.01,
              min_sample: float = 0.001, progress=None) -> SweepResult:
    """Run the sweep; workloads of the same array share its inputs."""
    t0 = time.perf_counter()
    torch_ok = torch is not None
    if progress is not None:
        progress.part("sweep", [work_cost(w, torch_ok and compiles(
            w, compile_mode)) for w in workloads])
    say: Callable[[str], None] = progress or (lambda s: None)
    rows = []
    i = 0
    while i < len(workloads):
        j = i
        same = (workloads[i].shape, workloads[i].axis, workloads[i].dtype)
        while j < len(workloads) and (workloads[j].shape, workloads[j].axis,
                                      workloads[j].dtype) == same:
            j += 1
        group = workloads[i:j]
        inp = None
        for w in group:
            if progress is not None:
                progress.start(w.key)
            if inp is None:
                say("inputs and the float64 reference")
                inp = make_inputs(w, backward=any(g.mode == "backward"
                                                  for g in group))
            ref = reference(w, inp)
            impls = build_sweep_impls(
                w, inp, fastbn, thread_counts, torch,
                compile_torch=torch_ok and compiles(w, compile_mode))
            rows.append(run_workload(w, impls, ref, rounds,
                                     max(thread_counts), pause=pause,
                                     min_sample=min_sample, progress=say))
            del impls, ref
        del inp
        i = j
    return SweepResult(rows, tuple(thread_counts), compile_mode,
                       time.perf_counter() - t0)


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------

def row_flags(wr: WorkloadResult, thread_counts: Sequence[int]) -> List[str]:
    """What is wrong with a row: 'FAILED', 'LOSS@t' (slower than torch eager
    at t threads), 'LOSS-compile@t', 'TARGET@t' (time / floor above the
    sweep target at t threads)."""
    flags = []
    if any(r.failed for r in wr.results):
        flags.append("FAILED")
    for t in thread_counts:
        v = wr.fastbn_vs("eager", t)
        if v is not None and v > 1.0:
            flags.append("LOSS@%d" % t)
    for t in thread_counts:
        v = wr.fastbn_vs("compile", t)
        if v is not None and v > 1.0:
            flags.append("LOSS-compile@%d" % t)
    target = wr.workload.sweep_target
    for t in thread_counts:
        v = wr.fastbn_over_floor(t)
        if target is not None and v is not None and v > target:
            flags.append("TARGET@%d" % t)
    return flags


@dataclasses.dataclass
class LossCount:
    """Losses of one (mode, thread count) cell of the sweep."""

    mode: str
    threads: int
    rows: int = 0
    losses: int = 0  # fastbn median > torch eager median
    losses_min: int = 0  # ... and also by minimum times
    worst: Optional[float] = None  # largest fastbn / torch eager
    worst_row: str = ""
    compiled: int = 0
    compile_losses: int = 0
    targeted: int = 0  # rows over 4 MB (where a target applies)
    over_target: int = 0
    worst_floor: Optional[float] = None  # largest time / floor over 4 MB
    worst_floor_row: str = ""
    failed: int = 0


def loss_counts(rows: Sequence[WorkloadResult], thread_counts: Sequence[int],
                modes: Sequence[str]) -> List[LossCount]:
    """Count losses and target misses per mode and thread count."""
    cells: Dict[Tuple[str, int], LossCount] = {
        (m, t): LossCount(m, t) for m in modes for t in thread_counts}
    for wr in rows:
        w = wr.workload
        for t in thread_counts:
            c = cells.get((w.mode, t))
            if c is None:
                continue
            c.rows += 1
            fb = wr.find("fastbn", t)
            if fb is not None and fb.failed:
                c.failed += 1
            v = wr.fastbn_vs("eager", t)
            if v is not None:
                if v > 1.0:
                    c.losses += 1
                    vmin = wr.fastbn_vs("eager", t, "best")
                    if vmin is not None and vmin > 1.0:
                        c.losses_min += 1
                if c.worst is None or v > c.worst:
                    c.worst, c.worst_row = v, w.label
            v = wr.fastbn_vs("compile", t)
            if v is not None:
                c.compiled += 1
                c.compile_losses += v > 1.0
            f = wr.fastbn_over_floor(t)
            if w.sweep_target is not None and f is not None:
                c.targeted += 1
                c.over_target += f > w.sweep_target
                if c.worst_floor is None or f > c.worst_floor:
                    c.worst_floor, c.worst_floor_row = f, w.label
    return [cells[(m, t)] for m in modes for t in thread_counts]


def worst_rows(rows: Sequence[WorkloadResult], thread_counts: Sequence[int],
               n: int = 10) -> List[Tuple[float, int, WorkloadResult]]:
    """The n rows (and thread counts) where fastbn / torch eager is
    largest, worst first: (ratio, threads, row)."""
    items = []
    for wr in rows:
        for t in thread_counts:
            v = wr.fastbn_vs("eager", t)
            if v is not None:
                items.append((v, t, wr))
    items.sort(key=lambda it: -it[0])
    return items[:n]


def worst_floor_rows(rows: Sequence[WorkloadResult],
                     thread_counts: Sequence[int], n: int = 10
                     ) -> List[Tuple[float, int, WorkloadResult]]:
    """The n rows over their sweep target by the largest factor (time /
    floor divided by the target), worst first: (time/floor, threads, row);
    only rows over their target."""
    items = []
    for wr in rows:
        target = wr.workload.sweep_target
        if target is None:
            continue
        for t in thread_counts:
            v = wr.fastbn_over_floor(t)
            if v is not None and v > target:
                items.append((v / target, v, t, wr))
    items.sort(key=lambda it: -it[0])
    return [(v, t, wr) for _, v, t, wr in items[:n]]
