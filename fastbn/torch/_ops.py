"""fastbn's kernels as PyTorch operators (``torch.ops.fastbn.*``).

Four operators in the namespace ``fastbn``, defined with
``torch.library.Library.define`` and given a CPU kernel with ``impl`` (the
low-overhead path: a Python ``custom_op`` costs about twice as much per
call), a fake kernel for ``torch.compile`` and, for the two forwards, an
autograd formula whose backward is itself an operator:

``bn_train(x, weight?, bias?, residual?, eps, act, comm) -> (y, mean, invstd, uvar, mean_lo)``
    training forward with batch statistics; ``uvar`` is the unbiased
    batch variance in float64, for the running statistics; ``mean_lo`` the
    part of the batch mean below ``mean``'s precision (zeros in float64),
    with which the backward rebuilds the activation's mask from x.
``bn_infer(x, mean, var, weight?, bias?, residual?, eps, act) -> y``
    forward with given statistics.
``bn_backward(dy, x, mean, invstd, weight?, y?, training, act, want_dres, comm,
bias?, mean_lo?) -> (dx, dweight, dbias, dres)``
    gradients (``dres`` is empty unless asked for).  The fused
    activation's mask comes from ``y``, or without ``y`` from x, ``bias``
    and ``mean_lo`` (bit for bit the forward's: one saved tensor, not two).
``update_running(running_mean!, running_var!, num_batches_tracked!, mean, uvar, momentum?)``
    the running-statistics update.  It mutates its inputs, so it is kept
    out of the differentiable operator (``register_autograd`` refuses
    mutating operators), as PyTorch's functional batch norm does.

``act`` is 0 (none), 1 (ReLU) or 2 (ReLU6).  ``comm`` is "" or the key of
a process-group adapter (fastbn.torch._sync) for synchronised statistics.

The kernels run fastbn's NumPy functions on zero-copy NumPy views of the
tensors and write into preallocated tensors through ``out=``.  A tensor
whose channel axis is the last in memory (``channels_last``,
``channels_last_3d``, or any (N, *, C)-ordered dense layout) is a
C-contiguous (N*H*W, C) block: fastbn's ``axis=-1`` on the permuted view,
with no copy, and the output keeps that memory format.  Any other
non-contiguous input is copied once.  bfloat16 tensors are viewed as
uint16 and then as ``ml_dtypes.bfloat16`` arrays (needs ml_dtypes; without
it the modules run PyTorch's own kernels for bfloat16).

The modules call ``train`` and ``infer`` (end of this file): the
operators under ``torch.compile``, and in eager mode the same NumPy-level
cores through a ``torch.autograd.Function`` (or directly without
autograd), which skips the dispatcher's per-call cost.
"""
import numpy as np
import torch

from .. import _api
from .. import batch_norm_infer

try:  # the NumPy dtype of bfloat16 tensors' views
    from ml_dtypes import bfloat16 as _BF16
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    _BF16 = None

__all__ = ["ACTIVATIONS", "activation_code", "has_kernel"]

#: activation name -> the operators' ``act`` code
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}
_HALF = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float32, torch.float64, torch.float16) + (
    (torch.bfloat16,) if _BF16 is not None else ())

_lib = torch.library.Library("fastbn", "DEF")  # noqa: the operators live as long as the module
# Any layout: the kernels read channels_last and other dense (N, *, C)
# layouts in place and give the output the input's format, so Inductor
# need not copy its tensors (e.g. the channels_last outputs of its
# convolutions) back to the eager layout around each call
_FLEX = tuple(getattr(torch.Tag, t) for t in ("flexible_layout",) if hasattr(torch.Tag, t))
_lib.define("bn_train(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, "
            "float eps, int act, str comm) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
            tags=_FLEX)
_lib.define("bn_infer(Tensor x, Tensor mean, Tensor var, Tensor? weight, "
            "Tensor? bias, Tensor? residual, float eps, int act) -> Tensor", tags=_FLEX)
_lib.define("bn_backward(Tensor dy, Tensor x, Tensor mean, Tensor invstd, "
            "Tensor? weight, Tensor? y, bool training, int act, bool want_dres, "
            "str comm, Tensor? bias=None, Tensor? mean_lo=None) -> "
            "(Tensor, Tensor, Tensor, Tensor)", tags=_FLEX)
