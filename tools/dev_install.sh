#!/usr/bin/env bash
# Build and install the current work tree into a private venv, from a private
# copy of the sources, so that several developers can build at once without
# sharing a build/ directory.  Usage: tools/dev_install.sh NAME [pip args...]
# Creates /work/venvs/NAME (once) and installs fastbn[test] there.
set -euo pipefail
name=${1:?usage: tools/dev_install.sh NAME}; shift
top=$(cd "$(dirname "$0")/.." && pwd)
venv=/work/venvs/$name
src=/tmp/fastbn-src-$name
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
rm -rf "$src"; mkdir -p "$src"
tar -C "$top" --exclude=.git --exclude=build --exclude="*.egg-info" --exclude="*.so" --exclude=fastbn/_kernels.c -cf - . | tar -C "$src" -xf -
"$venv/bin/python" -m pip install -q "$src[test]" "$@"
echo "installed into $venv"
