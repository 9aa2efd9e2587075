"""MPI worker for tests/test_mpi_errors.py: ``mpiexec -n P python
mpi_errors_worker.py GROUP`` (GROUP: forward, backward, layer, agree).

Each case of the group makes one synchronised call in which some ranks pass
bad arguments (or the ranks disagree on the channel count, the dtype or the
call), and checks on every rank (docs/contract.md, "MPI errors"):

- the call raises within DEADLINE seconds on every rank;
- a rank whose arguments are bad raises exactly what the same call raises
  without ``comm`` (same type, same message);
- every other rank raises RuntimeError naming the failing rank(s) ("failed
  on rank 1 of 3") and each failing rank's "Type: message";
- ranks that disagree raise the expected exception on every rank;
- afterwards ``comm`` works: an allgather, then one correct synchronised
  forward and backward (or layer step) equal the single-process result on
  the concatenated global batch, on every rank; a layer whose call failed
  kept its state (running statistics, counter, parameters).

A rank stuck in a call for HANG seconds dumps its stack (faulthandler) and
exits, so the job ends and the test shows where it hung.  Rank 0 prints one
line per case and a summary; every rank exits with the number of failures
(capped at 100).
"""
import faulthandler
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

import fastbn

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
size = comm.Get_size()
DEADLINE = 10.0  # seconds: the failing call must end on every rank within this
HANG = 60        # seconds: a rank stuck this long dumps its stack and exits
C = 4
TOL = 1e-10      # float64 results against the single-process reference

# the global batch, the same on every rank; rank r holds r + 1 samples
SIZES = [r + 1 for r in range(size)]
LO = sum(SIZES[:rank])
HI = LO + SIZES[rank]
_rng = np.random.default_rng(1234)
X = _rng.standard_normal((sum(SIZES), C, 3, 2)) * 2 + 7
DY = _rng.standard_normal(X.shape)
GAMMA = _rng.uniform(0.5, 1.5, C)
BETA = _rng.standard_normal(C)
XL, DYL = X[LO:HI], DY[LO:HI]
FLIST = "float32 or float64"


def ranks_text(ranks):
    """How the messages name a set of ranks: 'rank 2', 'ranks 0-1', 'ranks 1, 3'."""
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return "ranks " + ", ".join(map(str, ranks))


class Case:
    """One error case.

    call(c)     the call this rank makes, with c = comm, or with c = None
                for the local reference of a failing rank's own exception.
    fails       ranks whose arguments are bad (they raise their own
                exception, the others RuntimeError), or None when every rank
                must raise ``everywhere = (type, [substrings])``.
    setup()     collective work before the timed call (optional).
    layer       the case calls the group's persistent layer: its state must
                survive the failed call.
    """

    def __init__(self, name, call, fails=None, everywhere=None, setup=None,
                 layer=False):
        self.name, self.call, self.fails = name, call, fails
        self.everywhere, self.setup, self.layer = everywhere, setup, layer


def bad_on(ranks, bad, good):
    """bad on the given ranks, good elsewhere."""
    return bad if rank in ranks else good


def last():
    return size - 1


# ---------------------------------------------------------------- forward
def forward_cases():
    def train(x=None, c=None, **kw):
        return fastbn.batch_norm_train(XL if x is None else x, GAMMA, BETA,
                                       comm=c, **kw)
    F = {last()}
    return [
        Case("bad shape (x is 1-D)", lambda c: train(
            bad_on(F, np.ones(6), XL), c), fails=F),
        Case("x not an array", lambda c: train(
            bad_on({0}, XL.tolist(), XL), c), fails={0}),
        Case("bad dtype (int32 x)", lambda c: train(
            bad_on({1}, XL.astype(np.int32), XL), c), fails={1}),
        Case("NaN eps", lambda c: train(
            c=c, eps=bad_on({1}, float("nan"), 1e-5)), fails={1}),
        Case("wrong channel count of gamma", lambda c: fastbn.batch_norm_train(
            XL, bad_on(F, np.ones(C + 1), GAMMA), BETA, comm=c), fails=F),
        Case("axis out of bounds", lambda c: train(
            c=c, axis=bad_on({0}, 7, 1)), fails={0}),
        Case("residual of another shape", lambda c: train(
            c=c, residual=bad_on(F, np.ones((1, C, 3, 3)), np.zeros_like(XL))),
            fails=F),
        Case("out of another dtype", lambda c: train(
            c=c, out=bad_on({0}, np.empty(XL.shape, np.float32), None)), fails={0}),
        Case("int8 residual", lambda c: train(
            c=c, residual=bad_on(F, np.zeros(XL.shape, np.int8), None)), fails=F),
        # rank 0's local batch is empty (valid: it contributes nothing)
        Case("bad eps next to an empty rank", lambda c: train(
            bad_on({0}, X[:0], XL), c, eps=bad_on(F, -1.0, 1e-5)), fails=F),
    ]


