"""examples/scale_before_relu.py runs (quick mode) against the installed
fastbn and prints its accuracy table and the absorb_scale equality."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scale_before_relu.py"


@pytest.mark.slow
def test_scale_before_relu_quick(tmp_path):
    pytest.importorskip("sklearn")
    if not EXAMPLE.exists():
        pytest.skip("examples/ not shipped with this copy of the tests")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # import the installed fastbn, not a source tree
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--quick"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "scale on" in out and "scale off" in out
    for act in ("relu", "tanh", "sigmoid"):
        m = re.search(rf"^{act}\s+([\d.]+) \+- ([\d.]+)\s+([\d.]+) \+- ([\d.]+)$",
                      out, re.M)
        assert m, out
        on, off = float(m.group(1)), float(m.group(3))
        assert 50 < on <= 100 and 50 < off <= 100, out  # it learns
    m = re.search(r"max \|logit difference\| = ([\d.e+-]+)", out)
    assert m, out
    assert float(m.group(1)) < 1e-4, out
    assert re.search(r"same prediction on (\d+)/\1 ", out), out