_lib.define("update_running(Tensor(a!) running_mean, Tensor(b!) running_var, "
            "Tensor(c!) num_batches_tracked, Tensor mean, Tensor uvar, "
            "float? momentum) -> ()")


def activation_code(activation):
    """The ``act`` code of ``activation`` (None, "relu" or "relu6").

    Raises ValueError for anything else."""
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be None, 'relu' or 'relu6', got "
                         f"{activation!r}") from None


def has_kernel(x):
    """True if fastbn's operators take ``x`` (a CPU tensor of a supported
    dtype); other tensors go to PyTorch's own batch norm."""
    return x.is_cpu and x.dtype in _DTYPES


# ---------------------------------------------------------------- views

def _np(t):
    """The NumPy array sharing ``t``'s memory (bfloat16 through uint16)."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.uint16).numpy().view(_BF16)
    return t.numpy()


def _from_np(a, dtype):
    """The tensor sharing NumPy array ``a``'s memory (of torch dtype
    ``dtype``; bfloat16 through uint16)."""
    if dtype is torch.bfloat16:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _np_opt(t):
    return None if t is None else _np(t)


def _stat_dtype(x):
    return torch.float32 if x.dtype in _HALF else x.dtype


def _last(x):
    """True if ``x``'s channel axis (1) is the fastest in memory with the
    other axes in order: a (N, *, C) C-contiguous block (channels_last).
    Tensors that are plain contiguous are not counted here."""
    return x.dim() > 2 and x.movedim(1, -1).is_contiguous()


def _out_like(x):
    """The output tensor for ``x`` (same memory format when x is contiguous
    or channels-last, else contiguous).  Used by the real and the fake
    kernels alike, so their strides agree."""
    if x.is_contiguous() or _last(x):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _view(t, last):
    """NumPy view of ``t`` in the layout chosen for x: (N, C, ...) C-order,
    or with ``last`` (N, ..., C) C-order; copied once when t has another."""
    if last:
        t = t.movedim(1, -1)
    if not t.is_contiguous():
        t = t.contiguous()
    return _np(t)


def _layout(x):
    """(last, axis) for x: channel-last when x is not contiguous but its
    channels-last permutation is."""
    if x.is_contiguous():
        return False, 1
    if _last(x):
        return True, -1
    return False, 1


# ------------------------------------------------------------ activations

#: the activation of each ``act`` code, as fastbn's functions name it
_NAMES = {code: name for name, code in ACTIVATIONS.items()}


# ---------------------------------------------------------------- kernels

def _mask_from_x(act, residual, comm):
    """Whether the backward rebuilds the activation's mask from x (and the
    forward keeps x, not y): an activation without a residual (whose
    mask needs y) and without synchronised statistics."""
    return bool(act) and residual is None and not comm


def _train_np(x, wn, bn, residual, eps, act, comm):
    """The training forward with NumPy ``wn`` and ``bn`` (weight and bias
    views, or None): (y, mean, invstd, var64, count, mean_lo), the
    statistics as NumPy arrays (count: values per channel in the whole
    batch; mean_lo None with ``comm``)."""
    last, axis = _layout(x)
    y = _out_like(x)
    z = None if residual is None else _view(residual, last)
    args = (_view(x, last), wn, bn, axis, eps, False, z, _view(y, last))
    if comm:
        from . import _sync
        _, mean, invstd, var, count = _sync.train(comm, args, _NAMES[act])
        lo = None
    else:
        _, mean, invstd, var, count, lo = _api._train(*args, None, True, None, None,
                                                      _NAMES[act], True)
    return y, mean, invstd, var, count, lo


def _train_impl(x, weight, bias, residual, eps, act, comm):
    y, mean, invstd, var, count, lo = _train_np(x, _np_opt(weight), _np_opt(bias),
                                                residual, eps, act, comm)
    uvar = var * (count / (count - 1.0))
    lo = np.zeros_like(mean) if lo is None else lo
    return (y, torch.from_numpy(mean), torch.from_numpy(invstd),
            torch.from_numpy(uvar), torch.from_numpy(lo))


def _train_fake(x, weight, bias, residual, eps, act, comm):
    C = x.shape[1]
    sdt = _stat_dtype(x)
    return (_out_like(x), x.new_empty((C,), dtype=sdt), x.new_empty((C,), dtype=sdt),
            x.new_empty((C,), dtype=torch.float64), x.new_empty((C,), dtype=sdt))


def _infer_impl(x, mean, var, weight, bias, residual, eps, act):
    last, axis = _layout(x)
    y = _out_like(x)
    yv = _view(y, last)
    z = None if residual is None else _view(residual, last)
    batch_norm_infer(_view(x, last), _np(mean), _np(var), _np_opt(weight),
                     _np_opt(bias), axis=axis, eps=eps, activation=_NAMES[act],
                     residual=z, out=yv)
    return y


def _infer_fake(x, mean, var, weight, bias, residual, eps, act):
    return _out_like(x)


def _backward_np(dy, x, mean, invstd, weight, y, training, act, want_dres, comm,
                 bias=None, lo=None):
    """The backward with NumPy ``mean`` and ``invstd``: (dx, dgamma, dbeta,
    dres or None), dgamma and dbeta NumPy arrays (this rank's share with
    ``comm``).  The activation's mask (y > 0 for relu, 0 < y < 6 for
    relu6) comes from ``y``, or, with ``lo`` (NumPy mean_lo) and no y,
    from x, ``bias`` (NumPy or None: zeros) and ``lo``."""
    last, axis = _layout(x)
    dx = _out_like(x)
    yv = None if y is None else _view(y, last)
    from_x = yv is None and lo is not None and bool(act)
    activation = _NAMES[act] if yv is not None or from_x else None
    beta = None
    if from_x:
        beta = np.zeros_like(mean) if bias is None else bias
    args = (_view(dy, last), _view(x, last), mean, invstd, _np_opt(weight), axis,
            yv, training, want_dres, _view(dx, last))
    if comm and training:
        from . import _sync
        res, (dgamma, dbeta) = _sync.backward(comm, args, activation)
    else:
        res = _api._backward(*args, None, None, None, None, activation, beta,
                             lo if from_x else None)
        dgamma, dbeta = res[1], res[2]
    dres = None
    if want_dres:  # the kernel's own array, no copy: x's layout and strides
        dres = _from_np(res[3], x.dtype)
        if last:
            dres = dres.movedim(-1, 1)
    return dx, dgamma, dbeta, dres


def _backward_impl(dy, x, mean, invstd, weight, y, training, act, want_dres, comm,
                   bias=None, mean_lo=None):
    dx, dgamma, dbeta, dres = _backward_np(dy, x, _np(mean), _np(invstd), weight, y,
                                           training, act, want_dres, comm,
                                           _np_opt(bias), _np_opt(mean_lo))
    if dres is None:
        dres = x.new_empty((0,))
    return dx, torch.from_numpy(dgamma), torch.from_numpy(dbeta), dres


def _backward_fake(dy, x, mean, invstd, weight, y, training, act, want_dres, comm,
                   bias=None, mean_lo=None):
    C = x.shape[1]
    sdt = _stat_dtype(x)
    dres = _out_like(x) if want_dres else x.new_empty((0,))
    return (_out_like(x), x.new_empty((C,), dtype=sdt), x.new_empty((C,), dtype=sdt),
            dres)


def _update_np(rm, rv, nbt, mean, uvar, momentum):
    """The running-statistics update on NumPy views ``rm``, ``rv`` and
    ``nbt`` (running mean, running variance, batch counter) with NumPy
    ``mean`` and ``uvar``: ``(1 - f) * running + f * new``, f the momentum
    or, for None, 1 / batches seen."""
    nbt += 1
    f = 1.0 / float(nbt) if momentum is None else momentum
    if rm.dtype.itemsize > 2:  # in place, in the buffers' dtype
        rm *= 1.0 - f
        rm += f * mean
        rv *= 1.0 - f
        rv += f * uvar
    else:  # half buffers (a module cast with .half()): through float64
        g = 1.0 - f
        rm[...] = rm.astype(np.float64) * g + mean.astype(np.float64) * f
        rv[...] = rv.astype(np.float64) * g + uvar.astype(np.float64) * f


def _update_impl(running_mean, running_var, num_batches_tracked, mean, uvar,
                 momentum):
    _update_np(_np(running_mean), _np(running_var), _np(num_batches_tracked), _np(mean),
               _np(uvar), momentum)


def _update_fake(running_mean, running_var, num_batches_tracked, mean, uvar,
                 momentum):
    return None


_lib.impl("bn_train", _train_impl, "CPU")
_lib.impl("bn_infer", _infer_impl, "CPU")
_lib.impl("bn_backward", _backward_impl, "CPU")
_lib.impl("update_running", _update_impl, "CPU")
torch.library.register_fake("fastbn::bn_train", _train_fake, lib=_lib)
torch.library.register_fake("fastbn::bn_infer", _infer_fake, lib=_lib)
torch.library.register_fake("fastbn::bn_backward", _backward_fake, lib=_lib)
torch.library.register_fake("fastbn::update_running", _update_fake, lib=_lib)
_ops = torch.ops.fastbn


# --------------------------------------------------------------- autograd

_NO_DOUBLE = ("fastbn: gradients of fastbn's batch norm gradients (double "
              "backward) are not supported")


def _train_setup(ctx, inputs, output):
    x, weight, bias, residual, eps, act, comm = inputs
    y, mean, invstd, _, lo = output
    # a fused activation's mask: from x, bias and mean_lo where it can be
    # (one saved tensor of x's size, not two), else from y
    from_x = _mask_from_x(act, residual, comm)
    ctx.save_for_backward(x, weight, mean, invstd, y if act and not from_x else None,
                          bias if from_x else None, lo if from_x else None)
    ctx.act = act
    ctx.comm = comm
    ctx.has_res = residual is not None
    ctx.mark_non_differentiable(mean, invstd, output[3], lo)


def _train_backward(ctx, dy, _dmean, _dinvstd, _duvar, _dlo):
    x, weight, mean, invstd, y, bias, lo = ctx.saved_tensors
    return _grads(ctx, ctx.needs_input_grad[:4], dy, x, weight, mean, invstd, y,
                  True, bias, lo) + (None, None, None)


def _grads(ctx, need, dy, x, weight, mean, invstd, y, training, bias=None, lo=None):
    """(dx, dweight, dbias, dresidual), None where not required (``need``:
    which of x, weight, bias, residual need a gradient); without ``y`` the
    activation's mask from x, ``bias`` and ``lo`` (mean_lo)."""
    act = ctx.act
    if dy is None:
        return None, None, None, None
    want_dres = bool(ctx.has_res and need[3] and act)
    if getattr(ctx, "eager", False):  # NumPy statistics (the eager path)
        if torch.is_grad_enabled():
            raise NotImplementedError(_NO_DOUBLE)
        dx, dw, db, dres = _backward_np(dy, x, mean, invstd, weight, y, training, act,
                                        want_dres, ctx.comm, _np_opt(bias), lo)
        if weight is not None:
            dw, db = torch.from_numpy(dw), torch.from_numpy(db)
    else:
        dx, dw, db, dres = _ops.bn_backward(dy, x, mean, invstd, weight, y, training,
                                            act, want_dres, ctx.comm, bias, lo)
    if not ctx.has_res or not need[3]:
        dres = None
    elif not act:  # no activation: the residual's gradient is dy itself
        dres = dy
    if weight is None:
        return (dx if need[0] else None), None, None, dres
    dw = dw.to(weight.dtype) if need[1] else None
    db = db.to(weight.dtype) if need[2] else None
    return (dx if need[0] else None), dw, db, dres


