"""fastbn in PyTorch: drop-in batch norm modules, fused activations and
residual adds, and synchronised batch norm on the CPU.

``import fastbn.torch`` registers fastbn's kernels as PyTorch operators
(``torch.ops.fastbn.bn_train``, ``bn_infer``, ``bn_backward``,
``update_running``; eager, autograd and ``torch.compile`` all work) and
provides:

BatchNorm1d, BatchNorm2d, BatchNorm3d
    Subclasses of PyTorch's modules (same constructor, parameters, buffers
    and ``state_dict``) with an ``activation=None|"relu"|"relu6"`` keyword
    and ``forward(input, residual=None)``.
SyncBatchNorm
    A subclass of ``torch.nn.SyncBatchNorm`` that works on the CPU
    (gloo): statistics merged exactly across a process group.
convert, revert
    Swap a model's batch norms for fastbn's and fuse BN -> ReLU/ReLU6,
    BN -> add and BN -> add -> ReLU/ReLU6 (torch.fx); and back.
use_torch_threads
    Run fastbn's kernels on PyTorch's OpenMP threads (turned on at import
    where PyTorch's runtime is found), or on fastbn's own.

torch is never a dependency of fastbn: importing this module without it
raises ImportError with the command that installs it.
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:
    raise ImportError(
        "fastbn.torch needs PyTorch, which fastbn does not install: "
        "pip install torch (CPU build: pip install torch --index-url "
        f"https://download.pytorch.org/whl/cpu) ({e})") from e

from . import _ops  # noqa: E402,F401 (registers torch.ops.fastbn.*)
from ._modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm  # noqa: E402
from ._convert import convert, revert  # noqa: E402
from ._team import use_torch_threads  # noqa: E402

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
           "convert", "revert", "use_torch_threads"]

use_torch_threads(True)
