"""Benchmark of fastbn against NumPy, PyTorch and the memory floor.

Run ``python -m fastbn.bench --help`` for the options.  Batch normalization
on the CPU is memory-bound, so every time is compared with *the floor*: a
copy of the same bytes on the same number of threads (``floor.py``).  Every
implementation is first checked against a float64 NumPy reference, then
the implementations of a case are timed side by side, interleaved round by
round, and medians and minima are reported.

The package, by file:

- ``workloads.py``: what is measured: the kernel workloads and the shape
  sweep's arrays (ResNet-50, MobileNetV2, dense, 1-D, 5-D, 1 and 3
  channels);
- ``inputs.py``: random inputs, the float64 reference (fastbn._reference,
  the test suite's oracle), the comparison;
- ``impls.py``: fastbn, NumPy (naive and tuned), torch eager,
  torch.compile;
- ``floor.py``: the copy on N threads and the choice of the floor;
- ``timing.py``: interleaved timing and sample statistics;
- ``results.py``: verify-then-time of one workload and its ratios;
- ``kernels.py``, ``sweep.py``, ``scenarios.py``, ``network.py``: the four
  parts of the report (kernel workloads, shape sweep with its loss counts,
  between-calls scenarios, NumPy network step);
- ``ghost.py``: ghost batches and batch renormalization against ordinary
  batch norm (``--ghost``);
- ``machine.py``: the header (CPU, caches, versions);
- ``report.py``: tables as text, Markdown and JSON; ``plot.py``: the PNG;
- ``progress.py``: progress and ETA on stderr; ``cli.py``: the options.

Only the standard library and NumPy are imported here; PyTorch is used when
it can be imported, matplotlib only for ``--plot``, threadpoolctl (when
installed) only to name NumPy's BLAS.  The pytest-benchmark suites in
``bench/`` of the source tree use the workloads, inputs and
implementations defined here.
"""

from .impls import build_impls, check_result
from .inputs import make_inputs, reference
from .workloads import WORKLOADS, Workload, sweep_workloads

__all__ = ["WORKLOADS", "Workload", "sweep_workloads", "make_inputs",
           "reference", "build_impls", "check_result"]
