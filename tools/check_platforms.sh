#!/usr/bin/env bash
# The platforms fastbn's wheels claim, checked on one x86-64 Linux machine
# (CI runs this; it needs Debian's clang-14, libomp-14-dev,
# gcc-aarch64-linux-gnu and qemu-user-static, which .ci/run installs):
#
#  1. The C sources compile without a warning under -Wall -Wextra -Werror
#     with GCC, clang 14 (the oldest clang we support: no
#     __builtin_cpu_supports("f16c") before LLVM 18), the build MSVC would
#     compile (FBN_NO_DISPATCH, FBN_NO_VEC, FBN_NO_OMP_SIMD: no runtime
#     dispatch, no vector extensions, no OpenMP SIMD pragmas), and the
#     aarch64 cross-compiler.
#  2. tools/check_bits.c, a driver of the public C interface, prints a
#     digest of every result bit for each SIMD level and 1 and 2 threads;
#     every build's digest must equal the x86-64 GCC build's: GCC with
#     dispatch, clang 14, the MSVC-like build and aarch64 under qemu-user.
#  3. The thread pool's stress test (tools/pool_stress.c) on aarch64 under
#     qemu (weaker memory ordering than x86).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=("$top"/csrc/*.c)
flags=(-O3 -ffp-contract=off -fno-math-errno -pthread -I"$top/csrc")
warn=(-Wall -Wextra -Werror)
msvc_like=(-DFBN_NO_DISPATCH -DFBN_NO_VEC -DFBN_NO_OMP_SIMD)
AARCH64_CC=${AARCH64_CC:-aarch64-linux-gnu-gcc}
CLANG=${CLANG:-clang-14}

build() { # name compiler [flags...]
    local name=$1 cc=$2
    shift 2
    echo "--- $name: $cc $*"
    "$cc" "${flags[@]}" "${warn[@]}" "$@" "$top/tools/check_bits.c" "${src[@]}" \
        -o "$work/bits-$name" -lm
}

build gcc gcc -fopenmp
build gcc-serial gcc -fopenmp-simd
build msvc-like gcc -fopenmp "${msvc_like[@]}"
build clang14 "$CLANG" -fopenmp
build clang14-msvc-like "$CLANG" -fopenmp "${msvc_like[@]}"
build aarch64 "$AARCH64_CC" -fopenmp -static
"$AARCH64_CC" "${flags[@]}" "${warn[@]}" -fopenmp -static "$top/tools/pool_stress.c" \
    "$top/csrc/pool.c" -o "$work/pool_stress-aarch64"

# clang's libomp may not be on the loader's path
clang_omp=$("$CLANG" -print-file-name=libomp.so)
export LD_LIBRARY_PATH="$(dirname "$clang_omp")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

run() { # name [runner...]
    local name=$1
    shift
    echo "--- run $name"
    "$@" "$work/bits-$name" | tee "$work/out-$name"
}
run gcc
run gcc-serial
run msvc-like
run clang14
run clang14-msvc-like
run aarch64 qemu-aarch64-static

want=$(awk '/^digest/ {print $2}' "$work/out-gcc")
status=0
for name in gcc-serial msvc-like clang14 clang14-msvc-like aarch64; do
    got=$(awk '/^digest/ {print $2}' "$work/out-$name")
    if [ "$got" != "$want" ]; then
        echo "FAIL: $name digest $got differs from x86-64 GCC's $want"
        status=1
    fi
done
echo "--- pool stress test on aarch64 (qemu)"
qemu-aarch64-static "$work/pool_stress-aarch64"
[ $status -eq 0 ] && echo "check_platforms: every build gives the bits of the x86-64 GCC build ($want)"
exit $status