# --------------------------------------------------------------- backward
MEAN, VAR = fastbn.batch_stats(X)
INVSTD = 1.0 / np.sqrt(VAR + 1e-5)


def backward_cases():
    def bwd(c, dy=None, x=None, mean=MEAN, invstd=INVSTD, **kw):
        return fastbn.batch_norm_backward(DYL if dy is None else dy,
                                          XL if x is None else x, mean, invstd,
                                          GAMMA, comm=c, **kw)
    F = {last()}
    return [
        Case("bad shape (dy)", lambda c: bwd(
            c, dy=bad_on(F, DYL[:, :, :2], DYL)), fails=F),
        Case("bad dtype (complex x)", lambda c: bwd(
            c, x=bad_on({0}, XL.astype(np.complex128), XL)), fails={0}),
        Case("wrong channel count of mean", lambda c: bwd(
            c, mean=bad_on({1}, np.zeros(C + 1), MEAN)), fails={1}),
        Case("invstd missing", lambda c: bwd(
            c, invstd=bad_on(F, None, INVSTD)), fails=F),
        Case("y of another shape", lambda c: bwd(
            c, y=bad_on({0}, np.ones((2, 2)), None)), fails={0}),
        Case("bool dy", lambda c: bwd(
            c, dy=bad_on({0}, DYL > 0, DYL)), fails={0}),
        Case("complex y", lambda c: bwd(
            c, y=bad_on(F, XL.astype(np.complex128), None)), fails=F),
        Case("read-only out", lambda c: bwd(
            c, out=_readonly(np.zeros_like(XL)) if rank in F else None), fails=F),
    ]


def _readonly(a):
    a.flags.writeable = False
    return a


# ------------------------------------------------------------------ layer
# the group's persistent synchronised layer and its single-process twin
LAYER = REF = None


def make_layers():
    global LAYER, REF
    kw = dict(dtype=np.float64, relu=True, momentum=0.3)
    LAYER = fastbn.BatchNorm(C, comm=comm, **kw)
    REF = fastbn.BatchNorm(C, **kw)
    for b in (LAYER, REF):
        b.gamma[...] = GAMMA
        b.beta[...] = BETA


def layer_step():
    """A correct step of both layers (the synchronised one on the local part)."""
    LAYER(XL)
    REF(X)


def layer_cases():
    F = {last()}

    def layer(c):
        """The persistent layer, or a local one for the reference exception."""
        return LAYER if c is not None else fastbn.BatchNorm(C, dtype=np.float64)

    def fresh_backward(c):
        # this rank never ran a forward through its layer
        return fastbn.BatchNorm(C, dtype=np.float64, comm=c).backward(DYL)

    def forwarded(c):
        if c is not None:
            return LAYER
        b = fastbn.BatchNorm(C, dtype=np.float64)
        b(XL)
        return b

    return [
        Case("wrong channel count of x", lambda c: layer(c)(
            bad_on(F, np.ones((2, C + 1, 3, 2)), XL)), fails=F, layer=True),
        Case("bad shape (x is 1-D)", lambda c: layer(c)(
            bad_on({0}, np.ones(5), XL)), fails={0}, layer=True),
        Case("bad dtype (complex x)", lambda c: layer(c)(
            bad_on({1}, XL.astype(np.complex64), XL)), fails={1}, layer=True),
        Case("residual of another shape", lambda c: layer(c)(
            XL, bad_on(F, np.ones((1, C)), np.zeros_like(XL))), fails=F, layer=True),
        Case("int64 residual", lambda c: layer(c)(
            XL, bad_on({0}, np.zeros(XL.shape, np.int64), np.zeros_like(XL))),
            fails={0}, layer=True),
        Case("backward: int16 dy", lambda c: forwarded(c).backward(
            bad_on(F, DYL.astype(np.int16), DYL)), fails=F, setup=layer_step,
            layer=True),
        Case("backward: dy of another shape", lambda c: forwarded(c).backward(
            bad_on({0}, np.ones((3, C)), DYL)), fails={0}, setup=layer_step,
            layer=True),
        Case("backward before any forward", lambda c: fresh_backward(c)
             if rank in F else LAYER.backward(DYL), fails=F, setup=layer_step,
             layer=True),
    ]


