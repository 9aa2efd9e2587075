"""pytest-benchmark suites for fastbn (run explicitly: ``pytest bench/``).

The workloads, inputs, float64 references and implementations come from
the ``fastbn.bench`` package (the ``python -m fastbn.bench`` report), so
both measure the same thing.  Each test is one (workload, threads,
implementation) case; the benchmark group is (mode, layout, shape, dtype,
threads), so ``pytest bench/`` prints fastbn, NumPy as users write it,
tuned NumPy, the copies (the floor: np.copyto on 1 thread and split over
the group's thread count) and PyTorch eager (when installed) side by side.

Every benchmark body checks its result against the float64 reference, so
``pytest bench/ --benchmark-disable`` is a quick correctness smoke run.

Options: ``--bench-threads 1,2`` (thread counts; default 1 and
fastbn.get_num_threads()), ``--bench-workloads KEY,...`` (kernel workloads,
default all, see ``python -m fastbn.bench --help``), ``--bench-sweep
none|quick|all`` (rows of the shape sweep in test_bench_sweep.py, default
quick), ``--bench-no-torch``.
"""

import os

import pytest

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # the suites need the plugin; say so instead of erroring
    collect_ignore_glob = ["test_bench_*.py"]

    def pytest_report_header(config):
        return ("bench/: pytest-benchmark is not installed, benchmark suites "
                "skipped (pip install pytest-benchmark)")

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser):
    group = parser.getgroup("fastbn benchmarks")
    group.addoption("--bench-threads", default=None,
                    help="comma-separated thread counts (default: 1 and "
                         "fastbn.get_num_threads())")
    group.addoption("--bench-workloads", default=None,
                    help="comma-separated workload keys from fastbn.bench "
                         "(default: all)")
    group.addoption("--bench-sweep", default="quick",
                    choices=("none", "quick", "all"),
                    help="shape-sweep rows for test_bench_sweep.py: none, "
                         "the --quick subset (default) or all")
    group.addoption("--bench-no-torch", action="store_true",
                    help="leave PyTorch out even if it is installed")


_IMPORT_ERROR = []


def _fastbn():
    """The installed fastbn, or None (the reason goes to _IMPORT_ERROR)."""
    try:
        import fastbn
        import fastbn.bench  # noqa: F401
    except ImportError as exc:
        _IMPORT_ERROR[:] = ["fastbn cannot be imported (%s); install it and "
                            "run the pytest script outside the source tree's "
                            "sys.path" % exc]
        return None
    return fastbn


def _thread_counts(config, fastbn):
    opt = config.getoption("--bench-threads")
    if opt:
        return sorted({int(t) for t in opt.split(",") if t.strip()})
    n = fastbn.get_num_threads() if fastbn is not None else os.cpu_count()
    return sorted({1, max(1, int(n or 1))})


def _torch_available(config):
    if config.getoption("--bench-no-torch"):
        return False
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def _impl_names(w, threads, with_torch):
    """The kernel suites' implementations of one case."""
    names = ["fastbn (out=)"]
    if w.main:
        names.append("fastbn")
    names += ["numpy", "numpy tuned", "np.copyto (1 thread)"]
    if threads > 1:
        names.append("np.copyto (%d threads)" % threads)
    if with_torch:
        names.append("torch eager")
    return names


def _sweep_names(threads, with_torch):
    """The sweep suite's implementations of one case."""
    from fastbn.bench.impls import threads_name
    t = threads_name(threads)
    names = ["fastbn (%s)" % t, "np.copyto (1 thread)"]
    if threads > 1:
        names.append("np.copyto (%s)" % t)
    if with_torch:
        names.append("torch eager (%s)" % t)
    return names


def _slug(name):
    return (name.replace("np.copyto", "copy").replace(" (out=)", "-out")
            .replace(" threads)", "t").replace(" thread)", "t")
            .replace(" (", "-").replace(" ", "-"))


