"""The build under test: compiled with OpenMP and really running on several
threads (fastbn's pool runs the work; OpenMP gives the thread count), or a
serial build that says so and still works.

Which build is expected comes from the environment, so that the same suite
checks both builds that CI makes:

    FASTBN_EXPECT_OPENMP=1   (default) the kernels were compiled with OpenMP:
                             show_config names the runtime, threadpoolctl
                             controls it, and a large call runs on more than
                             one OS thread.
    FASTBN_EXPECT_OPENMP=0   serial build (FASTBN_OPENMP=0): show_config says
                             OpenMP is off, one thread, no thread is started.
    FASTBN_EXPECT_VENDORED_OPENMP=1
                             (set when testing a repaired wheel) the OpenMP
                             runtime in use is the copy bundled in the wheel
                             (fastbn.libs/ or fastbn/.dylibs/), not a system
                             one.

Thread use is observed, never timed: the number of OS threads of a fresh
process (Linux's /proc/self/task) before and after one large kernel call.
"""
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastbn


def _flag(name, default):
    value = os.environ.get(name, default).strip()
    if value not in ("0", "1"):
        raise pytest.UsageError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


EXPECT_OPENMP = _flag("FASTBN_EXPECT_OPENMP", "1")
EXPECT_VENDORED = _flag("FASTBN_EXPECT_VENDORED_OPENMP", "0")
HAVE_PROC_TASKS = os.path.isdir("/proc/self/task")

openmp_only = pytest.mark.skipif(not EXPECT_OPENMP,
                                 reason="FASTBN_EXPECT_OPENMP=0: serial build")
serial_only = pytest.mark.skipif(EXPECT_OPENMP,
                                 reason="OpenMP build expected")


@pytest.fixture
def follow_openmp():
    """No fastbn thread setting during the test (restored afterwards)."""
    old = fastbn.set_num_threads(None)
    yield
    fastbn.set_num_threads(old)


def _config():
    buf = io.StringIO()
    cfg = fastbn.show_config(file=buf)
    return cfg, buf.getvalue()


@openmp_only
def test_show_config_reports_openmp_and_names_the_runtime():
    cfg, text = _config()
    assert cfg["openmp"] is True, (
        "fastbn was built without OpenMP, but FASTBN_EXPECT_OPENMP is not 0; "
        f"show_config says:\n{text}")
    assert cfg["openmp_version"] >= 200203  # OpenMP 2.0 (MSVC) or newer
    runtime = cfg["openmp_runtime"]
    assert runtime and runtime != "unknown", text
    assert "omp" in runtime.lower(), runtime  # libgomp, libomp, vcomp...
    assert "OpenMP:   yes" in text and runtime in text, text


@serial_only
def test_serial_build_says_openmp_is_off(follow_openmp):
    cfg, text = _config()
    assert cfg["openmp"] is False, (
        "FASTBN_EXPECT_OPENMP=0 but this fastbn was built with OpenMP; "
        f"show_config says:\n{text}")
    assert cfg["openmp_version"] == 0
    assert cfg["openmp_runtime"] is None
    assert "no (serial build)" in text
    assert fastbn.get_num_threads() == 1


@openmp_only
def test_threadpoolctl_controls_the_runtime_fastbn_uses(follow_openmp):
    """threadpoolctl finds an OpenMP runtime in the process, and limiting it
    changes the thread count fastbn follows (so it is the same runtime)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    infos = [i for i in threadpoolctl.threadpool_info()
             if i.get("user_api") == "openmp"]
    assert infos, "threadpoolctl sees no OpenMP runtime after importing fastbn"
    for n in (1, 3):
        with threadpoolctl.threadpool_limits(limits=n, user_api="openmp"):
            assert fastbn.get_num_threads() == n


@pytest.mark.skipif(not EXPECT_VENDORED,
                    reason="FASTBN_EXPECT_VENDORED_OPENMP is not 1")
@openmp_only
def test_runtime_is_the_copy_bundled_in_the_wheel():
    cfg, text = _config()
    pkg = Path(fastbn.__file__).resolve().parent
    # auditwheel and delvewheel: fastbn.libs/ beside the package; delocate:
    # fastbn/.dylibs/
    bundled = [pkg.parent / "fastbn.libs", pkg / ".dylibs"]
    # show_config names the runtime as "path, path" (Linux) or
    # "api (path)" (threadpoolctl, elsewhere)
    paths = [p.strip() for p in re.split(r"[,()]", cfg["openmp_runtime"] or "")
             if "/" in p or "\\" in p]

    def norm(p):
        return os.path.normcase(os.path.realpath(p))

    assert any(norm(p).startswith(norm(d) + os.sep)
               for p in paths for d in bundled), (
        f"the OpenMP runtime in use is not the one bundled with fastbn "
        f"({' or '.join(map(str, bundled))}):\n{text}")


# A fresh interpreter: no OpenMP thread pool exists yet, and nothing else in
# the process starts threads (numpy's BLAS is not called).
_THREAD_PROBE = textwrap.dedent("""
    import os, sys
    import numpy as np
    import fastbn
    from fastbn import _reference

    def tasks():
        return len(os.listdir("/proc/self/task"))

    n = int(sys.argv[1])
    if n:
        fastbn.set_num_threads(n)
    # small call first: initialises the runtime (and any helper threads it
    # starts on its own), below the size that goes parallel; the pool's
    # helpers start with the first parallel call
    fastbn.batch_norm_train(np.ones((2, 4, 8, 8), np.float32))
    x = np.random.default_rng(0).standard_normal((16, 64, 32, 32)).astype(np.float32)
    before = tasks()
    y, mean, invstd = fastbn.batch_norm_train(x, relu=True)
    after = tasks()
    ref = _reference.batch_norm_train(x, relu=True)[0]
    assert np.allclose(y, ref, atol=1e-4), "wrong result"
    print(before, after, fastbn.get_num_threads())
""")


def _run_thread_probe(nthreads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT", "OMP_DYNAMIC"):
        env.pop(var, None)
    # import the same fastbn as this test session (installed or in place)
    site = str(Path(fastbn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (site, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _THREAD_PROBE, str(nthreads)], env=env,
        cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    before, after, used = map(int, proc.stdout.split()[-3:])
    return before, after, used


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROC_TASKS, reason="needs /proc/self/task (Linux)")
@pytest.mark.parametrize("nthreads", [0, 2], ids=["default", "explicit-2"])
def test_large_call_runs_on_more_than_one_os_thread(nthreads):
    """0: OpenMP's default thread count (all CPUs this process may use);
    2: fastbn.set_num_threads(2), which holds on any number of CPUs."""
    if EXPECT_OPENMP and nthreads == 0 and _cpus() < 2:
        pytest.skip("fewer than 2 CPUs available: OpenMP's default is 1 thread")
    before, after, used = _run_thread_probe(nthreads)
    if EXPECT_OPENMP:
        assert used >= 2
        assert after >= before + 1, (
            f"a call with {used} threads started no OS thread "
            f"({before} -> {after} threads)")
    else:
        assert used == (nthreads or 1)
        assert after == before, (
            f"the serial build started threads ({before} -> {after})")


def test_markers_are_registered(pytestconfig):
    """The suite's markers (tests/conftest.py) are registered, so that
    ``-m "not slow"`` selects what it says and no run warns of an unknown
    mark (a second pytest_configure in conftest.py once replaced the
    first)."""
    names = {m.split(":")[0].strip() for m in pytestconfig.getini("markers")}
    assert {"slow", "mpi", "torch", "keras"} <= names
