"""Thread-count policy and build information.

The kernels take their thread count as an argument at every call; this
module decides it.  Without a fastbn setting it is OpenMP's
``omp_get_max_threads()`` of the calling thread, so ``OMP_NUM_THREADS`` and
threadpoolctl's limits apply.  ``set_num_threads`` overrides that for the
whole process.  fastbn never calls ``omp_set_num_threads``.

The work itself runs on fastbn's caller-runs pool (csrc/pool.c), which a
forked child rebuilds for itself.  Only with ``FASTBN_SCHEDULER=openmp``
do the kernels enter OpenMP parallel regions; libgomp is not fork-safe
after one, so then use the "spawn" or "forkserver" start method, or
``OMP_NUM_THREADS=1`` in forked children.
"""
import contextlib
import operator

from . import _kernels
from ._version import __version__

_setting = None  # None: follow OpenMP


def get_num_threads():
    """Number of threads the next fastbn call will use."""
    if _setting is not None:
        return _setting
    return _kernels.omp_max_threads()


def _nthreads():
    # the hot-path version of get_num_threads
    s = _setting
    return s if s is not None else _kernels.omp_max_threads()


def set_num_threads(n):
    """Use ``n`` threads in fastbn's kernels; ``None`` follows OpenMP again.

    Returns the previous setting (``None`` if there was none).
    """
    global _setting
    if n is not None:
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(
                f"n must be a positive integer or None, got {type(n).__name__}"
            ) from None
        if n < 1:
            raise ValueError(f"n must be a positive integer or None, got {n}")
    old, _setting = _setting, n
    return old


@contextlib.contextmanager
def num_threads(n):
    """Context manager: ``with fastbn.num_threads(2): ...`` sets the thread
    count for the block and restores the previous setting afterwards."""
    old = set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(old)


def config():
    """Build and runtime information as a dict (see show_config)."""
    import numpy

    return {
        "version": __version__,
        "numpy": numpy.__version__,
        "openmp": _kernels.have_openmp(),
        "openmp_version": _kernels.openmp_version(),
        "openmp_runtime": _openmp_runtime(),
        "threads": get_num_threads(),
        "thread_setting": _setting,
        "scheduler": _kernels.scheduler(),
        "caches": dict(zip(("L1d", "L2", "L3"), _kernels.cache_sizes())),
        "compiler": _kernels.build_info().split("; ")[0],
        "simd_baseline": _kernels.build_info().split("; ")[-1],
        "simd": _kernels.simd(),
        "simd_available": _kernels.simd_available(),
    }


def _openmp_runtime():
    """Name and path of the OpenMP runtime library loaded in this process."""
    if not _kernels.have_openmp():
        return None
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "omp" in line.rsplit("/", 1)[-1]}
        libs = sorted(p for p in libs if p.endswith(".so") or ".so." in p)
        if libs:
            return ", ".join(libs)
    except OSError:
        pass
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            if info.get("user_api") == "openmp":
                return f"{info.get('internal_api')} ({info.get('filepath')})"
    except ImportError:
        pass
    return "unknown"


def show_config(file=None):
    """Print fastbn's version, OpenMP status and runtime, threads, compiler
    and SIMD baseline; also return them as a dict."""
    import sys

    cfg = config()
    omp = (f"yes (OpenMP {cfg['openmp_version']}), runtime {cfg['openmp_runtime']}"
           if cfg["openmp"] else "no (serial build)")
    setting = ("fastbn.set_num_threads" if cfg["thread_setting"] is not None
               else "OpenMP default")
    caches = ", ".join(f"{k} {v >> 10} KB" if v else f"{k} unknown"
                       for k, v in cfg["caches"].items())
    lines = [
        f"fastbn {cfg['version']}",
        f"  numpy:    {cfg['numpy']}",
        f"  OpenMP:   {omp}",
        f"  threads:  {cfg['threads']} ({setting}), scheduled by the "
        f"{cfg['scheduler']}" + (" (caller-runs)" if cfg["scheduler"] == "pool" else ""),
        f"  caches:   {caches}",
        f"  compiler: {cfg['compiler']}",
        f"  SIMD:     {cfg['simd']} kernels in use (available: "
        f"{', '.join(cfg['simd_available'])}; compiled baseline "
        f"{cfg['simd_baseline']}; FASTBN_SIMD chooses)",
    ]
    print("\n".join(lines), file=file if file is not None else sys.stdout)
    return cfg
