"""Between calls (issue 10): what runs before each batch-norm call.

In a real program a batch norm follows a convolution or a dense layer, i.e.
a NumPy matmul whose BLAS threads keep spinning after it returns, or the
program was idle and the worker threads sleep.  Here
``fastbn.batch_norm_train(x, relu=True, out=out)`` runs in a loop in three
scenarios:

- back-to-back: nothing between calls;
- after matmul: ``a @ a`` of a (384, 384) float32 array before each call
  (NumPy's BLAS at its default thread count);
- after 2 ms idle: ``time.sleep(0.002)`` before each call;

at 1 thread and at the default thread count, with PyTorch eager
(``F.batch_norm`` + ``relu_``) in the same loop.  Only the batch-norm call
is timed (the matmul and the sleep are not); statistics are over the calls.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .impls import call_once, fastbn_threads, threads_name, torch_threads
from .inputs import EPS, compare, ref_train
from .timing import Impl, Result
from .workloads import Workload

SHAPES = ((8, 16, 8, 8), (16, 64, 28, 28), (32, 256, 14, 14),
          (32, 64, 56, 56))
QUICK_SHAPES = ((8, 16, 8, 8), (16, 64, 28, 28))
SCENARIOS = ("back-to-back", "after matmul", "after 2 ms idle")
MATMUL_SIZE = 384
IDLE_SECONDS = 0.002
#: Calls at the start of every block that are not counted (the state left
#: by the previous block: another implementation's spinning threads).
WARM_CALLS = 3
#: Sleep between blocks; after the matmul scenario long enough for
#: OpenBLAS's threads to stop spinning (about 0.1 s).
PAUSE = 0.02
PAUSE_AFTER_MATMUL = 0.2


def target(shape: Tuple[int, ...], scenario: str
           ) -> Optional[Tuple[str, float]]:
    """The issue-10 target of a row: ("max", r) for default/1-thread <= r,
    ("speedup", s) for 1-thread/default >= s, or None."""
    if scenario == "after matmul":
        return "max", 1.1
    if scenario == "after 2 ms idle":
        return "max", 1.0
    return {(16, 64, 28, 28): ("speedup", 1.7),
            (32, 64, 56, 56): ("speedup", 1.4)}.get(tuple(shape))


def target_text(t: Optional[Tuple[str, float]]) -> str:
    if t is None:
        return ""
    kind, v = t
    return ("<= %.2gx" % v) if kind == "max" else ("speed-up >= %.2gx" % v)


@dataclasses.dataclass
class ScenarioRow:
    """One (shape, scenario): results of fastbn and torch eager at 1 and N
    threads (Result.samples: seconds per call)."""

    shape: Tuple[int, ...]
    scenario: str
    threads: int
    results: List[Result]

    def find(self, role: str, threads: int) -> Optional[Result]:
        for r in self.results:
            if r.role == role and r.threads == threads:
                return r
        return None

    @property
    def ratio(self) -> Optional[float]:
        """fastbn's median at N threads / its median at 1 thread (None when
        N is 1)."""
        one, many = self.find("fastbn", 1), self.find("fastbn", self.threads)
        if self.threads == 1 or one is None or many is None or \
                not one.median or \
                many.median is None:
            return None
        return many.median / one.median

    @property
    def target(self) -> Optional[Tuple[str, float]]:
        return target(self.shape, self.scenario)

    @property
    def met(self) -> Optional[bool]:
        """Whether the target is met (None without a target or a ratio)."""
        t, r = self.target, self.ratio
        if t is None or r is None:
            return None
        return r <= t[1] if t[0] == "max" else 1.0 / r >= t[1]


@dataclasses.dataclass
class ScenarioResult:
    rows: List[ScenarioRow]
    threads: int
    blas: str
    seconds: float = 0.0


def run_block(call: Callable[[], object], between: Optional[Callable],
              calls: int, warm: int = WARM_CALLS) -> List[float]:
    """`warm` + `calls` calls, each after `between()`; the times of the
    last `calls` calls (only the call itself is timed)."""
    times = []
    clock = time.perf_counter
    for i in range(warm + calls):
        if between is not None:
            between()
        t0 = clock()
        call()
        t1 = clock()
        if i >= warm:
            times.append(t1 - t0)
    return times


def _between(scenario: str) -> Optional[Callable[[], object]]:
    if scenario == "after matmul":
        a = np.random.default_rng(1).standard_normal(
            (MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
        return lambda: a @ a
    if scenario == "after 2 ms idle":
        return lambda: time.sleep(IDLE_SECONDS)
    return None


def _impls(shape, fastbn, torch, threads: int) -> List[Impl]:
    """fastbn and torch eager at 1 and `threads` threads on one shape, each
    with a check() against the float64 reference."""
    w = Workload("scenario", "train", shape)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    c = shape[1]
    ref = ref_train(w, x, np.ones(c), np.zeros(c))
    out = np.empty_like(x)
    counts = sorted({1, threads})

    def fb():
        return fastbn.batch_norm_train(x, relu=True, out=out, eps=EPS)
    impls = [Impl("fastbn (%s)" % threads_name(t), "fastbn", fb, threads=t,
                  setup=fastbn_threads(fastbn, t),
                  check=lambda res: compare(res, ref, "float32"))
             for t in counts]
    if torch is not None:
        xt = torch.from_numpy(x)
        F = torch.nn.functional

        def eager():
            return torch.relu_(F.batch_norm(xt, None, None, None, None,
                                            training=True, eps=EPS))
        impls += [Impl("torch eager (%s)" % threads_name(t), "eager", eager,
                       threads=t, setup=torch_threads(torch, t),
                       check=lambda res: compare((res.numpy(),), ref[:1],
                                                 "float32"))
                  for t in counts]
    return impls


def run_scenarios(fastbn, threads: int, rounds: int, calls: int, *,
                  torch=None, shapes: Sequence[Tuple[int, ...]] = SHAPES,
                  blas: str = "", progress=None) -> ScenarioResult:
    """Every (shape, scenario): `rounds` blocks of `calls` timed calls per
    implementation, the implementations' order rotated between rounds.
    Every implementation is first checked against the float64 reference."""
    t0 = time.perf_counter()
    if progress is not None:
        progress.part("between calls", [float(np.prod(s)) ** 0.5 + 300
                                        for s in shapes for _ in SCENARIOS])
    say = progress or (lambda s: None)
    rows = []
    for shape in shapes:
        all_impls = _impls(shape, fastbn, torch, threads)
        status = {}
        impls = []  # the ones that ran (wrong results are timed too)
        for imp in all_impls:
            result, msg = call_once(imp)
            if msg is not None:
                status[imp.name] = ("FAILED: " + msg, None)
                continue
            ok, err, msg = imp.check(result)
            status[imp.name] = ("ok" if ok else "FAILED: " + msg, err)
            impls.append(imp)
        for scenario in SCENARIOS:
            if progress is not None:
                progress.start("%s %s" % (shape, scenario))
            between = _between(scenario)
            samples = {imp.name: [] for imp in impls}
            for r in range(rounds):
                say("round %d/%d" % (r + 1, rounds))
                k = r % max(1, len(impls))
                for imp in impls[k:] + impls[:k]:
                    with imp.setup():
                        samples[imp.name] += run_block(imp.fn, between, calls)
                    time.sleep(PAUSE)
            if scenario == "after matmul":
                time.sleep(PAUSE_AFTER_MATMUL)
            rows.append(ScenarioRow(tuple(shape), scenario, threads, [
                Result(imp.name, imp.role, status[imp.name][0],
                       status[imp.name][1], samples.get(imp.name, []),
                       imp.threads) for imp in all_impls]))
    return ScenarioResult(rows, threads, blas, time.perf_counter() - t0)
