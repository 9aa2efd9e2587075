"""The report: tables of every part, as plain text, Markdown or JSON.

A :class:`Report` holds whatever parts ran (kernel workloads, sweep,
between-calls scenarios, network step).  :func:`blocks` turns it into a
list of headings, tables and paragraphs, which :func:`render` writes as
text or Markdown; :func:`to_json` keeps every sample.  The notes at the end
define every ratio the tables show.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

from .floor import SLICE_ALIGN
from .ghost import GHOST_NOTES, GhostResult, ghost_json, ghost_rows
from .impls import threads_name
from .machine import other_load_text
from .network import NetworkResult
from .scaler import ScalerResult, scaler_json, scaler_notes, scaler_rows
from .results import WorkloadResult
from .scenarios import (IDLE_SECONDS, MATMUL_SIZE, WARM_CALLS, ScenarioResult,
                        target_text)
from .sweep import (SweepResult, loss_counts, row_flags, worst_floor_rows,
                    worst_rows)
from .timing import fmt_time
from .workloads import (MODE_TITLES, MODES, SWEEP_TARGETS, TARGET_MIN_BYTES,
                        fmt_bytes)

Table = Tuple[List[str], List[List[str]]]


@dataclasses.dataclass
class Report:
    """Everything one run measured."""

    info: List[Tuple[str, str]]
    settings: str
    threads: int
    gil_released: Optional[bool] = None
    kernels: Optional[List[WorkloadResult]] = None
    sweep: Optional[SweepResult] = None
    scenarios: Optional[ScenarioResult] = None
    network: Optional[NetworkResult] = None
    ghost: Optional[GhostResult] = None
    sklearn: Optional[ScalerResult] = None
    half: Optional[object] = None  # half.HalfResult (--half)
    #: per part: the share of all CPUs' time that other processes used
    #: while it ran (machine.OtherLoad; None where unknown)
    other_load: Dict[str, Optional[float]] = dataclasses.field(
        default_factory=dict)

    def failures(self) -> List[str]:
        """'part/row/implementation' of every failed verification."""
        out = []
        for wr in (self.kernels or []):
            out += ["kernels/%s/%s" % (wr.workload.key, r.impl)
                    for r in wr.results if r.failed]
        for wr in (self.sweep.rows if self.sweep else []):
            out += ["sweep/%s/%s" % (wr.workload.key, r.impl)
                    for r in wr.results if r.failed]
        for row in (self.scenarios.rows if self.scenarios else []):
            out += ["scenarios/%s %s/%s" % (row.shape, row.scenario, r.impl)
                    for r in row.results if r.failed]
        for v in (self.network.variants if self.network else []):
            if v.step.failed:
                out.append("network/%s" % v.name)
        for row in (self.ghost.rows if self.ghost else []):
            if row.failed:
                out.append("ghost/%s" % row.label)
        for r in (self.sklearn.rows if self.sklearn else []):
            if r.failed:
                out.append("sklearn/%s %s/%s" % (r.dtype, "nan" if r.nan else
                                                 "finite", r.op))
        if self.half is not None:
            out += self.half.failures()
        return sorted(set(out))


def _f(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else fmt % v


def _ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    v = seconds * 1e3
    return "%.3f" % v if v < 10 else "%.2f" % v if v < 100 else "%.1f" % v


# --------------------------------------------------------------------------
# Kernel workloads
# --------------------------------------------------------------------------

def kernel_rows(wr: WorkloadResult) -> Table:
    """One kernel workload: every implementation against the floor of its
    thread count."""
    tiny = wr.workload.tiny
    unit, scale = ("us", 1e6) if tiny else ("ms", 1e3)
    head = ["implementation", "threads", "median " + unit, "min " + unit,
            "time/floor", "min/floor", "vs numpy", "GB/s", "check"]
    rows = []
    for r in wr.results:
        def t(v):
            if v is None:
                return "-"
            v *= scale
            return "%.3f" % v if tiny or v < 10 else "%.2f" % v
        check = r.status
        if r.ok and r.error is not None and r.role != "floor":
            check = "ok (%.0e)" % r.error
        rows.append([r.impl, str(r.threads) if r.threads else "-",
                     t(r.median), t(r.best), _f(wr.ratio(r), "%.2fx"),
                     _f(wr.ratio_min(r), "%.2fx"), _f(wr.speedup(r), "%.1fx"),
                     _f(wr.gbps(r), "%.1f"), check])
    return head, rows


def kernel_floor_line(wr: WorkloadResult) -> str:
    """Which copy is the floor at each thread count of a workload."""
    parts = []
    for t in sorted({1, wr.threads}):
        v, src = wr.floor(t)
        if v is not None:
            parts.append("%s: %s (%s)" % (threads_name(t), fmt_time(v),
                                          "np.copyto on " + src if src ==
                                          "1 thread" else "N-thread copy"))
    plans = ", ".join("%s %s" % (threads_name(t), wr.workload.plan(t))
                      for t in sorted({1, wr.threads}))
    return "floor " + ", ".join(parts) + "; fastbn's plan: " + plans


def kernel_summary_rows(wrs: Sequence[WorkloadResult]) -> Table:
    """One line per workload: fastbn against the floor, its target, NumPy
    and the best other implementation."""
    head = ["workload", "fastbn time/floor", "target", "met", "numpy/floor",
            "best other", "fastbn vs best other"]
    rows = []
    for wr in wrs:
        w = wr.workload
        if wr.note:
            rows.append([w.key, "-", w.target_text, "-", "-", "-", wr.note])
            continue
        fb = wr.get("fastbn (out=)")
        user = wr.get("fastbn") if w.tiny else fb
        met = "-"
        if user is not None and user.median is not None:
            if w.target_ratio is not None and wr.ratio(user) is not None:
                met = "yes" if wr.ratio(user) <= w.target_ratio else "NO"
            elif w.target_us is not None:
                met = "yes" if user.median * 1e6 <= w.target_us else "NO"
            if user.failed:
                met = "FAILED"
        if w.tiny and user is not None and user.median is not None:
            ratio_text = "%.2fx (%.1f us/call)" % (wr.ratio(user) or 0,
                                                   user.median * 1e6)
        else:
            ratio_text = _f(wr.ratio(fb) if fb else None, "%.2fx")
        np_res = wr.find("numpy")
        other = wr.best_other(wr.threads)
        vs = "-"
        if other is not None and user is not None and user.median:
            if other.median >= user.median:
                vs = "%.2fx faster" % (other.median / user.median)
            else:
                vs = "%.2fx SLOWER (LOSS)" % (user.median / other.median)
        rows.append([w.key, ratio_text, w.target_text, met,
                     _f(wr.ratio(np_res) if np_res else None, "%.1fx"),
                     "%s %.2fx" % (other.impl, wr.ratio(other) or 0)
                     if other else "-", vs])
    return head, rows


def thread_rows(wrs: Sequence[WorkloadResult], threads: int) -> Table:
    """fastbn at 1 thread against N threads (same run)."""
    head = ["workload", "1 thread", threads_name(threads), "speed-up",
            "speed-up of min times"]
    rows = []
    for wr in wrs:
        one, many = wr.get("fastbn (out=, 1 thread)"), wr.get("fastbn (out=)")
        if one is None or many is None or not one.median or not many.median:
            continue
        rows.append([wr.workload.key, fmt_time(one.median),
                     fmt_time(many.median),
                     "%.2fx" % (one.median / many.median),
                     "%.2fx" % (one.best / many.best)])
    return head, rows


# --------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------

def sweep_rows(sweep: SweepResult, mode: str) -> Table:
    """The sweep table of one mode: per thread count fastbn's and torch
    eager's median (ms), fastbn / torch eager and fastbn / the floor."""
    ts = sweep.thread_counts
    compiled = any(wr.find("compile") for wr in sweep.rows
                   if wr.workload.mode == mode)
    head = ["array", "MB"]
    for t in ts:
        head += ["fastbn %dt" % t, "eager %dt" % t, "fb/eager %dt" % t,
                 "fb/floor %dt" % t]
    if compiled:
        head += ["fb/compile %dt" % t for t in ts]
    head += ["plan " + "/".join("%dt" % t for t in ts), "target", "flags"]
    rows = []
    for wr in sweep.rows:
        w = wr.workload
        if w.mode != mode:
            continue
        row = [" ".join(p for p in (w.family, w.layout, w.shape_text,
                                    w.alias_text, "" if w.dtype == "float32"
                                    else w.dtype) if p),
               "%.1f" % (w.nbytes / 2 ** 20)]
        target = w.sweep_target
        for t in ts:
            fb, eager = wr.find("fastbn", t), wr.find("eager", t)
            v, f = wr.fastbn_vs("eager", t), wr.fastbn_over_floor(t)
            row += [_ms(fb.median) if fb else "-",
                    _ms(eager.median) if eager else "-",
                    "-" if v is None else "%.2fx%s" % (
                        v, " LOSS" if v > 1.0 else ""),
                    "-" if f is None else "%.2fx%s" % (
                        f, " OVER" if target is not None and f > target
                        else "")]
        if compiled:
            for t in ts:
                c = wr.find("compile", t)
                v = wr.fastbn_vs("compile", t)
                row.append(("skipped" if c is not None and not c.samples
                            else "-") if v is None else "%.2fx%s" % (
                    v, " LOSS" if v > 1.0 else ""))
        plans = [w.plan(t) for t in ts]
        row += ["/".join(plans) if len(set(plans)) > 1 else plans[0],
                "<= %gx" % target if target else "-",
                " ".join(row_flags(wr, ts)) or "ok"]
        rows.append(row)
    return head, rows


