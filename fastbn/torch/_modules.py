"""fastbn's batch norm as drop-in subclasses of PyTorch's BatchNorm modules."""
import torch.nn.functional as F
from torch import Tensor
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import _sync
from . import _ops
from ._ops import activation_code, has_kernel

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]



class _FastBatchNorm:
    """What the four classes share (mixed in before PyTorch's class)."""

    def _set_activation(self, activation):
        activation_code(activation)  # checks it
        self.activation = activation

    def extra_repr(self):
        text = super().extra_repr()
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        return text

    def _comm(self, input):
        """The operators' ``comm`` key: "" (no synchronisation) here."""
        return ""

    def forward(self, input, residual=None, *, activation=None):
        """Batch normalization, plus residual and activation, in one call.

        Parameters
        ----------
        input : torch.Tensor
            ``(N, C, ...)`` as for PyTorch's module.
        residual : torch.Tensor, optional
            Added after the normalisation (before the activation); the
            input's shape (another shape broadcasts through PyTorch's add).
        activation : {None, "relu", "relu6"}, optional
            This call's activation; None: the module's ``activation``.

        Returns
        -------
        torch.Tensor
            ``act(BN(input) + residual)``, of the input's dtype and memory
            format.

        Raises
        ------
        ValueError
            Input of the wrong dimension, a channel count other than
            ``num_features``, a single value per channel in training, or
            an unknown activation.
        """
        comm = self._comm(input)
        try:
            self._check_input_dim(input)
            act = activation_code(self.activation if activation is None
                                  else activation)
            other = residual is not None and (
                not isinstance(residual, Tensor) or residual.shape != input.shape
                or residual.dtype != input.dtype or residual.device != input.device)
            if other and comm:  # PyTorch's add would run unsynchronised
                raise ValueError(f"residual must be a tensor of the input's shape "
                                 f"{tuple(input.shape)} and dtype {input.dtype} "
                                 f"in a synchronised call, got "
                                 f"{getattr(residual, 'shape', type(residual))} "
                                 f"and {getattr(residual, 'dtype', '')}")
        except Exception as e:
            if comm:  # the other ranks must not wait in the collective
                _sync.report_failure(comm, e)
            raise
        if other or not has_kernel(input):
            return self._stock_forward(input, residual, act)
        # the dicts where nn.Module keeps them: cheaper than attribute look-ups
        params, bufs = self._parameters, self._buffers
        rm = bufs["running_mean"]
        if self.training or rm is None:
            nbt = bufs["num_batches_tracked"]
            running = None
            if self.training and self.track_running_stats and rm is not None \
                    and nbt is not None:
                running = (rm, bufs["running_var"], nbt, self.momentum)
            return _ops.train(input, params["weight"], params["bias"], residual,
                              self.eps, act, comm, running, self)
        return _ops.infer(input, rm, bufs["running_var"], params["weight"],
                          params["bias"], residual, self.eps, act)

    def _stock_forward(self, input, residual, act):
        """PyTorch's own kernels (other devices and dtypes, broadcast
        residuals), with the add and the activation as separate calls."""
        y = super().forward(input)
        if residual is not None:
            y = y + residual
        if act == 1:
            return F.relu(y)
        if act == 2:
            return F.relu6(y)
        return y


_DOC = """{title}

A subclass of :class:`torch.nn.{base}` running fastbn's fused kernels on
CPU tensors: same constructor, parameters (``weight``, ``bias``), buffers
(``running_mean``, ``running_var``, ``num_batches_tracked``) and
``state_dict``, and the same results within float rounding, in training
and eval mode, forward and backward, running statistics included.

Parameters
----------
num_features : int
    C, the number of channels (dimension 1 of the input).
eps : float, default 1e-5
    Added to the variance before its square root.
momentum : float or None, default 0.1
    Weight of the new batch in the running statistics; None gives the
    cumulative average over all batches seen.
affine : bool, default True
    Learnable ``weight`` (scale) and ``bias`` (shift).
track_running_stats : bool, default True
    Keep running statistics (used in eval mode).  Without them batch
    statistics are used in both modes.{extra}
device, dtype : optional
    As for PyTorch's module (parameters and buffers).
activation : {{None, "relu", "relu6"}}, keyword-only, default None
    An activation fused into the same pass: ``max(0, .)`` or
    ``min(max(0, .), 6)``.

Raises
------
ValueError
    ``activation`` is not one of the above; input of the wrong dimension
    (as PyTorch's module); training with a single value per channel.
TypeError
    An input dtype that neither fastbn nor PyTorch takes.

Notes
-----
``forward(input, residual=None, *, activation=None)`` computes
``act(BN(input) + residual)`` in one fastbn call; ``residual`` has the
input's shape (another shape is broadcast by PyTorch's add instead) and
``activation`` overrides the module's for this call (``convert`` uses it).

CPU tensors of float32, float64, float16 and bfloat16 (parameters and
running statistics may stay float32 for the half types) in any memory
format run fastbn's operators (``torch.ops.fastbn``): a channels_last
input is read without a copy and the output keeps its memory format;
other non-contiguous input is copied once.  Other devices (CUDA, ...)
run PyTorch's own batch norm.  Gradients are computed for the input,
weight and bias only where they are required.{notes}

Examples
--------
>>> import torch
>>> import fastbn.torch as fbt
>>> bn = fbt.{name}({example_c}, activation="relu")
>>> y = bn(torch.randn({example_shape}))
>>> bool((y >= 0).all())
True
"""