def _infer_setup(ctx, inputs, output):
    x, mean, var, weight, bias, residual, eps, act = inputs
    ctx.save_for_backward(x, weight, mean, var, output if act else None)
    ctx.eps = eps
    ctx.act = act
    ctx.comm = ""
    ctx.has_res = residual is not None


def _infer_backward(ctx, dy):
    x, weight, mean, var, y = ctx.saved_tensors
    invstd = torch.rsqrt(var.to(torch.float64) + ctx.eps).to(mean.dtype)
    need = ctx.needs_input_grad
    if need[1] or need[2]:
        raise NotImplementedError(
            "fastbn: gradients with respect to the running mean or variance "
            "are not supported (PyTorch's batch norm does not give them either)")
    dx, dw, db, dres = _grads(ctx, (need[0], need[3], need[4], need[5]), dy, x,
                              weight, mean, invstd, y, False)
    return dx, None, None, dw, db, dres, None, None


torch.library.register_autograd("fastbn::bn_train", _train_backward,
                                setup_context=_train_setup, lib=_lib)
torch.library.register_autograd("fastbn::bn_infer", _infer_backward,
                                setup_context=_infer_setup, lib=_lib)


# ------------------------------------------------------------- eager path
# In eager mode the modules call the same kernels (the NumPy-level cores
# above) through a torch.autograd.Function with one output, or directly
# when no gradient is needed, instead of through the dispatcher: a Python
# kernel behind Library.define + impl costs about 8 us per call more,
# register_autograd another 13 us, and every extra output or tensor
# conversion a microsecond, against fastbn's 5 us kernel call on a small
# tensor.  The statistics stay NumPy arrays on the context, and the
# running statistics are updated in the same call.  Under torch.compile
# (and for anyone calling torch.ops.fastbn.*) the operators are used.