def loss_count_rows(sweep: SweepResult) -> Table:
    """Losses and target misses per mode and thread count."""
    modes = [m for m in MODES if any(wr.workload.mode == m
                                     for wr in sweep.rows)]
    head = ["mode", "threads", "rows", "LOSSES vs eager", "(also by min)",
            "worst fb/eager", "LOSSES vs compile", "rows > 4 MB",
            "over target", "worst fb/floor > 4 MB", "failed"]
    rows = []
    for c in loss_counts(sweep.rows, sweep.thread_counts, modes):
        rows.append([c.mode, str(c.threads), str(c.rows), str(c.losses),
                     str(c.losses_min),
                     "-" if c.worst is None else "%.2fx %s" % (c.worst,
                                                              c.worst_row),
                     "%d of %d" % (c.compile_losses, c.compiled)
                     if c.compiled else "-",
                     str(c.targeted),
                     "%d (target %gx)" % (c.over_target,
                                          SWEEP_TARGETS[c.mode]),
                     "-" if c.worst_floor is None else "%.2fx %s" % (
                         c.worst_floor, c.worst_floor_row),
                     str(c.failed)])
    return head, rows


def worst_rows_table(sweep: SweepResult, n: int = 10) -> Table:
    """The rows where fastbn is furthest behind (or least ahead of) torch
    eager."""
    head = ["fastbn/eager", "threads", "row", "fastbn", "torch eager"]
    rows = []
    for v, t, wr in worst_rows(sweep.rows, sweep.thread_counts, n):
        rows.append(["%.2fx%s" % (v, " LOSS" if v > 1.0 else ""), str(t),
                     wr.workload.label, fmt_time(wr.find("fastbn",
                                                         t).median),
                     fmt_time(wr.find("eager", t).median)])
    return head, rows