def pytest_generate_tests(metafunc):
    """Parametrise ``bench_case`` with (workload, threads, implementation,
    sweep) for the modes a test module lists in ``MODES`` (and ``TINY``),
    or the sweep's rows when the module sets ``SWEEP = True``."""
    if "bench_case" not in metafunc.fixturenames:
        return
    fastbn = _fastbn()
    if fastbn is None:
        # a smoke run must not pass by skipping everything: fail instead
        metafunc.parametrize("bench_case", [pytest.param(
            ("import-error", _IMPORT_ERROR[0]), id="import-fastbn")])
        return
    from fastbn.bench import WORKLOADS, sweep_workloads
    config = metafunc.config
    sweep = getattr(metafunc.module, "SWEEP", False)
    with_torch = _torch_available(config)
    if sweep:
        which = config.getoption("--bench-sweep")
        workloads = [] if which == "none" else sweep_workloads(
            quick=which == "quick")
    else:
        modes = getattr(metafunc.module, "MODES", ("train", "infer",
                                                   "backward"))
        tiny = getattr(metafunc.module, "TINY", False)
        only = config.getoption("--bench-workloads")
        only = [k.strip() for k in only.split(",")] if only else None
        workloads = [w for w in WORKLOADS if w.mode in modes and
                     w.tiny == tiny and not (only and w.key not in only)]
    cases = []
    for w in workloads:
        for t in _thread_counts(config, fastbn):
            names = (_sweep_names(t, with_torch) if sweep else
                     _impl_names(w, t, with_torch))
            for name in names:
                cases.append(pytest.param(
                    (w, t, name, sweep),
                    id="%s-t%d-%s" % (w.key, t, _slug(name))))
    if not cases:
        cases = [pytest.param(None, marks=pytest.mark.skip(
            reason="no workload selected"))]
    metafunc.parametrize("bench_case", cases)


def pytest_collection_modifyitems(config, items):
    """Benchmarks only run when bench/ (or a file in it) is named on the
    command line, never as part of a plain ``pytest`` of the whole tree."""
    named = False
    for arg in config.args:
        path = os.path.abspath(str(arg).split("::")[0])
        if path == HERE or path.startswith(HERE + os.sep):
            named = True
    if named:
        return
    skip = pytest.mark.skip(reason="benchmarks run explicitly: pytest bench/")
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(skip)


class _InputCache:
    """Inputs and reference of the most recent workload (cases are ordered
    by workload, so one entry suffices and memory stays bounded)."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, w):
        from fastbn.bench import make_inputs, reference
        if self.key != w:
            self.key, self.value = None, None
            inp = make_inputs(w)
            self.key, self.value = w, (inp, reference(w, inp))
        return self.value


@pytest.fixture(scope="session")
def _bench_inputs():
    return _InputCache()


@pytest.fixture
def bench_run(request, _bench_inputs):
    """Return ``run(benchmark, case)``: benchmark one case and check its
    result against the float64 reference."""
    fastbn = _fastbn()

    def run(benchmark, case):
        if case[0] == "import-error":
            pytest.fail(case[1])
        from fastbn.bench import build_impls, check_result
        from fastbn.bench.impls import build_sweep_impls
        w, threads, name, sweep = case
        if w.mode == "backward" and name.startswith("fastbn") and \
                not hasattr(fastbn, "batch_norm_backward"):
            pytest.skip("fastbn.batch_norm_backward is not available yet")
        torch = None
        if name.startswith("torch"):
            torch = pytest.importorskip("torch")
        inp, ref = _bench_inputs.get(w)
        if sweep:
            impls = build_sweep_impls(w, inp, fastbn, [threads], torch)
        else:
            impls = build_impls(w, inp, fastbn, threads, torch,
                                compare_one_thread=False)
        impl = next(i for i in impls if i.name == name)
        benchmark.group = "%s-threads%d" % (w.group, threads)
        benchmark.name = name
        benchmark.extra_info.update(
            workload=w.key, threads=threads, bytes=w.nbytes,
            min_bytes_moved=w.min_bytes)
        old_torch = torch.get_num_threads() if torch is not None else None
        try:
            with impl.setup():  # fastbn's or torch's thread count
                impl.fn()  # warm-up
                result = benchmark(impl.fn)
        finally:
            if torch is not None:
                torch.set_num_threads(old_torch)
        ok, err, msg = check_result(impl, w, ref, result)
        assert ok, "%s on %s (%d threads): %s" % (name, w.key, threads, msg)

    return run