def _eager_save(ctx, x, weight, y, act, residual, stats, comm, bias=None):
    """What the eager backward needs: x, weight, the NumPy statistics and
    the options; where an activation is fused, y (its mask), or with
    mean_lo in ``stats`` (the mask from x) the bias instead."""
    from_x = len(stats) > 2
    ctx.save_for_backward(x, weight, bias if from_x else y if act else None)
    ctx.stats = stats
    ctx.act = act
    ctx.comm = comm
    ctx.has_res = residual is not None
    ctx.eager = True


class _TrainFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, act, comm, views):
        y, mean, invstd, lo = _train_eager(x, residual, eps, act, comm, views)
        stats = (mean, invstd, lo) if _mask_from_x(act, residual, comm) else (mean, invstd)
        _eager_save(ctx, x, weight, y, act, residual, stats, comm, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, kept = ctx.saved_tensors
        if len(ctx.stats) > 2:  # the mask from x: kept is the bias
            mean, invstd, lo = ctx.stats
            return _grads(ctx, ctx.needs_input_grad[:4], dy, x, weight, mean, invstd,
                          None, True, kept, lo) + (None, None, None, None)
        mean, invstd = ctx.stats
        return _grads(ctx, ctx.needs_input_grad[:4], dy, x, weight, mean, invstd, kept,
                      True) + (None, None, None, None)


class _InferFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, residual, eps, act):
        y = _infer_impl(x, mean, var, weight, bias, residual, eps, act)
        # the frozen statistics as they are now (the buffers may change
        # in place before the backward)
        stats = (_np(mean).copy(), 1.0 / np.sqrt(_np(var).astype(np.float64) + eps))
        _eager_save(ctx, x, weight, y, act, residual, stats, "")
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        mean, invstd = ctx.stats
        need = ctx.needs_input_grad
        dx, dw, db, dres = _grads(ctx, (need[0], need[3], need[4], need[5]), dy, x,
                                  weight, mean, invstd, y, False)
        return dx, None, None, dw, db, dres, None, None


