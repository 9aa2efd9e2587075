#!/usr/bin/env bash
# Build the documentation with warnings as errors and check its internal
# links, offline.  Usage (from anywhere, with fastbn and its docs extra
# installed in the current Python):
#   pip install ".[docs]" && bash tools/check_docs.sh [OUTDIR]
# 1. sphinx-build -W --keep-going -n (nitpicky: every cross-reference must
#    resolve) of docs/ into OUTDIR (default: docs/_build/html);
# 2. tools/check_links.py: every relative href/src of the built HTML resolves
#    (fragments included), every relative link of the repository's Markdown
#    files resolves, and no file names a .md document the repository lacks.
# The API reference is built from the installed package's docstrings.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/docs/_build/html}
py=${PYTHON:-python}
rm -rf "$out" "$top/docs/reference/generated"
# -E: read every source again (no stale environment between runs)
"$py" -m sphinx -E -W --keep-going -n -q -b html "$top/docs" "$out"
"$py" "$top/tools/check_links.py" "$out" "$top"
echo "docs: built in $out, internal links checked"