# ------------------------------------------- disagreement and combinations
def agree_cases():
    x5 = np.ones((2, C + 1, 3, 2))
    F2 = {0, 1} if size == 2 else {1, 2}  # two failing ranks (and a good one if P > 2)

    def several(c):
        if rank == min(F2):
            return fastbn.batch_norm_train(XL, eps=float("nan"), comm=c)
        if rank == max(F2):
            return fastbn.batch_norm_train(XL.astype(np.int64), comm=c)
        return fastbn.batch_norm_train(XL, comm=c)

    def layer_with(c, **kw):
        return fastbn.BatchNorm(kw.pop("C", C), comm=c, **kw)

    chan_msg = [f"{C + 1} on rank 0; {C} on {ranks_text(range(1, size))}",
                "every rank must pass x with the same number of channels"]
    dt_msg = [f"float64 on {ranks_text(range(size - 1))}; float32 on rank {last()}",
              "every rank must compute in the same dtype"]
    return [
        Case("forward: channel counts differ", lambda c: fastbn.batch_norm_train(
            bad_on({0}, x5, XL), comm=c),
            everywhere=(ValueError, ["disagree: the channel count of x differs"]
                        + chan_msg)),
        Case("forward: dtypes differ", lambda c: fastbn.batch_norm_train(
            bad_on({last()}, XL.astype(np.float32), XL), comm=c),
            everywhere=(ValueError, ["disagree: the dtype of x differs"] + dt_msg)),
        Case("backward: channel counts differ", lambda c: fastbn.batch_norm_backward(
            bad_on({0}, x5, DYL), bad_on({0}, x5, XL),
            bad_on({0}, np.zeros(C + 1), MEAN), bad_on({0}, np.ones(C + 1), INVSTD),
            comm=c),
            everywhere=(ValueError, ["synchronised batch norm backward",
                                     "channel count of x differs"] + chan_msg)),
        Case("backward: dtypes differ", lambda c: fastbn.batch_norm_backward(
            DYL, bad_on({last()}, XL.astype(np.float32), XL), MEAN, INVSTD, comm=c),
            everywhere=(ValueError, ["synchronised batch norm backward",
                                     "dtype of x differs"] + dt_msg)),
        Case("layers: num_features differ", lambda c: layer_with(
            c, C=bad_on({0}, C + 1, C), dtype=np.float64)(bad_on({0}, x5, XL)),
            everywhere=(ValueError, ["channel count of x differs"] + chan_msg)),
        Case("layers: dtypes differ", lambda c: layer_with(
            c, dtype=bad_on({last()}, np.float32, np.float64))(XL),
            everywhere=(ValueError, ["dtype of x differs"] + dt_msg)),
        Case("different calls (forward and backward)", lambda c:
             fastbn.batch_norm_train(XL, comm=c) if rank == 0 else
             fastbn.batch_norm_backward(DYL, XL, MEAN, INVSTD, comm=c),
             everywhere=(RuntimeError, [
                 "are in different calls",
                 "the forward (batch_norm_train, or BatchNorm in training mode) "
                 "on rank 0",
                 f"the backward (batch_norm_backward with training=True, or "
                 f"BatchNorm.backward) on {ranks_text(range(1, size))}"])),
        Case("two ranks fail differently", several, fails=F2),
        # a failure wins over a disagreement: rank 0 has another channel count
        Case("failure and disagreement", lambda c: fastbn.batch_norm_train(
            bad_on({0}, x5, XL), comm=c, eps=bad_on({last()}, 0.0, 1e-5)),
            fails={last()}),
    ]


GROUPS = {"forward": forward_cases, "backward": backward_cases,
          "layer": layer_cases, "agree": agree_cases}


# ----------------------------------------------------------------- checks
def close(what, a, e, problems):
    a, e = np.asarray(a), np.asarray(e)
    if a.shape != e.shape:
        problems.append(f"{what}: shape {a.shape} != {e.shape}")
        return
    scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
    err = float(np.max(np.abs(a - e), initial=0.0))
    if not err <= TOL * scale:
        problems.append(f"{what}: max error {err:.3g} (tol {TOL} x {scale:.3g})")


def correct_functional_call(problems):
    """comm works: one synchronised forward and backward equal single-process."""
    y0, m0, s0 = fastbn.batch_norm_train(X, GAMMA, BETA, relu=True)
    dx0, dg0, db0 = fastbn.batch_norm_backward(DY, X, m0, s0, GAMMA, y=y0)
    y1, m1, s1 = fastbn.batch_norm_train(XL, GAMMA, BETA, relu=True, comm=comm)
    dx1, dg1, db1 = fastbn.batch_norm_backward(DYL, XL, m1, s1, GAMMA, y=y1, comm=comm)
    for what, a, e in (("y", y1, y0[LO:HI]), ("mean", m1, m0), ("invstd", s1, s0),
                       ("dx", dx1, dx0[LO:HI]), ("dgamma", dg1, dg0),
                       ("dbeta", db1, db0)):
        close(f"next correct call: {what}", a, e, problems)


def layer_state(b):
    return [b.running_mean.copy(), b.running_var.copy(), b.num_batches_tracked,
            b.gamma.copy(), b.beta.copy()]