def _train_eager(x, residual, eps, act, comm, views):
    """(y, mean, invstd, mean_lo) with NumPy statistics; ``views`` = NumPy views of
    (weight, bias, running_mean, running_var, num_batches_tracked) and the
    momentum (None where absent; running statistics updated when given)."""
    wn, bn, rm, rv, nbt, momentum = views
    y, mean, invstd, var, count, lo = _train_np(x, wn, bn, residual, eps, act, comm)
    if rm is not None:
        _update_np(rm, rv, nbt, mean, var * (count / (count - 1.0)), momentum)
    return y, mean, invstd, lo


def _views(owner, weight, bias, running):
    """NumPy views of (weight, bias, running_mean, running_var,
    num_batches_tracked) plus the momentum (None where absent), for the
    eager path.  Kept on ``owner`` (the module) while the tensors and
    their memory stay the same: a tensor's ``.numpy()`` costs about 0.6 us,
    as much as a small call's arithmetic on the running statistics."""
    rm = rv = nbt = momentum = None
    if running is not None:
        rm, rv, nbt, momentum = running
    c = owner.__dict__.get("_fastbn_views")
    if c is None or c[0] is not weight or c[1] is not bias or c[2] is not rm \
            or c[3] is not rv or c[4] is not nbt \
            or c[5] != (_ptr(weight), _ptr(bias), _ptr(rm), _ptr(rv), _ptr(nbt)):
        # a tensor replaced, or its memory (``.data = ...``): new views
        # (the views keep the old memory alive, so an equal address is
        # the same memory)
        c = _Views((weight, bias, rm, rv, nbt,
                    (_ptr(weight), _ptr(bias), _ptr(rm), _ptr(rv), _ptr(nbt)),
                    (_np_opt(weight), _np_opt(bias), _np_opt(rm), _np_opt(rv),
                     _np_opt(nbt))))
        owner.__dict__["_fastbn_views"] = c
    return c[6] + (momentum,)


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _none():
    return None