def worst_floor_table(sweep: SweepResult, n: int = 10) -> Table:
    """The rows furthest over their time / floor target."""
    head = ["fastbn/floor", "target", "over by", "threads", "row", "fastbn",
            "floor"]
    rows = []
    for v, t, wr in worst_floor_rows(sweep.rows, sweep.thread_counts, n):
        floor, src = wr.floor(t)
        target = wr.workload.sweep_target
        rows.append(["%.2fx" % v, "%gx" % target, "%.2fx" % (v / target),
                     str(t),
                     wr.workload.label,
                     fmt_time(wr.find("fastbn", t).median),
                     "%s (%s)" % (fmt_time(floor), src)])
    return head, rows


# --------------------------------------------------------------------------
# Between calls, network step
# --------------------------------------------------------------------------

def scenario_rows(sc: ScenarioResult) -> Table:
    """fastbn at 1 and N threads per shape and scenario (median and 90th
    percentile), the ratio N / 1 against its target, and torch eager."""
    n = sc.threads
    counts = sorted({1, n})
    head = ["x", "scenario"]
    head += ["fastbn %dt median (p90)" % t for t in counts]
    if n > 1:
        head += ["%dt / 1t" % n, "speed-up", "target", "met"]
    head += ["eager %dt median (p90)" % t for t in counts] + ["check"]
    rows = []
    for row in sc.rows:
        def cell(role, t):
            r = row.find(role, t)
            if r is None or r.median is None:
                return "-"
            return "%s (%s)" % (fmt_time(r.median), fmt_time(r.p90))
        ratio = row.ratio
        met = row.met
        checks = sorted({r.status for r in row.results})
        cells = ["(%s)" % ",".join(map(str, row.shape)), row.scenario]
        cells += [cell("fastbn", t) for t in counts]
        if n > 1:
            cells += [_f(ratio, "%.2fx"),
                      _f(None if not ratio else 1.0 / ratio, "%.2fx"),
                      target_text(row.target) or "-",
                      "-" if met is None else ("yes" if met else "NO")]
        cells += [cell("eager", t) for t in counts]
        cells.append("ok" if checks == ["ok"] else "; ".join(
            c for c in checks if c != "ok"))
        rows.append(cells)
    return head, rows


