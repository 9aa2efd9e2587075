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
import sys

from . import _kernels
from ._checks import count
from ._version import __version__

_setting = None  # None: follow OpenMP


def get_num_threads():
    """Number of threads the next fastbn call will use.

    Returns
    -------
    int
        The count set by :func:`set_num_threads` (or :func:`num_threads`),
        else OpenMP's ``omp_get_max_threads()`` of the calling thread, so
        ``OMP_NUM_THREADS`` and threadpoolctl's limits apply.

    See Also
    --------
    set_num_threads, num_threads

    Notes
    -----
    Small problems run on the calling thread alone whatever the count; the
    results are bitwise the same for every count.

    Examples
    --------
    >>> import fastbn
    >>> with fastbn.num_threads(1):
    ...     fastbn.get_num_threads()
    1
    """
    if _setting is not None:
        return _setting
    return _kernels.omp_max_threads()


def _nthreads():
    # the hot-path version of get_num_threads
    s = _setting
    return s if s is not None else _kernels.omp_max_threads()


def set_num_threads(n):
    """Set the number of threads of fastbn's kernels, for the whole process.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to follow OpenMP again
        (``OMP_NUM_THREADS``, threadpoolctl).

    Returns
    -------
    int or None
        The previous setting (None if there was none).

    Raises
    ------
    TypeError
        If ``n`` is not an integer or None.
    ValueError
        If ``n < 1``.

    See Also
    --------
    num_threads : the same for a ``with`` block.

    Notes
    -----
    fastbn never calls ``omp_set_num_threads`` and never changes other
    libraries' settings or the environment.

    Examples
    --------
    >>> import fastbn
    >>> old = fastbn.set_num_threads(2)
    >>> fastbn.get_num_threads()
    2
    >>> fastbn.set_num_threads(old)
    2
    """
    global _setting
    n = count(n, "n", or_none=True)
    old, _setting = _setting, n
    return old


@contextlib.contextmanager
def num_threads(n):
    """Context manager: a thread count for the block, restored afterwards.

    Parameters
    ----------
    n : int or None
        As for :func:`set_num_threads`.

    Yields
    ------
    None

    Raises
    ------
    TypeError, ValueError
        As :func:`set_num_threads`, on entering the block.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.ones((4, 3), np.float32)
    >>> with fastbn.num_threads(1):
    ...     mean, var = fastbn.batch_stats(x)
    >>> print(mean)
    [1. 1. 1.]
    """
    old = set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(old)


def config():
    """Build and runtime information as a dict (what :func:`show_config` prints).

    Returns
    -------
    dict
        ``version``, ``numpy``, ``openmp`` (bool), ``openmp_version``,
        ``openmp_runtime`` (the loaded library), ``threads``,
        ``thread_setting``, ``scheduler`` ("pool", "pool on torch" while
        fastbn.torch runs the pool's jobs on PyTorch's threads, "openmp" or
        "serial"), ``caches`` (bytes of L1d, L2, L3),
        ``compiler``, ``simd_baseline``, ``simd`` (the level in use) and
        ``simd_available``.

    Examples
    --------
    >>> import fastbn._threads
    >>> cfg = fastbn._threads.config()
    >>> cfg["simd"] in cfg["simd_available"]
    True
    """
    import numpy

    return {
        "version": __version__,
        "numpy": numpy.__version__,
        "openmp": _kernels.openmp_version() > 0,
        "openmp_version": _kernels.openmp_version(),
        "openmp_runtime": _openmp_runtime(),
        "threads": get_num_threads(),
        "thread_setting": _setting,
        "scheduler": _scheduler(),
        "caches": dict(zip(("L1d", "L2", "L3"), _kernels.cache_sizes())),
        "compiler": _kernels.build_info().split("; ")[0],
        "simd_baseline": _kernels.build_info().split("; ")[-1],
        "simd": _kernels.simd(),
        "simd_available": _kernels.simd_available(),
    }


def _scheduler():
    """The scheduler's name; "pool on torch" while fastbn.torch hands the
    pool's jobs to PyTorch's threads (fastbn.torch.use_torch_threads)."""
    name = _kernels.scheduler()
    team = sys.modules.get("fastbn.torch._team")
    if name == "pool" and team is not None and team.torch_threads_on():
        return "pool on torch"
    return name


def _openmp_runtime():
    """Name and path of the OpenMP runtime library loaded in this process."""
    if _kernels.openmp_version() == 0:
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
    """Print fastbn's build and runtime configuration.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default: ``sys.stdout``).

    Returns
    -------
    dict
        The printed information: version, NumPy version, whether OpenMP is on
        and which runtime library is loaded, the thread count and its
        source, the scheduler, the cache sizes, the compiler, the SIMD level
        in use and the levels available (``FASTBN_SIMD`` chooses).

    Examples
    --------
    >>> import io
    >>> import fastbn
    >>> buf = io.StringIO()
    >>> cfg = fastbn.show_config(file=buf)
    >>> buf.getvalue().startswith("fastbn " + fastbn.__version__)
    True
    >>> sorted(cfg)[:4]
    ['caches', 'compiler', 'numpy', 'openmp']
    """
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
        f"{cfg['scheduler']}" + ({"pool": " (caller-runs)", "pool on torch": (
            " (its jobs on PyTorch's OpenMP threads: fastbn.torch.use_torch_threads)")}
            .get(cfg["scheduler"], "")),
        f"  caches:   {caches}",
        f"  compiler: {cfg['compiler']}",
        f"  SIMD:     {cfg['simd']} kernels in use (available: "
        f"{', '.join(cfg['simd_available'])}; compiled baseline "
        f"{cfg['simd_baseline']}; FASTBN_SIMD chooses)",
    ]
    print("\n".join(lines), file=file if file is not None else sys.stdout)
    return cfg