class _Views(tuple):
    """The cache of ``_views``: a copied or pickled module starts without
    one (a copy's tensors live elsewhere; its views would not)."""

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return _none, ()


_compiling = torch.compiler.is_compiling


def _direct_apply(fn):
    """``fn.apply`` without torch.autograd.Function.apply's Python wrapper
    (about 5 us per call: it unwraps functorch wrappers, which exist only
    under functorch transforms such as vmap, where the wrapper is used)."""
    try:
        from torch.autograd.function import _SingleLevelFunction
        c_apply = super(_SingleLevelFunction, fn).apply
        active = torch._C._are_functorch_transforms_active
    except (ImportError, AttributeError):  # another PyTorch: the public path
        return fn.apply

    def apply(*args):
        return fn.apply(*args) if active() else c_apply(*args)
    return apply


_train_apply = _direct_apply(_TrainFn)
_infer_apply = _direct_apply(_InferFn)


def _needs_grad(*tensors):
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def train(x, weight, bias, residual, eps, act, comm, running, owner):
    """The training forward's output; ``running`` = (running_mean,
    running_var, num_batches_tracked, momentum) or None: the running
    statistics to update; ``owner``: the module (which keeps the eager
    path's NumPy views of its tensors).  torch.ops.fastbn.bn_train and
    update_running under torch.compile, the same kernels without the
    dispatcher in eager mode."""
    if _compiling():
        y, mean, _, uvar, _ = _ops.bn_train(x, weight, bias, residual, eps, act, comm)
        if running is not None:
            rm, rv, nbt, momentum = running
            _ops.update_running(rm, rv, nbt, mean, uvar, momentum)
        return y
    views = _views(owner, weight, bias, running)
    if _needs_grad(x, weight, bias, residual):
        return _train_apply(x, weight, bias, residual, eps, act, comm, views)
    return _train_eager(x, residual, eps, act, comm, views)[0]


def infer(x, mean, var, weight, bias, residual, eps, act):
    """The eval forward: fastbn's kernel in eager mode (without the
    dispatcher); under torch.compile PyTorch's own batch norm, add and
    activation, which Inductor folds into the convolution before them or
    fuses with their neighbours (a separate call cannot beat that: the
    stock compiled eval step of MobileNetV2 took 0.65x the time of one
    calling ``torch.ops.fastbn.bn_infer``)."""
    if _compiling():
        y = torch.nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        if residual is not None:
            y = y + residual
        if act == 1:
            return torch.relu(y)
        if act == 2:
            return torch.nn.functional.hardtanh(y, 0.0, 6.0)
        return y
    if _needs_grad(x, mean, var, weight, bias, residual):
        return _infer_apply(x, mean, var, weight, bias, residual, eps, act)
    return _infer_impl(x, mean, var, weight, bias, residual, eps, act)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(_NO_DOUBLE)


def _backward_setup(ctx, inputs, output):
    pass


# bn_backward is differentiable in principle; say clearly that its own
# gradient is not implemented instead of PyTorch's silent fallback
torch.library.register_autograd("fastbn::bn_backward", _no_double_backward,
                                setup_context=_backward_setup, lib=_lib)
