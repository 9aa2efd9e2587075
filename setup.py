"""Build of fastbn's C kernels and Cython boundary.

Metadata lives in pyproject.toml; this file only describes the extension
and how OpenMP is found:

    FASTBN_OPENMP=auto  (default) probe the compiler: compile, link and run a
                        small OpenMP program; build serially with a warning
                        when that fails.
    FASTBN_OPENMP=1     require OpenMP (the build fails without it).
    FASTBN_OPENMP=0     build serially.
    FASTBN_DEBUG=1      -O1 -g, Cython bounds checks on.
    FASTBN_SANITIZE=1   also -fsanitize=address,undefined (needs the
                        sanitizer runtimes preloaded at run time).

    FASTBN_LIBOMP_PREFIX  macOS: where libomp lives (include/, lib/); when
                        unset, Homebrew's libomp is used if it is installed.

Flags are -O3 -g0 -ffp-contract=off: portable (no -march=native), IEEE
arithmetic (no -ffast-math), and no fused multiply-add contraction, so the
same expression rounds the same way wherever the compiler inlines it.

Cython runs inside build_ext and writes the generated C file into the build
directory, never into the source tree: making an sdist does not run Cython,
and the sdist ships the .pyx source only (no generated files).
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d %d\n", n, omp_get_max_threads());
    return n >= 1 ? 0 : 1;
}
"""


def _openmp_flags(compiler):
    """(compile flags, link flags) for OpenMP with this compiler."""
    ctype = compiler.compiler_type
    if ctype == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        # Apple clang: libomp from Homebrew or a prefix given by the builder
        prefix = os.environ.get("FASTBN_LIBOMP_PREFIX", "") or _brew_libomp()
        cflags = ["-Xpreprocessor", "-fopenmp"]
        ldflags = ["-lomp"]
        if prefix:
            cflags.append(f"-I{prefix}/include")
            ldflags = [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"]
        return cflags, ldflags
    return ["-fopenmp"], ["-fopenmp"]


def _brew_libomp():
    """Homebrew's libomp prefix on macOS, or "" when there is none."""
    for prefix in ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"):
        if os.path.exists(os.path.join(prefix, "include", "omp.h")):
            return prefix
    return ""


def _probe_openmp(compiler, cflags, ldflags):
    """Compile, link and run PROBE; return True if OpenMP works."""
    tmp = tempfile.mkdtemp(prefix="fastbn-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
        exe = os.path.join(tmp, "probe")
        compiler.link_executable(objs, exe, extra_postargs=ldflags)
        if sys.platform == "win32":
            exe += ".exe"
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        return out.returncode == 0
    except Exception as exc:  # compile, link or run failed
        print(f"fastbn: OpenMP probe failed: {exc}", file=sys.stderr)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that cythonizes, then adds optimisation and OpenMP flags per
    compiler."""

    def run(self):
        # imported here, so that commands that compile nothing (sdist, egg_info)
        # need neither Cython nor NumPy and generate no C file
        import numpy
        from Cython.Build import cythonize

        debug = os.environ.get("FASTBN_DEBUG", "0") == "1"
        directives = {
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": False,
            "initializedcheck": debug,
            "nonecheck": debug,
            "cdivision": True,
            "embedsignature": True,
        }
        for ext in self.extensions:
            if numpy.get_include() not in ext.include_dirs:
                ext.include_dirs.append(numpy.get_include())
        generated = cythonize(
            self.extensions, compiler_directives=directives,
            build_dir=os.path.join(self.build_temp, "cython"), quiet=True)
        # keep setuptools' Extension objects (finalize_options annotated them)
        # and take only the sources, .pyx replaced by the generated .c
        by_name = {ext.name: ext for ext in generated}
        for ext in self.extensions:
            ext.sources = list(by_name[ext.name].sources)
        super().run()

    def build_extensions(self):
        mode = os.environ.get("FASTBN_OPENMP", "auto").strip().lower()
        if mode not in ("0", "1", "auto"):
            raise SystemExit(f"FASTBN_OPENMP must be 0, 1 or auto, got {mode!r}")
        debug = os.environ.get("FASTBN_DEBUG", "0") == "1"
        sanitize = os.environ.get("FASTBN_SANITIZE", "0") == "1"
        msvc = self.compiler.compiler_type == "msvc"

        if msvc:
            cflags = ["/O2", "/fp:precise"]
            ldflags = []
        else:
            cflags = ["-O1", "-g"] if debug else ["-O3", "-g0"]
            cflags += ["-ffp-contract=off", "-fno-math-errno", "-Wno-unknown-pragmas",
                       "-pthread"]
            ldflags = ["-pthread"]
            if sanitize:
                san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
                cflags += san
                ldflags += san

        use_omp = False
        if mode != "0":
            ocflags, oldflags = _openmp_flags(self.compiler)
            use_omp = _probe_openmp(self.compiler, ocflags, oldflags)
            if use_omp:
                cflags += ocflags
                ldflags += oldflags
            elif mode == "1":
                raise SystemExit(
                    "fastbn: FASTBN_OPENMP=1 but the compiler cannot build and run "
                    "an OpenMP program (install libgomp or libomp, or set "
                    "FASTBN_OPENMP=0 for a serial build)")
            else:
                print("fastbn: WARNING: OpenMP not available; building the serial "
                      "kernels (set FASTBN_OPENMP=1 to make this an error)",
                      file=sys.stderr)
        if not use_omp and not msvc:
            # `omp simd` loops still vectorise without the OpenMP runtime
            cflags.append("-fopenmp-simd")
        print(f"fastbn: building with OpenMP={'on' if use_omp else 'off'}; "
              f"flags {' '.join(cflags)}", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = cflags
            ext.extra_link_args = ldflags
        super().build_extensions()


def extensions():
    return [Extension(
        "fastbn._kernels",
        # the C library split by job: status strings, OpenMP queries, the
        # caches and tuning, plans, the instantiated kernels, their dispatch,
        # the thread pool
        sources=["fastbn/_kernels.pyx", "csrc/status.c", "csrc/openmp.c",
                 "csrc/cache.c", "csrc/plan.c", "csrc/kernels.c", "csrc/dispatch.c",
                 "csrc/pool.c"],
        include_dirs=["csrc"],
        # every header: the kernels are templates included from several
        # places, so a change to any of them must rebuild
        depends=sorted(glob.glob("csrc/*.h")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
