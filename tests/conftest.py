"""Shared fixtures for the fastbn test suite.

The tests must exercise the *installed* package, never the source tree
(whose ``fastbn/`` has no compiled extension).  The repository root is
therefore removed from ``sys.path`` before ``fastbn`` is imported, and the
session stops with a clear message if ``fastbn`` still comes from the source
tree.  Set ``FASTBN_TEST_SOURCE_TREE=1`` to allow an in-place build.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = TESTS_DIR.parent
_ALLOW_SOURCE = os.environ.get("FASTBN_TEST_SOURCE_TREE") == "1"

if not _ALLOW_SOURCE:
    sys.path[:] = [p for p in sys.path
                   if Path(p or ".").resolve() != SOURCE_ROOT]
# helper modules of this directory (reference.py, helpers.py) importable in
# every import mode
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import fastbn  # noqa: E402
from fastbn import _kernels  # noqa: E402

if not _ALLOW_SOURCE and Path(fastbn.__file__).resolve().is_relative_to(
        SOURCE_ROOT / "fastbn"):
    raise pytest.UsageError(
        f"fastbn was imported from the source tree ({fastbn.__file__}); the "
        "tests must run against the installed package. Install it (not "
        "editable) and run pytest from a directory where the source fastbn/ "
        "is not importable, or set FASTBN_TEST_SOURCE_TREE=1.")

# The markers (registered here, not in pyproject.toml, so that they also
# hold in a copy of tests/ without the project's configuration, as the wheel
# builds test it).  The default run (and CI) runs every test;
# ``pytest -m "not slow"`` is the fast tier.
MARKERS = {
    "slow": "a test taking about a second or more (every plan, thread count "
            "or instruction set on large arrays, MPI and torch.distributed "
            "jobs, hypothesis, torch.compile and opcheck, tf-keras imports); "
            "deselect with -m 'not slow'",
    "mpi": "runs mpiexec jobs (skips without mpi4py, fails then under "
           "FASTBN_REQUIRE_MPI=1)",
    "torch": "fastbn.torch, or a comparison with PyTorch (skips without "
             "torch); set on every test that takes the torch fixture",
    "keras": "compares with tf-keras 2 (skips without tf_keras)",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)


# Layouts: (id, shape, axis).  Covers NC, NCL, NCHW, NCDHW, NHWC (axis=-1),
# a middle axis (axis=2 of 4-D), axis=0, 1 and 3 channels, 1-element spatial,
# odd sizes (SIMD remainders), channel-first (inner > 1) and channel-last
# (inner == 1) kernels.
LAYOUTS = [
    ("NC", (7, 5), 1),
    ("NC-wide", (6, 37), 1),
    ("NC-1ch", (9, 1), 1),
    ("NCL", (4, 3, 11), 1),
    ("NCHW", (3, 5, 4, 6), 1),
    ("NCHW-odd", (2, 7, 5, 3), 1),
    ("NCHW-1ch", (3, 1, 5, 7), 1),
    ("NCHW-1x1", (6, 4, 1, 1), 1),
    ("NCDHW", (2, 3, 3, 4, 5), 1),
    ("NHWC", (3, 4, 6, 5), -1),
    ("NHWC-3ch", (2, 5, 7, 3), -1),
    ("NHWC-1ch", (4, 3, 3, 1), -1),
    ("NHWC-1x1", (8, 1, 1, 6), -1),
    ("axis2-4d", (3, 4, 5, 6), 2),
    ("axis-2-4d", (2, 3, 5, 4), -2),
    ("axis0", (5, 3, 4), 0),
]
DTYPES = [np.float32, np.float64]

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    ml_dtypes = None
#: ml_dtypes' bfloat16 (None without ml_dtypes: its cases are skipped)
BF16 = np.dtype(ml_dtypes.bfloat16) if ml_dtypes is not None else None
#: float16 and bfloat16, for ``@pytest.mark.parametrize("dtype", HALVES)``
HALVES = [pytest.param(np.dtype(np.float16), id="f16"),
          pytest.param(BF16, id="bf16", marks=pytest.mark.skipif(
              BF16 is None, reason="needs ml_dtypes (pip install fastbn[test])"))]
#: every dtype fastbn computes in: one test body for all four
ALL_DTYPES = [pytest.param(np.dtype(np.float32), id="f32"),
              pytest.param(np.dtype(np.float64), id="f64")] + HALVES


@pytest.fixture
def rng():
    """A freshly seeded NumPy Generator (reproducible per test)."""
    return np.random.default_rng(12345)


@pytest.fixture(params=LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
def layout(request):
    """``(shape, axis)`` of one layout of LAYOUTS."""
    return request.param[1], request.param[2]


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def torch():
    """The torch module; the test is skipped when torch is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture
def restore_threads():
    """Restore fastbn's thread setting after a test that changes it."""
    old = fastbn.set_num_threads(None)
    fastbn.set_num_threads(old)
    yield
    fastbn.set_num_threads(old)


@pytest.fixture
def torch1(torch):
    """torch with one intra-op thread (tiny problems; the machine is shared)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(old)


@pytest.fixture
def tuning():
    """fastbn._kernels.set_tuning, with every setting restored afterwards."""
    old = _kernels.set_tuning()
    _kernels.set_tuning(**old)
    yield _kernels.set_tuning
    _kernels.set_tuning(**old)


@pytest.fixture
def simd():
    """fastbn._kernels.set_simd, with the automatic choice restored
    afterwards (and checked to be the level in use before)."""
    old = _kernels.simd()
    yield _kernels.set_simd
    _kernels.set_simd("auto")
    assert _kernels.simd() == old
