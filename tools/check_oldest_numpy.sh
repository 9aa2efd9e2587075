#!/usr/bin/env bash
# Run the test suite against a fastbn wheel with the OLDEST NumPy that
# fastbn supports (dependencies: numpy>=1.23) and that has a binary wheel for
# this Python: the wheel is built against NumPy 2.x, whose C API is
# backward compatible, so it must import and pass with NumPy 1.23.
#
# Usage: tools/check_oldest_numpy.sh [WHEEL]
#   WHEEL defaults to the newest wheelhouse/fastbn-*.whl (made by
#   tools/check_wheel.sh); without one, a wheel is built from a private copy.
# Environment: PYTHON (default python3); FASTBN_OLDEST_NUMPY=X.Y.Z skips the
# search; FASTBN_EXPECT_OPENMP as for the test suite (default 1); extra
# pytest arguments in FASTBN_PYTEST_ARGS.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/fastbn-oldest-numpy.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "check_oldest_numpy: FAILED: $*" >&2; exit 1; }
pipq() { "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }; }

wheel=${1:-}
if [ -z "$wheel" ]; then
    wheel=$(ls -t "$top"/wheelhouse/fastbn-*.whl 2>/dev/null | head -1 || true)
fi
if [ -z "$wheel" ]; then
    echo "no wheel given: building one (pip wheel from a private copy)"
    mkdir "$work/src"
    (cd "$top" && git ls-files -z -c -o --exclude-standard) |
        (cd "$top" && xargs -0 cp --parents -t "$work/src" 2>/dev/null || true)
    pipq "$py" -m pip wheel -q --no-deps -w "$work/wheel" "$work/src"
    wheel=$(ls "$work"/wheel/fastbn-*.whl)
fi
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
echo "wheel: $wheel"

"$py" -m venv "$work/venv"
vpy="$work/venv/bin/python"
pipq "$vpy" -m pip install -q --disable-pip-version-check -U pip

# the oldest numpy>=1.23 with a binary wheel for this interpreter
numpy=${FASTBN_OLDEST_NUMPY:-}
if [ -z "$numpy" ]; then
    for v in 1.23.0 1.23.1 1.23.2 1.23.3 1.23.4 1.23.5 1.24.0 1.24.4 1.25.0 \
             1.26.0 1.26.4 2.0.0; do
        if "$vpy" -m pip download -q --disable-pip-version-check --no-deps \
               --only-binary=:all: -d "$work/np" "numpy==$v" >/dev/null 2>&1; then
            numpy=$v
            break
        fi
    done
fi
[ -n "$numpy" ] || fail "no numpy>=1.23 wheel for $("$vpy" -V)"
echo "oldest numpy with a wheel for $("$vpy" -V): $numpy"

# the wheel with this numpy, then each requirement of the test extra that
# installs beside it (pip backtracks, e.g. to an older scipy for
# scikit-learn). One that has no release for this numpy (ml_dtypes needs
# numpy>=1.23.3 on Python 3.11) is named here, and its tests skip; the
# others are installed as usual.
echo "numpy==$numpy" > "$work/constraints.txt"
pipq "$vpy" -m pip install -q --disable-pip-version-check --only-binary=numpy \
    -c "$work/constraints.txt" "$wheel"
"$vpy" - "$wheel" > "$work/test-reqs.txt" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and re.search(
                r"extra\s*==\s*['\"]test['\"]", line):
            print(line.split(":", 1)[1].split(";")[0].strip())
PY
[ -s "$work/test-reqs.txt" ] || fail "no test extra in the wheel's metadata"
while read -r req; do
    if ! "$vpy" -m pip install -q --disable-pip-version-check --only-binary=numpy \
            -c "$work/constraints.txt" "$req" > "$work/pip.log" 2>&1; then
        grep -q "ResolutionImpossible" "$work/pip.log" ||
            { cat "$work/pip.log"; fail "could not install $req"; }
        echo "note: $req has no release for numpy $numpy: its tests skip"
    fi
done < "$work/test-reqs.txt"
got=$("$vpy" -c "import numpy; print(numpy.__version__)")
[ "$got" = "$numpy" ] || fail "numpy $got installed instead of $numpy"
(cd "$work" && "$vpy" -c "import fastbn; fastbn.show_config()")

# the tests that match the wheel: from the sdist made with it (check_wheel.sh
# puts both in one directory), else the checkout's tests/
mkdir "$work/run"
sdist=$(ls -t "$(dirname "$wheel")"/fastbn-*.tar.gz 2>/dev/null | head -1 || true)
[ -z "$sdist" ] || tar tzf "$sdist" > "$work/sdist.txt"
if [ -n "$sdist" ] && grep -q "^[^/]*/tests/conftest.py$" "$work/sdist.txt"; then
    echo "tests from $sdist"
    tar -C "$work/run" -xzf "$sdist" --strip-components=1 --wildcards '*/tests/*'
else
    cp -r "$top/tests" "$work/run/tests"
fi
rm -rf "$work/run/tests/__pycache__"
cd "$work/run"
# a repaired wheel must use its own copy of the OpenMP runtime
case $(basename "$wheel") in
    *manylinux*|*musllinux*|*macosx*|*win_amd64*) vendored=1 ;;
    *) vendored=0 ;;
esac
FASTBN_EXPECT_OPENMP=${FASTBN_EXPECT_OPENMP:-1} FASTBN_EXPECT_VENDORED_OPENMP=$vendored \
    "$vpy" -m pytest -q -p no:cacheprovider tests ${FASTBN_PYTEST_ARGS:-}
echo "check_oldest_numpy: OK with numpy $numpy"
