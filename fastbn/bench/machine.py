"""What the report's header says about the machine and the software."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import platform
from typing import Dict, List, Optional, Tuple

import numpy as np

from .workloads import fmt_bytes


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    fields: Dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
    if "model name" in fields:
        extra = ""
        if "cpu family" in fields and "model" in fields:
            extra = " (family %s, model %s)" % (fields["cpu family"],
                                                fields["model"])
        return fields["model name"] + extra
    return platform.processor() or platform.machine()


def cache_info() -> str:
    """Cache sizes of cpu0 from sysfs, e.g. 'L1d 32K (cpus 0), L2 1024K
    (cpus 0), L3 32768K (cpus 0-1)'."""
    parts = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        level, kind = _read(d + "/level"), _read(d + "/type")
        size, shared = _read(d + "/size"), _read(d + "/shared_cpu_list")
        if not level or kind == "Instruction":
            continue
        name = "L%s%s" % (level, "d" if kind == "Data" else "")
        parts.append("%s %s (cpus %s)" % (name, size, shared))
    return ", ".join(parts) or "unknown"


def planned_caches(fastbn) -> str:
    """'' or, when the plans are forced to other cache sizes (--l2, --l3),
    '; fastbn plans for L1d 48K, L2 1024K, L3 ... (forced)'."""
    try:
        from fastbn import _kernels
    except ImportError:
        return ""
    forced = [k for k, v in getattr(_kernels, "_forced", {}).items()
              if k in ("l1", "l2", "l3") and v is not None]
    if not forced:
        return ""
    sizes = ", ".join("%s %dK" % (name, size // 1024) for name, size in
                      zip(("L1d", "L2", "L3"), _kernels.cache_sizes()))
    return "; fastbn plans for %s (%s forced)" % (sizes, "/".join(forced).upper())


def fastbn_config(fastbn) -> str:
    """What fastbn.show_config() prints (or returns), on one line."""
    if not hasattr(fastbn, "show_config"):
        return "show_config() not available"
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            ret = fastbn.show_config()
    except Exception as exc:
        return "show_config() failed: %r" % (exc,)
    if isinstance(ret, dict):  # prefer the structured answer
        text = "\n".join("%s: %s" % kv for kv in ret.items())
    elif isinstance(ret, str):
        text = ret
    else:
        text = buf.getvalue()
    return "; ".join(line.strip() for line in text.splitlines()
                     if line.strip())


def blas_info() -> str:
    """NumPy's BLAS library and its thread count (from threadpoolctl, when
    installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "none found"
    return ", ".join("%s %s (%s), %s threads" % (
        i.get("internal_api", "?"), i.get("version", "?"),
        i.get("threading_layer", "?"), i.get("num_threads", "?"))
        for i in libs)


def machine_info(fastbn, torch, threads: int) -> List[Tuple[str, str]]:
    """(label, value) pairs for the report header."""
    ncpu = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = ncpu
    mem = ""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = ", %s RAM" % fmt_bytes(int(line.split()[1]) * 1024)
    try:
        loads = os.getloadavg()
        load = "%.2f %.2f %.2f" % loads
        if loads[0] > 0.5:
            load += " -- the machine is busy: expect noisy numbers"
    except OSError:
        load = "n/a"
    return [
        ("CPU", "%s, %d logical CPUs (%d usable)%s" % (cpu_model(), ncpu,
                                                        usable, mem)),
        ("caches", cache_info() + planned_caches(fastbn)),
        ("load average", load),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("NumPy", "%s, BLAS: %s" % (np.__version__, blas_info())),
        ("fastbn", getattr(fastbn, "__version__", "?")),
        ("PyTorch", torch.__version__ if torch is not None else "not used"),
        ("threads", "fastbn %d, torch %s" % (
            threads, torch.get_num_threads() if torch is not None else "-")),
        ("fastbn.show_config()", fastbn_config(fastbn)),
    ]


def _cpu_seconds() -> Optional[Tuple[float, float]]:
    """(busy, idle) CPU seconds of the whole machine since boot, summed over
    CPUs, from /proc/stat (Linux); busy includes the hypervisor's steal."""
    fields = _read("/proc/stat").split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]]
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return ((user + nice + system + irq + softirq + steal) / tick,
            (idle + iowait) / tick)


class OtherLoad:
    """CPU time that other processes (and the hypervisor's steal) used while
    this process measured: started at construction, read by :meth:`share`.
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        t = os.times()
        return _cpu_seconds(), t.user + t.system

    def share(self) -> Optional[float]:
        """Others' CPU time / all CPUs' time since the start (0 to 1), or
        None where /proc/stat is not available."""
        (cpu0, own0), (cpu1, own1) = self._start, self._sample()
        if cpu0 is None or cpu1 is None:
            return None
        busy = cpu1[0] - cpu0[0]
        total = busy + cpu1[1] - cpu0[1]
        if total <= 0:
            return None
        return min(1.0, max(0.0, (busy - (own1 - own0)) / total))


def other_load_text(shares: Dict[str, Optional[float]]) -> str:
    """'kernels 3%, sweep 41% (busy)' for the report's header."""
    parts = []
    for name, v in shares.items():
        if v is None:
            parts.append("%s n/a" % name)
        else:
            parts.append("%s %.0f%%%s" % (name, 100 * v,
                                           " (busy)" if v > 0.1 else ""))
    return ", ".join(parts)
