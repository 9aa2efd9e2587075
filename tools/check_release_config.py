"""Static checks of the release configuration (run by tools/check_wheel.sh).

- .github/workflows/wheels.yml is valid YAML and valid against the GitHub
  workflow schema (check-jsonschema's bundled copy, no network), every action
  is pinned to a full commit SHA, the top-level permissions are
  `contents: read`, only the publish job has `id-token: write`, and the
  matrix covers Linux x86_64/aarch64, macOS arm64/x86_64 and Windows AMD64;
- [tool.cibuildwheel] in pyproject.toml is accepted by cibuildwheel and
  selects the expected wheels (manylinux + musllinux on Linux) for each
  platform, and tests every wheel.

Needs pyyaml, check-jsonschema and cibuildwheel (the tools venv).
Usage: python tools/check_release_config.py [REPO_ROOT]
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent)
wf_path = root / ".github" / "workflows" / "wheels.yml"
errors = []


def check(cond, msg):
    print(("ok    " if cond else "FAIL  ") + msg)
    if not cond:
        errors.append(msg)


text = wf_path.read_text()
wf = yaml.safe_load(text)
check(isinstance(wf, dict) and "jobs" in wf, f"{wf_path.name} is YAML with jobs")
schema = subprocess.run(
    [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
     "vendor.github-workflows", str(wf_path)], capture_output=True, text=True)
check(schema.returncode == 0,
      "valid against the GitHub workflow schema" + (
          "" if schema.returncode == 0 else ":\n" + schema.stdout + schema.stderr))

uses = re.findall(r"^\s*(?:-\s*)?uses:\s*(\S+)", text, flags=re.M)
check(len(uses) >= 7, f"{len(uses)} action uses found")
for u in uses:
    check(re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", u) is not None,
          f"pinned to a commit SHA: {u}")
for name in ("actions/checkout", "actions/upload-artifact",
             "actions/download-artifact", "actions/setup-python",
             "pypa/cibuildwheel", "pypa/gh-action-pypi-publish",
             "docker/setup-qemu-action"):
    check(any(u.startswith(name + "@") for u in uses), f"uses {name}")

check(wf.get("permissions") == {"contents": "read"},
      "top-level permissions: contents: read")
for job_name, job in wf["jobs"].items():
    perms = job.get("permissions") or {}
    if job_name == "publish":
        check(perms == {"id-token": "write"}, "publish job: id-token: write only")
        check("release" in str(job.get("if", "")), "publish only on a release")
        steps = " ".join(str(s.get("uses", "")) for s in job["steps"])
        check("gh-action-pypi-publish" in steps and "password" not in text,
              "trusted publishing (no token)")
    else:
        check("id-token" not in perms, f"{job_name}: no id-token")
include = wf["jobs"]["wheels"]["strategy"]["matrix"]["include"]
combos = {(m["os"].split("-")[0], m["archs"]) for m in include}
for want in [("ubuntu", "x86_64"), ("ubuntu", "aarch64"), ("macos", "arm64"),
             ("macos", "x86_64"), ("windows", "AMD64")]:
    check(want in combos, f"matrix has {want[0]} {want[1]}")
check("sdist" in wf["jobs"], "sdist job")

cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
check(bool(cfg.get("test-command")), "cibuildwheel tests every wheel")
check(not cfg.get("test-skip"), "no test-skip")
expect = {
    "linux": ("x86_64 aarch64", ["manylinux_x86_64", "musllinux_x86_64",
                                 "manylinux_aarch64", "musllinux_aarch64"]),
    "macos": ("x86_64 arm64", ["macosx_x86_64", "macosx_arm64"]),
    "windows": ("AMD64", ["win_amd64"]),
}
for platform, (archs, tags) in expect.items():
    env = dict(os.environ, CIBW_ARCHS=archs)
    out = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
         "--platform", platform, str(root)],
        capture_output=True, text=True, env=env)
    ids = out.stdout.split()
    check(out.returncode == 0 and ids,
          f"cibuildwheel accepts the config for {platform}: {len(ids)} wheels"
          + ("" if out.returncode == 0 else "\n" + out.stderr[-2000:]))
    for tag in tags:
        check(any(i.endswith(tag) for i in ids), f"{platform}: builds {tag}")

if errors:
    sys.exit(f"\n{len(errors)} release-config check(s) failed")
print("release config OK")
