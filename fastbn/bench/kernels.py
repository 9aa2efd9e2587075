"""The kernel workloads: a few standard shapes, each timed against NumPy,
PyTorch and the floor, with the targets of issue 9."""

from __future__ import annotations

from typing import List, Sequence

from .impls import build_impls
from .inputs import make_inputs, reference
from .results import WorkloadResult, run_workload
from .workloads import Workload


def run_kernels(workloads: Sequence[Workload], fastbn, threads: int,
                rounds: int, *, torch=None, compile_torch: bool = False,
                pause: float = 0.01, progress=None) -> List[WorkloadResult]:
    """Run every kernel workload (tiny ones with 4x the rounds and many
    calls per sample); backward workloads get a note instead when this
    fastbn has no backward."""
    if progress is not None:
        progress.part("kernels", [1.0 + w.nbytes / 2 ** 23 + 30.0 *
                                  compile_torch for w in workloads])
    say = progress or (lambda s: None)
    out = []
    for w in workloads:
        if progress is not None:
            progress.start(w.key)
        if w.mode == "backward" and not hasattr(fastbn,
                                                "batch_norm_backward"):
            out.append(WorkloadResult(w, [], threads, note=(
                "skipped: fastbn.batch_norm_backward is not available in "
                "this build")))
            continue
        say("inputs and the float64 reference")
        inp = make_inputs(w)
        ref = reference(w, inp)
        impls = build_impls(w, inp, fastbn, threads, torch, compile_torch)
        out.append(run_workload(w, impls, ref,
                                4 * rounds if w.tiny else rounds, threads,
                                pause=pause, min_sample=0.002, progress=say))
    return out
