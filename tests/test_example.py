"""examples/scale_before_relu.py runs (quick mode) against the installed
fastbn and prints its accuracy and loss table (every case, scale on and
off), the absorb_scale equality where the identity holds, and the
difference where it does not (a bounded activation)."""

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
    num = r"([\d.]+) \+- ([\d.]+)"
    rows = {}
    for case in ("relu", "tanh", "sigmoid", "relu6", "clamp", "readout",
                 "residual", "input clamp"):
        m = re.search(rf"^{case}\s+{num}\s+{num}\s+{num}\s+{num}$", out, re.M)
        assert m, out
        acc_on, acc_off, loss_on, loss_off = (float(m.group(i)) for i in (1, 3, 5, 7))
        assert 50 < acc_on <= 100 and 50 < acc_off <= 100, out  # it learns
        assert 0 < loss_on < 2.3 and 0 < loss_off < 2.3, out   # below chance (ln 10)
        rows[case] = (acc_on, acc_off, loss_on, loss_off)
    # a BN straight into the softmax: without its scale every logit has unit
    # variance over the batch and the loss cannot get low (0.5 vs 0.16 in
    # quick mode); with a trainable layer after the BN it makes no difference
    assert rows["readout"][3] > 2 * rows["readout"][2], out
    assert abs(rows["relu"][3] - rows["relu"][2]) < 0.5 * rows["relu"][2], out
    m = re.search(r"max \|logit difference\| = ([\d.e+-]+)", out)
    assert m, out
    assert float(m.group(1)) < 1e-4, out
    assert re.search(r"same prediction on (\d+)/\1 ", out), out
    # the same transformation on the clamp network is not an identity
    m = re.search(r"^clamp \(seed 0, scaled\): (\d+) of (\d+) channels.*"
                  r"max \|logit difference\| = ([\d.e+-]+)", out, re.M)
    assert m, out
    assert float(m.group(3)) > 1e-3, out
    assert re.search(r"^input clamp \(seed 0, scaled\): \d+ of 64 input channels",
                     out, re.M), out