def network_rows(net: NetworkResult) -> Table:
    head = ["batch norm", "step median", "step min", "batch norm part",
            "step / fastbn 1t step", "batch norm / fastbn 1t", "check"]
    rows = []
    one = "fastbn (1 thread)"
    for v in net.variants:
        check = v.step.status
        if v.step.ok and v.step.error is not None:
            check = "ok (%.0e)" % v.step.error
        rows.append([v.name, fmt_time(v.step.median), fmt_time(v.step.best),
                     fmt_time(v.bn.median), _f(net.ratio(v.name, one), "%.2fx"),
                     _f(net.ratio(v.name, one, "bn"), "%.2fx"), check])
    return head, rows


def network_target_rows(net: NetworkResult) -> Table:
    head = ["what", "ratio", "target", "met"]
    return head, [[what, _f(r, "%.2fx"), text,
                   "-" if met is None else ("yes" if met else "NO")]
                  for what, r, text, met in net.targets()]


# --------------------------------------------------------------------------
# Notes
# --------------------------------------------------------------------------

def floor_note(threads: int, gil: Optional[bool]) -> str:
    """How the floor is measured (the first note of every report)."""
    checked = {True: "checked in this run: yes",
               False: "checked in this run: NO -- the N-thread copy is "
                      "then serialised and the floor too slow",
               None: "not checked in this run"}[gil]
    return (
        "The floor: a copy of x's bytes (1 read + 1 write) on the row's "
        "thread count.  For N threads it is the faster of np.copyto of the "
        "whole array on one thread and np.copyto of N equal slices (split "
        "at %d-byte boundaries) copied at once on N threads: N-1 persistent "
        "Python worker threads and the caller, each copying its slice into "
        "a preallocated array (np.copyto releases the GIL while it copies; "
        "%s).  For 1 thread it is the single np.copyto.  Both copies are "
        "timed with the row's other implementations, interleaved, in the "
        "same run; medians are compared with the floor's median, minima "
        "with its minimum.  The copy's workers block on a lock between "
        "calls (no spinning), so on small arrays waking them costs some "
        "microseconds and the single copy is the floor there.  Here N = %d."
        % (SLICE_ALIGN, checked, threads))


