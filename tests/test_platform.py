"""The instruction sets fastbn finds on this CPU (read from CPUID and XGETBV
in csrc/portable.h, not with compiler builtins) against what the operating
system reports in /proc/cpuinfo.

Which build is expected comes from the environment, as in test_build.py:

    FASTBN_EXPECT_DISPATCH=1  (default) runtime dispatch was compiled in
                              (x86-64 with GCC or clang): every level the CPU
                              supports is offered.
    FASTBN_EXPECT_DISPATCH=0  the build MSVC makes (no dispatch; CI makes it
                              with FBN_NO_DISPATCH): baseline only.
"""
import os
import platform

import pytest

import fastbn
from fastbn import _kernels

EXPECT_DISPATCH = os.environ.get("FASTBN_EXPECT_DISPATCH", "1").strip() == "1"


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


FLAGS = _cpuinfo_flags()
X86_LINUX = FLAGS is not None and platform.machine() in ("x86_64", "AMD64")


def _expected_levels(flags):
    """The levels fastbn's kernels need, from the kernel's feature flags
    (which already leave out what the OS does not enable)."""
    levels = ["baseline"]
    if {"avx2", "f16c"} <= flags:
        levels.append("avx2")
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
            levels.append("avx512")
            if "avx512_bf16" in flags:
                levels.append("avx512bf16")
    return levels


@pytest.mark.skipif(not X86_LINUX, reason="needs x86-64 Linux's /proc/cpuinfo")
def test_levels_match_the_cpu():
    want = _expected_levels(FLAGS) if EXPECT_DISPATCH else ["baseline"]
    assert _kernels.simd_available() == want


@pytest.mark.skipif(not X86_LINUX, reason="needs x86-64 Linux's /proc/cpuinfo")
def test_best_level_is_chosen_by_default():
    old = _kernels.simd()
    try:
        _kernels.set_simd("auto")
        want = _expected_levels(FLAGS)[-1] if EXPECT_DISPATCH else "baseline"
        assert _kernels.simd() == want
    finally:
        _kernels.set_simd(old)


def test_show_config_names_the_levels(capsys):
    fastbn.show_config()
    out = capsys.readouterr().out
    for level in _kernels.simd_available():
        assert level in out