def correct_layer_step(problems):
    """comm works: one synchronised layer step equals the single-process twin."""
    y1 = LAYER(XL)
    y0 = REF(X)
    dx1 = LAYER.backward(DYL)
    dx0 = REF.backward(DY)
    for what, a, e in (("y", y1, y0[LO:HI]), ("dx", dx1, dx0[LO:HI]),
                       ("dgamma", LAYER.dgamma, REF.dgamma),
                       ("dbeta", LAYER.dbeta, REF.dbeta),
                       ("running_mean", LAYER.running_mean, REF.running_mean),
                       ("running_var", LAYER.running_var, REF.running_var)):
        close(f"next correct layer step: {what}", a, e, problems)
    if LAYER.num_batches_tracked != REF.num_batches_tracked:
        problems.append(f"num_batches_tracked {LAYER.num_batches_tracked} != "
                        f"{REF.num_batches_tracked}")


def outcome(fn):
    try:
        fn()
    except Exception as e:
        return e
    return None


def describe(e):
    return "no exception" if e is None else f"{type(e).__name__}: {e}"


def run_case(case):
    problems = []
    if case.setup is not None:
        case.setup()
    before = layer_state(LAYER) if case.layer else None
    comm.Barrier()
    t0 = time.perf_counter()
    got = outcome(lambda: case.call(comm))
    elapsed = time.perf_counter() - t0
    if elapsed > DEADLINE:
        problems.append(f"the call took {elapsed:.1f} s (> {DEADLINE} s)")
    if case.fails is not None:
        mine = None
        if rank in case.fails:
            ref = outcome(lambda: case.call(None))
            if not isinstance(ref, (TypeError, ValueError, RuntimeError)):
                problems.append(f"bad test: without comm the call gives "
                                f"{describe(ref)}")
            elif type(got) is not type(ref) or str(got) != str(ref):
                problems.append(f"expected this rank's own {describe(ref)}, got "
                                f"{describe(got)}")
            mine = describe(ref)
        # a collective right after the error: comm is usable
        messages = comm.allgather(mine)
        if rank not in case.fails:
            want = [f"failed on {ranks_text(case.fails)} of {size} in comm"]
            want += [m for m in messages if m is not None]
            if type(got) is not RuntimeError:
                problems.append(f"expected RuntimeError, got {describe(got)}")
            else:
                problems += [f"RuntimeError lacks {w!r}: {got}" for w in want
                             if w not in str(got)]
    else:
        etype, want = case.everywhere
        if type(got) is not etype:
            problems.append(f"expected {etype.__name__}, got {describe(got)}")
        else:
            problems += [f"{etype.__name__} lacks {w!r}: {got}" for w in want
                         if w not in str(got)]
    if case.layer:
        after = layer_state(LAYER)
        for what, a, b in zip(("running_mean", "running_var",
                               "num_batches_tracked", "gamma", "beta"), before, after):
            if not np.array_equal(a, b):
                problems.append(f"the failed call changed the layer's {what}")
        correct_layer_step(problems)
    else:
        correct_functional_call(problems)
    return type(got).__name__ if got is not None else "-", elapsed, problems


def main(group):
    cases = GROUPS[group]()
    if group == "layer":
        make_layers()
        layer_step()  # non-trivial running statistics from the start
    nfail = 0
    for case in cases:
        if rank == 0:
            print(f"case {group}/{case.name}: start", flush=True)
        faulthandler.dump_traceback_later(HANG, exit=True)
        try:
            got, elapsed, problems = run_case(case)
        except Exception:
            got, elapsed = "-", 0.0
            problems = ["unexpected exception:\n" + traceback.format_exc()]
        faulthandler.cancel_dump_traceback_later()
        everyone = comm.gather((got, elapsed, problems), root=0)
        if rank == 0:
            raised = ", ".join(f"rank {r} {g}" for r, (g, _, _) in enumerate(everyone))
            slowest = max(e for _, e, _ in everyone)
            bad = [f"    rank {r}: {p}" for r, (_, _, ps) in enumerate(everyone)
                   for p in ps]
            print(f"case {group}/{case.name}: {'FAIL' if bad else 'ok'} ({raised}; "
                  f"slowest rank {slowest * 1e3:.1f} ms)", flush=True)
            for line in bad:
                print(line, flush=True)
            nfail += bool(bad)
    nfail = comm.bcast(nfail, root=0)
    if rank == 0:
        print(f"mpi_errors_worker: {group}: {len(cases)} cases, {nfail} failed, "
              f"on {size} ranks", flush=True)
    return nfail


if __name__ == "__main__":
    try:
        n = main(sys.argv[1])
    except BaseException:
        sys.stdout.flush()
        print(f"[rank {rank}/{size}] unexpected exception:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(101)
    sys.exit(min(n, 100))