KERNEL_NOTES = (
    "time/floor: median time / the floor's median at the row's thread "
    "count (the threads column; NumPy rows, single-threaded by design, use "
    "the N-thread floor: the machine's floor); min/floor: minimum time / "
    "the floor's minimum (steadier on a busy machine).  A copy's own row "
    "shows its time over the floor (1.00x for the faster copy).",
    "GB/s counts the bytes the operation must move: 1 read + 1 write of x "
    "for the forward modes; 2 reads (dy, x) + 1 write (dx) for the "
    "backward, whose ReLU mask fastbn recomputes from x with the forward's "
    "statistics and the low part of its batch mean, as the layer does (its "
    "y= rows read the forward's y too, as PyTorch does) and whose floor is "
    "still one copy, so it cannot reach 1.0x (about 1.5x is its true floor).",
    "vs numpy: NumPy's time / this time.  numpy: as users write it "
    "(x.mean, x.var, (x-mean)/np.sqrt(var+eps)*gamma+beta, "
    "np.maximum(0, .)); numpy tuned: preallocated buffers, in-place ufuncs, "
    "per-channel constants, einsum.  torch eager: F.batch_norm + "
    "torch.relu_ (backward: the aten kernels autograd calls, "
    "threshold_backward + native_batch_norm_backward); torch.compile: "
    "inductor, compiled for the shape (dynamic=False).",
    "Implementations of a workload are timed interleaved, round by round; "
    "each result was first checked against a float64 NumPy reference "
    "(check column: largest error relative to the largest value).  fastbn "
    "without out= allocates its output on every call.",
    "Targets (issue 9): fastbn's time / the honest floor at N threads; the "
    "tiny call in microseconds.  'fastbn vs best other' compares with the "
    "fastest other implementation at N threads (NumPy included).",
)


def sweep_notes(sweep: SweepResult) -> List[str]:
    compile_text = {
        "none": "torch.compile was not timed (--sweep-compile none)",
        "subset": "torch.compile was timed on the representative rows only "
                  "(compiling every row takes hours; --sweep-compile all "
                  "does it)",
        "all": "torch.compile was timed on every row"}[sweep.compile_mode]
    return [
        "Sweep: fb/eager t = fastbn's median / torch eager's median at t "
        "threads (both in the same run, interleaved); above 1.00x is a "
        "LOSS.  fb/floor t = fastbn's median / the floor at t threads.  "
        "fb/compile t = fastbn / torch.compile.  Times in ms; MB = 2^20 "
        "bytes of x.  fastbn writes into a preallocated out=; torch "
        "allocates its outputs.",
        "Sweep targets (issue 9): for arrays over %s, fb/floor <= %gx "
        "(training forward), %gx (inference), %gx (backward), at every "
        "thread count; OVER marks a miss.  'also by min' counts the losses "
        "that the minimum times confirm (a loss by the median only may be "
        "noise)." % (fmt_bytes(TARGET_MIN_BYTES), SWEEP_TARGETS["train"],
                     SWEEP_TARGETS["infer"], SWEEP_TARGETS["backward"]),
        "Sweep arrays that fastbn sees as the same (outer, C, inner) block "
        "are timed once (aliases in the JSON).  %s.  The sweep took %.0f s."
        % (compile_text, sweep.seconds),
    ]


def scenario_notes(sc: ScenarioResult) -> List[str]:
    ratio = ("%dt / 1t = fastbn's median at %d threads / its median at 1 "
             "thread; speed-up = its inverse.  Targets (issue 10): after "
             "matmul <= 1.1x, after idle <= 1.0x, back-to-back speed-up >= "
             "1.7x on (16,64,28,28) and >= 1.4x on (32,64,56,56).  "
             % (sc.threads, sc.threads) if sc.threads > 1 else "")
    return [
        "Between calls: fastbn.batch_norm_train(x, relu=True, out=out), "
        "float32 NCHW, in a loop; before each call nothing "
        "(back-to-back), a (%d,%d) float32 a @ a (NumPy's BLAS at its "
        "default threads: %s), or time.sleep(%g).  Only the batch-norm call "
        "is timed.  Blocks of calls per implementation (the first %d of "
        "each block not counted), implementations rotated between rounds; "
        "median and 90th percentile (p90) over all counted calls.  %storch "
        "eager: F.batch_norm(x, training=True) + relu_ in the same loop.  "
        "This part took %.0f s." % (MATMUL_SIZE, MATMUL_SIZE,
                                    sc.blas or "?", IDLE_SECONDS, WARM_CALLS,
                                    ratio, sc.seconds),
    ]