def _bn_class(name, base, example_c, example_shape):
    cls = type(name, (_FastBatchNorm, base), {
        "__init__": _init,
        "__module__": "fastbn.torch",
        "__qualname__": name,
    })
    cls.__doc__ = _DOC.format(title=f"{base.__doc__.strip().splitlines()[0]}",
                              base=base.__name__, extra="", notes="", name=name,
                              example_c=example_c, example_shape=example_shape)
    return cls


def _init(self, num_features, eps=1e-5, momentum=0.1, affine=True,
          track_running_stats=True, device=None, dtype=None, *, activation=None):
    super(_FastBatchNorm, self).__init__(num_features, eps, momentum, affine,
                                         track_running_stats, device, dtype)
    self._set_activation(activation)


BatchNorm1d = _bn_class("BatchNorm1d", nn.BatchNorm1d, 4, "8, 4")
BatchNorm2d = _bn_class("BatchNorm2d", nn.BatchNorm2d, 4, "8, 4, 5, 5")
BatchNorm3d = _bn_class("BatchNorm3d", nn.BatchNorm3d, 4, "2, 4, 3, 5, 5")


class SyncBatchNorm(_FastBatchNorm, nn.SyncBatchNorm):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None,
                 dtype=None, *, activation=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         process_group, device, dtype)
        self._set_activation(activation)

    def _comm(self, input):
        if not self.training or not input.is_cpu:
            return ""
        key = _sync.comm_key(self.process_group)
        if key and not has_kernel(input):  # never silently unsynchronised
            e = TypeError(f"fastbn.torch.SyncBatchNorm synchronises CPU tensors of "
                          f"float32, float64, float16 and bfloat16 (bfloat16 needs "
                          f"ml_dtypes), got {input.dtype}")
            _sync.report_failure(key, e)
            raise e
        return key

    def _stock_forward(self, input, residual, act):
        if input.device.type == "cpu":  # PyTorch's SyncBatchNorm needs a GPU:
            y = _BatchNorm.forward(self, input)  # its plain batch norm
            if residual is not None:
                y = y + residual
            return F.relu(y) if act == 1 else F.relu6(y) if act == 2 else y
        return super()._stock_forward(input, residual, act)


SyncBatchNorm.__doc__ = _DOC.format(
    title="Batch normalization synchronised over a torch.distributed process "
          "group, on the CPU",
    base="SyncBatchNorm",
    extra="""
process_group : torch.distributed.ProcessGroup, optional
    The processes whose batches form one batch; None: the default group.""",
    notes="""

In training mode on CPU tensors the statistics are merged exactly across
the processes of ``process_group`` (gloo): one exchange of per-channel
(count, mean, m2) in the forward, one all-reduce of two per-channel sums
in the backward.  The output, the running statistics and the input's
gradient equal those of one process running the concatenated batch; each
rank's weight and bias gradients are its own part, whose sum over the
ranks is the whole batch's (DistributedDataParallel averages them, as
with PyTorch's SyncBatchNorm).  Uneven and empty local batches work.  An
error on one rank (a bad input, a channel-count or dtype mismatch)
raises on every rank instead of leaving the others waiting.  Without an
initialised process group, with one process, and in eval mode it is
plain batch norm.  Other devices run PyTorch's SyncBatchNorm.""",
    name="SyncBatchNorm", example_c=4, example_shape="8, 4, 5, 5")


def _let_ddp_take_cpu_sync_batch_norm():
    """DistributedDataParallel refuses, on the CPU, every module that is a
    torch.nn.SyncBatchNorm ("SyncBatchNorm layers only work with GPU
    modules"), fastbn's subclass included, which is made for the CPU.  Its
    check (``_passing_sync_batchnorm_handle``, which only walks
    ``module.modules()``) is wrapped so that it skips fastbn's modules and
    still refuses PyTorch's own.  Nothing is changed if a PyTorch version
    lacks the check."""
    ddp = nn.parallel.DistributedDataParallel
    check = getattr(ddp, "_passing_sync_batchnorm_handle", None)
    if check is None or getattr(check, "_fastbn", False):
        return

    class _Others:
        def __init__(self, module):
            self.module = module

        def modules(self):
            return (m for m in self.module.modules() if not isinstance(m, SyncBatchNorm))

    def wrapped(self, module):
        return check(self, _Others(module))
    wrapped._fastbn = True
    wrapped.__doc__ = check.__doc__
    ddp._passing_sync_batchnorm_handle = wrapped


_let_ddp_take_cpu_sync_batch_norm()
