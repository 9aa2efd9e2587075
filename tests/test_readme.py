"""The README's tour runs against the installed fastbn, and the README's
set-up commands are the ones CI runs (a README that drifts from the code
misleads every new user first)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme():
    if not README.exists():
        pytest.skip("README.md not shipped with this copy of the tests")
    return README.read_text(encoding="utf-8")


def test_tour_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    assert blocks, "the README has no Python tour"
    script = tmp_path / "tour.py"
    script.write_text(blocks[0])
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the installed fastbn, not a source tree
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SIMD:" in proc.stdout  # the tour ends with show_config()


def test_setup_commands_and_length():
    text = _readme()
    assert "pip install . && cd bench && python -m fastbn.bench\n" in text
    assert 'pip install ".[test,mpi]" && cd tests && python -m pytest -q\n' in text
    assert len(text.splitlines()) <= 200