def network_notes(net: NetworkResult) -> List[str]:
    return [
        "Network step: a ResNet basic block on channels-last x %s float32: "
        "conv 3x3 (im2col + matmul), batch norm + ReLU, conv 3x3, batch "
        "norm, residual add + ReLU, and the backward of all of it, with "
        "NumPy's BLAS at its default threads.  fastbn: fused ReLU and "
        "residual, forward and backward; NumPy batch norm: as users write "
        "it.  Every variant's output and gradients were checked against the "
        "float64 step (check column).  'batch norm part' = median time spent "
        "inside the batch-norm calls of a step.  step / fastbn 1t step (and "
        "batch norm / fastbn 1t) = the median over rounds of the ratio of "
        "the two in the same round (the variants of a round run one after "
        "the other, in an order rotated from round to round).  Targets (issue 10): "
        "fastbn at the default threads no slower than at 1 thread, and "
        "faster than the NumPy-BN step.  This part took %.0f s."
        % ("(%s)" % ",".join(map(str, net.shape)), net.seconds),
    ]


# --------------------------------------------------------------------------
# Assembly and rendering
# --------------------------------------------------------------------------

def blocks(rep: Report) -> List[tuple]:
    """The report as ("h1"|"h2"|"h3", text), ("table", head, rows),
    ("p", text) and ("notes", [text]) blocks."""
    out: List[tuple] = [("h1", "fastbn benchmark")]
    info = rep.info + [("settings", rep.settings)]
    if rep.other_load:
        info.append(("other processes", "share of the CPUs used by other "
                     "processes while each part ran: " +
                     other_load_text(rep.other_load)))
    out.append(("info", info))
    if rep.kernels:
        out.append(("h2", "Kernel workloads"))
        for wr in rep.kernels:
            w = wr.workload
            out.append(("h3", w.title + (" -- target %s" % w.target_text
                                         if w.target_text else "")))
            if wr.note:
                out.append(("p", wr.note))
                continue
            out.append(("table",) + kernel_rows(wr))
            out.append(("p", kernel_floor_line(wr)))
        out.append(("h3", "Kernel workloads: summary (%s)" %
                    threads_name(rep.threads)))
        out.append(("table",) + kernel_summary_rows(rep.kernels))
        head, rows = thread_rows(rep.kernels, rep.threads)
        if rows:
            out.append(("h3", "fastbn: 1 thread vs %s" %
                        threads_name(rep.threads)))
            out.append(("table", head, rows))
    if rep.sweep is not None:
        sw = rep.sweep
        out.append(("h2", "Shape sweep (%d rows, %s)" % (
            len(sw.rows), " and ".join(threads_name(t)
                                       for t in sw.thread_counts))))
        for mode in MODES:
            head, rows = sweep_rows(sw, mode)
            if rows:
                out.append(("h3", "Sweep: " + MODE_TITLES[mode]))
                out.append(("table", head, rows))
        out.append(("h3", "Sweep: losses per mode and thread count"))
        out.append(("table",) + loss_count_rows(sw))
        out.append(("h3", "Sweep: the 10 rows furthest behind torch eager"))
        out.append(("table",) + worst_rows_table(sw))
        head, rows = worst_floor_table(sw)
        out.append(("h3", "Sweep: rows furthest over their time/floor "
                          "target"))
        out.append(("table", head, rows) if rows else
                   ("p", "No row over 4 MB is above its target."))
    if rep.scenarios is not None:
        n = rep.scenarios.threads
        out.append(("h2", "Between calls: fastbn at 1 thread" + (
            " and at %s" % threads_name(n) if n > 1 else
            " (run with --threads N, N > 1, to compare)")))
        out.append(("table",) + scenario_rows(rep.scenarios))
    if rep.network is not None:
        out.append(("h2", "NumPy network step: ResNet basic block %s" %
                    "(%s)" % ",".join(map(str, rep.network.shape))))
        out.append(("table",) + network_rows(rep.network))
        out.append(("table",) + network_target_rows(rep.network))
    if rep.ghost is not None:
        out.append(("h2", "Ghost batches and batch renormalization"))
        out.append(("table",) + ghost_rows(rep.ghost))
    if rep.sklearn is not None:
        out.append(("h2", "scikit-learn StandardScaler (%s)" %
                    " x ".join(map(str, rep.sklearn.shape))))
        if rep.sklearn.skipped:
            out.append(("p", "Skipped: " + rep.sklearn.skipped))
        else:
            out.append(("table",) + scaler_rows(rep.sklearn))
    if rep.half is not None:
        from .half import half_rows
        out.append(("h2", "Half precision: float16 and bfloat16 beside "
                          "float32 (%s)" % threads_name(rep.half.threads)))
        out.append(("table",) + half_rows(rep.half))
    notes = [floor_note(rep.threads, rep.gil_released)]
    if rep.kernels:
        notes += list(KERNEL_NOTES)
    if rep.sweep is not None:
        notes += sweep_notes(rep.sweep)
    if rep.scenarios is not None:
        notes += scenario_notes(rep.scenarios)
    if rep.network is not None:
        notes += network_notes(rep.network)
    if rep.ghost is not None:
        notes += GHOST_NOTES
    if rep.sklearn is not None:
        notes += scaler_notes(rep.sklearn)
    if rep.half is not None:
        from .half import half_notes
        notes += half_notes(rep.half)
    out.append(("h2", "Notes"))
    out.append(("notes", notes))
    failed = rep.failures()
    if failed:
        out.append(("p", "VERIFICATION FAILED: " + ", ".join(failed)))
    return out


