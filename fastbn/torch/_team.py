"""fastbn's kernels on PyTorch's own OpenMP threads.

PyTorch runs its operators on the thread team of its OpenMP runtime, whose
threads keep spinning for a while after each parallel region; fastbn's
pool has helper threads of its own.  With as many threads as cores, right
after a convolution fastbn's helper finds its core taken by a spinning
PyTorch thread, and fastbn's helpers, spinning after fastbn's call, take
cores from PyTorch's next operator.  ``use_torch_threads(True)`` (done at
``import fastbn.torch``) hands fastbn's pool PyTorch's runtime instead:
its ``GOMP_parallel``, ``omp_get_thread_num`` and ``omp_get_max_threads``
(libgomp's ABI, which LLVM's and Intel's runtimes also export), looked up
through PyTorch's loaded CPU library (``dlopen(RTLD_NOLOAD)``, ``dlsym``),
so nothing is loaded and nothing links PyTorch.  fastbn's jobs then run on the same threads as PyTorch's
operators, with the same items in the same ranges: the results are the
same bits.  Where no such runtime is found (Windows, a PyTorch built
without OpenMP), fastbn keeps its own helpers.
"""
import ctypes
import glob
import os

import torch

from .. import _kernels

__all__ = ["torch_openmp_runtime", "use_torch_threads", "torch_threads_on"]

_FOUND = []  # [torch_openmp_runtime()] once looked up
_ON = [False]  # whether fastbn's kernels run on PyTorch's threads now
_SYMBOLS = ("GOMP_parallel", "omp_get_thread_num", "omp_get_max_threads")


def _loaded(path):
    """The ctypes handle of the already-loaded library ``path``, or None."""
    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:  # pragma: no cover - not a POSIX system
        return None
    try:
        return ctypes.CDLL(path, mode=mode | os.RTLD_LAZY)
    except OSError:
        return None


def torch_openmp_runtime():
    """(library, (GOMP_parallel, omp_get_thread_num, omp_get_max_threads)
    addresses) of the OpenMP runtime PyTorch's operators run on, or None.

    The symbols are looked up through PyTorch's own CPU library
    (``torch/lib/libtorch_cpu``), already loaded, so they are those of the
    runtime it was bound to (its own libgomp, or one loaded before it
    under the same name)."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    for pattern in ("libtorch_cpu.so*", "libtorch_cpu.dylib"):
        for path in sorted(glob.glob(os.path.join(lib, pattern))):
            handle = _loaded(path)
            if handle is None:
                continue
            try:
                addrs = tuple(ctypes.cast(getattr(handle, s), ctypes.c_void_p).value
                              for s in _SYMBOLS)
            except AttributeError:
                continue
            if all(addrs):
                return path, addrs
    return None


def use_torch_threads(enable=True):
    """Run fastbn's multi-threaded kernels on PyTorch's OpenMP threads
    (``enable=True``) or on fastbn's own helper threads (False).

    Parameters
    ----------
    enable : bool, default True
        True: PyTorch's threads (set at ``import fastbn.torch``); False:
        fastbn's own helpers (as without ``fastbn.torch``).

    Returns
    -------
    bool
        True if fastbn's kernels now run on PyTorch's threads (False when
        ``enable`` is False or PyTorch's OpenMP runtime was not found).

    Raises
    ------
    TypeError
        ``enable`` is not a bool.

    Notes
    -----
    Process-wide: fastbn's NumPy functions use the same threads while it
    is on.  A child made with ``os.fork`` starts with it off (PyTorch's
    OpenMP threads do not exist there).  Call it while no fastbn kernel runs.  The number of threads of
    a call stays fastbn's (``fastbn.set_num_threads``, OMP_NUM_THREADS),
    capped by PyTorch's runtime's ``omp_get_max_threads()``; results do not
    depend on the threads either way.  On cores of its own a converted
    model was faster this way (fastbn's helpers and PyTorch's spinning
    threads no longer take each other's cores).  The runtime's parallel
    region ends with a join that waits for every thread: on a machine whose
    cores are busy with other processes fastbn's own pool (which never
    waits for a late helper) was faster; time your model both ways.

    Examples
    --------
    >>> import fastbn.torch as fbt
    >>> on = fbt.use_torch_threads(True)  # True where PyTorch's runtime is found
    >>> fbt.use_torch_threads(False)
    False
    >>> on = fbt.use_torch_threads(True)  # back to the default
    """
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be True or False, got {enable!r}")
    found = None
    if enable and _kernels.openmp_version() > 0:
        if not _FOUND:
            _FOUND.append(torch_openmp_runtime())
        found = _FOUND[0]
    if found is None:
        _kernels.set_team(0, 0, 0)
    else:
        _kernels.set_team(*found[1])
    _ON[0] = found is not None
    return _ON[0]


def _forked_child():
    """A forked child has none of the runtime's threads, and libgomp hangs
    in a parallel region there after the parent used one: the child's
    fastbn goes back to its own pool (which starts afresh in a child)."""
    _kernels.set_team(0, 0, 0)
    _ON[0] = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_child)


def torch_threads_on():
    """True while fastbn's kernels run on PyTorch's threads."""
    return _ON[0]