def text_table(head: List[str], rows: List[List[str]]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]

    def line(cells):
        out = []
        for i, (c, wd) in enumerate(zip(cells, widths)):
            text = str(c)
            numeric = text[:1].isdigit() or text == "-"
            out.append(text.rjust(wd) if numeric and i > 0 else text.ljust(wd))
        return "  ".join(out).rstrip()
    return "\n".join([line(head), line(["-" * wd for wd in widths])] +
                     [line(r) for r in rows])


def md_table(head: List[str], rows: List[List[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def esc(c):
        return str(c).replace("|", "\\|")
    align = ["---"] + ["---:"] * (len(head) - 2) + ["---"]
    return "\n".join(["| " + " | ".join(map(esc, head)) + " |",
                      "|" + "|".join(align) + "|"] +
                     ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def render(rep: Report, markdown: bool = False) -> str:
    """The whole report, as plain text or Markdown."""
    out = []
    for b in blocks(rep):
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            if markdown:
                out.append({"h1": "#", "h2": "##", "h3": "###"}[kind] + " " +
                           b[1] + "\n")
            else:
                mark = {"h1": "", "h2": "=== ", "h3": "-- "}[kind]
                out.append(("\n" if kind == "h2" else "") + mark + b[1])
        elif kind == "info":
            if markdown:
                out.append("\n".join("- **%s**: %s" % kv for kv in b[1]) +
                           "\n")
            else:
                width = max(len(k) for k, _ in b[1])
                out.append("\n".join("  %s  %s" % (k.ljust(width), v)
                                     for k, v in b[1]) + "\n")
        elif kind == "table":
            out.append((md_table if markdown else text_table)(b[1], b[2]) +
                       "\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "notes":
            if markdown:
                out.append("\n".join("- " + n for n in b[1]) + "\n")
            else:
                out.append("\n".join(textwrap.fill(
                    n, 100, initial_indent="  * ", subsequent_indent="    ")
                    for n in b[1]) + "\n")
    return "\n".join(out)


# --------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------

def _result_json(r, wr: Optional[WorkloadResult] = None) -> dict:
    d = {"impl": r.impl, "role": r.role, "threads": r.threads,
         "status": r.status, "max_rel_error": r.error,
         "median_s": r.median, "min_s": r.best, "p90_s": r.p90,
         "samples_s": r.samples}
    if wr is not None:
        d.update(time_over_floor=wr.ratio(r),
                 min_over_floor_min=wr.ratio_min(r))
    return d


def _workload_json(wr: WorkloadResult, thread_counts: Sequence[int]) -> dict:
    w = wr.workload
    floors = {}
    for t in thread_counts:
        v, src = wr.floor(t)
        floors[str(t)] = {
            "floor_s": v, "floor_from": src,
            "fastbn_over_floor": wr.fastbn_over_floor(t),
            "fastbn_vs_eager": wr.fastbn_vs("eager", t),
            "fastbn_vs_eager_min": wr.fastbn_vs("eager", t, "best"),
            "fastbn_vs_compile": wr.fastbn_vs("compile", t)}
    return {"key": w.key, "family": w.family, "aliases": [{"family": f, "shape": list(sh)}
                                               for f, sh in w.aliases],
            "mode": w.mode, "layout": w.layout, "shape": list(w.shape),
            "axis": w.axis, "dtype": w.dtype, "bytes": w.nbytes,
            "min_bytes_moved": w.min_bytes, "target_ratio": w.target_ratio,
            "target_us": w.target_us, "sweep_target": w.sweep_target,
            "note": wr.note, "per_threads": floors,
            "plans": {str(t): w.plan(t) for t in thread_counts},
            "results": [_result_json(r, wr) for r in wr.results]}


def to_json(rep: Report) -> dict:
    """Everything as a JSON-serialisable dict (times in seconds)."""
    data = {"machine": dict(rep.info), "settings": rep.settings,
            "threads": rep.threads,
            "floor": floor_note(rep.threads, rep.gil_released),
            "copyto_releases_gil": rep.gil_released,
            "other_load": rep.other_load,
            "failures": rep.failures()}
    counts = sorted({1, rep.threads})
    if rep.kernels is not None:
        data["kernels"] = [_workload_json(wr, counts) for wr in rep.kernels]
    if rep.sweep is not None:
        sw = rep.sweep
        modes = [m for m in MODES if any(wr.workload.mode == m
                                         for wr in sw.rows)]
        data["sweep"] = {
            "thread_counts": list(sw.thread_counts),
            "compile_mode": sw.compile_mode, "seconds": sw.seconds,
            "loss_counts": [dataclasses.asdict(c) for c in loss_counts(
                sw.rows, sw.thread_counts, modes)],
            "rows": [dict(_workload_json(wr, sw.thread_counts),
                          flags=row_flags(wr, sw.thread_counts))
                     for wr in sw.rows]}
    if rep.scenarios is not None:
        sc = rep.scenarios
        data["scenarios"] = {
            "threads": sc.threads, "blas": sc.blas, "seconds": sc.seconds,
            "rows": [{"shape": list(row.shape), "scenario": row.scenario,
                      "ratio_default_over_1_thread": row.ratio,
                      "target": target_text(row.target), "met": row.met,
                      "results": [_result_json(r) for r in row.results]}
                     for row in sc.rows]}
    if rep.network is not None:
        net = rep.network
        data["network"] = {
            "shape": list(net.shape), "threads": net.threads,
            "seconds": net.seconds,
            "variants": [{"name": v.name, "threads": v.threads,
                          "step": _result_json(v.step),
                          "batch_norm_part": _result_json(v.bn)}
                         for v in net.variants],
            "targets": [{"what": what, "ratio": r, "target": text,
                         "met": met} for what, r, text, met in net.targets()]}
    if rep.ghost is not None:
        data["ghost"] = ghost_json(rep.ghost)
    if rep.sklearn is not None:
        data["sklearn"] = scaler_json(rep.sklearn)
    if rep.half is not None:
        from .half import half_json
        data["half"] = half_json(rep.half)
    return data
