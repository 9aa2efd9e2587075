"""convert / revert: swap PyTorch's batch norm modules for fastbn's and back,
and fuse BN -> activation, BN -> add and BN -> add -> activation call sites
with torch.fx."""
import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm,
                       _FastBatchNorm)

__all__ = ["convert", "revert"]

# (stock class, fastbn class), most specific first
_PAIRS = [(nn.SyncBatchNorm, SyncBatchNorm), (nn.BatchNorm3d, BatchNorm3d),
          (nn.BatchNorm2d, BatchNorm2d), (nn.BatchNorm1d, BatchNorm1d)]
_STOCK = {fast: stock for stock, fast in _PAIRS}


def _rebuild(bn, cls, process_group):
    """A ``cls`` module holding ``bn``'s very Parameter and buffer objects."""
    kw = {"process_group": process_group} if cls in (SyncBatchNorm,
                                                      nn.SyncBatchNorm) else {}
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine,
              bn.track_running_stats, device="meta", **kw)
    for name in ("weight", "bias"):
        setattr(new, name, getattr(bn, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new._buffers[name] = bn._buffers.get(name)
    new.training = bn.training
    if isinstance(bn, _FastBatchNorm) and isinstance(new, _FastBatchNorm):
        new.activation = bn.activation
    return new


def _swap_tree(module, make):
    """``module`` with every module ``m`` for which ``make(m)`` is not None
    replaced by it (children replaced in place, like
    SyncBatchNorm.convert_sync_batchnorm)."""
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        new = _swap_tree(child, make)
        if new is not child:
            setattr(module, name, new)
    return module


def convert(module, *, sync=False, process_group=None, fuse=True):
    """Replace PyTorch's batch norm by fastbn's and fuse what follows it.

    Parameters
    ----------
    module : torch.nn.Module
        The model (or a single batch norm module).  Its children are
        replaced in place.
    sync : bool, default False
        Replace every batch norm by :class:`fastbn.torch.SyncBatchNorm`
        (statistics over ``process_group``).  Without it, PyTorch's
        ``SyncBatchNorm`` modules become fastbn's ``SyncBatchNorm`` and the
        others ``BatchNorm1d/2d/3d``.
    process_group : torch.distributed.ProcessGroup, optional
        With ``sync=True``: the group (None: the default group).
    fuse : bool, default True
        Trace the model with ``torch.fx`` and fuse, at every call site
        where the batch norm output has no other use, BN -> ReLU,
        BN -> ReLU6 (``nn.ReLU6``, ``F.relu6``, ``hardtanh(0, 6)``),
        BN -> add (either operand order, ``out += identity`` included)
        and BN -> add -> ReLU/ReLU6 into one fastbn call.

    Returns
    -------
    torch.nn.Module
        ``module`` with the modules swapped, or, when something was fused,
        a ``torch.fx.GraphModule`` built on it (the same submodules,
        Parameter and buffer objects, so ``state_dict`` keys and values
        are unchanged and an optimizer built before keeps working).

    Raises
    ------
    TypeError
        ``module`` is not a ``torch.nn.Module``.

    Warns
    -----
    UserWarning
        The model could not be traced by ``torch.fx`` (data-dependent
        control flow, ...): it is returned with the modules swapped but
        nothing fused; the message says why.

    Notes
    -----
    Fusion follows the calls, not module names: a ReLU module shared by
    several call sites (as in torchvision's ResNet) is fused at each site
    where it follows a batch norm and left in place at the others.  The
    traced graph is specialised like any ``torch.fx`` trace (Python
    control flow is fixed at trace time, so use the returned model in
    place of the original one: the original's ``forward`` still calls the
    now swapped, unfused modules and is correct, but not fused).
    ``revert`` undoes ``convert``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import fastbn.torch as fbt
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> fast = fbt.convert(model)
    >>> x = torch.randn(4, 3, 10, 10)
    >>> torch.allclose(fast(x), fbt.revert(fast)(x), atol=1e-5)
    True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")

    def make(m):
        if not isinstance(m, _BatchNorm) or isinstance(m, _FastBatchNorm) and not sync:
            return None
        if isinstance(m, SyncBatchNorm):
            return None
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            return None
        if sync:
            return _rebuild(m, SyncBatchNorm, process_group)
        for stock, fast in _PAIRS:
            if isinstance(m, stock):
                pg = getattr(m, "process_group", None)
                return _rebuild(m, fast, pg)
        return None

    module = _swap_tree(module, make)
    if not fuse or isinstance(module, _FastBatchNorm):
        return module
    return _fuse(module)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with fastbn's modules kept as leaves."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, _FastBatchNorm) or super().is_leaf_module(m, qualname)


def _trace(module):
    """A GraphModule of ``module``, or None with a warning saying why not."""
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # any failure to trace leaves the model unfused
        warnings.warn(f"fastbn.torch.convert: the model could not be traced by "
                      f"torch.fx, so its batch norms were swapped but nothing "
                      f"was fused ({type(e).__name__}: {e})", stacklevel=3)
        return None
    gm = fx.GraphModule(module, graph, type(module).__name__)
    # the original children, parameters and buffers, in their order (the
    # GraphModule would hold only what the graph uses, under plain
    # containers): model.layer1[0] and state_dict() stay as they were
    for store in ("_modules", "_parameters", "_buffers"):
        getattr(gm, store).clear()
        getattr(gm, store).update(getattr(module, store))
    gm._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    gm.training = module.training
    return gm


def _only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


_ADDS = {operator.add, operator.iadd, torch.add}
_INPLACE_ADDS = {operator.iadd}
_RELU_FNS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU6_FNS = {F.relu6}
_HARDTANH_FNS = {F.hardtanh, F.hardtanh_}


def _residual_of(add, bn):
    """The other operand if ``add`` adds ``bn``'s output and a tensor node
    (and may be fused), else None."""
    if add.op == "call_function" and add.target in _ADDS:
        inplace = add.target in _INPLACE_ADDS
    elif add.op == "call_method" and add.target in ("add", "add_"):
        inplace = add.target == "add_"
    else:
        return None
    if len(add.args) != 2 or add.kwargs:
        return None
    a, b = add.args
    if a is bn and isinstance(b, fx.Node) and b is not bn:
        return b  # in place on the BN output, which has no other use: fine
    if b is bn and isinstance(a, fx.Node) and not inplace:
        return a  # ``identity += bn(x)`` would mutate identity: not fused
    return None


def _activation_of(node, prev, modules):
    """"relu" / "relu6" if ``node`` applies that activation to ``prev``
    alone, else None."""
    if not node.args or node.args[0] is not prev:
        return None
    rest, kw = node.args[1:], dict(node.kwargs)
    kw.pop("inplace", None)
    if node.op == "call_module":
        m = modules.get(node.target)
        if rest or kw:
            return None
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) is nn.ReLU6 or (type(m) is nn.Hardtanh and m.min_val == 0
                                   and m.max_val == 6):
            return "relu6"
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_") and not rest and not kw:
            return "relu"
        return None
    if node.op != "call_function":
        return None
    if node.target in _RELU_FNS and len(rest) <= 1 and not kw:
        return "relu"
    if node.target in _RELU6_FNS and len(rest) <= 1 and not kw:
        return "relu6"
    if node.target in _HARDTANH_FNS:
        names = ("min_val", "max_val", "inplace")
        args = dict(zip(names, rest))
        args.update(kw)
        if set(args) <= set(names) and args.get("min_val", -1.0) == 0 and \
                args.get("max_val", 1.0) == 6:
            return "relu6"
    return None


def _fuse(module):
    """Fuse the call sites of fastbn modules in a torch.fx trace of
    ``module``; ``module`` itself when nothing was fused or it cannot be
    traced."""
    gm = _trace(module)
    if gm is None:
        return module
    graph = gm.graph
    modules = dict(gm.named_modules())
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = modules.get(node.target)
        if not isinstance(bn, _FastBatchNorm) or bn.activation is not None:
            continue
        chain = []  # the nodes the fused call replaces, in order
        residual = act = None
        user = _only_user(node)
        if user is not None:
            residual = _residual_of(user, node)
            if residual is not None:
                chain.append(user)
                nxt = _only_user(user)
                if nxt is not None:
                    act = _activation_of(nxt, user, modules)
                    if act is not None:
                        chain.append(nxt)
            else:
                act = _activation_of(user, node, modules)
                if act is not None:
                    chain.append(user)
        if not chain:
            continue
        tail = chain[-1]
        # the fused call goes where the chain ends: after the residual too
        args = (node.args[0],) if residual is None else (node.args[0], residual)
        with graph.inserting_before(tail):
            new = graph.call_module(node.target, args,
                                    {"activation": act} if act else {})
        tail.replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
        graph.erase_node(node)
        fused += 1
    if not fused:
        return module
    graph.lint()
    gm.recompile()
    return gm


def revert(module):
    """Give PyTorch's own modules back for fastbn's.

    Parameters
    ----------
    module : torch.nn.Module
        A model returned by :func:`convert` (or any model holding fastbn's
        batch norm modules).  Its children are replaced in place.

    Returns
    -------
    torch.nn.Module
        The model with every fastbn ``BatchNorm1d/2d/3d`` replaced by
        PyTorch's (``SyncBatchNorm`` by ``torch.nn.SyncBatchNorm``), holding
        the same Parameter and buffer objects.  In a GraphModule made by
        ``convert`` each fused call becomes the batch norm call followed by
        ``+`` and ``F.relu`` / ``F.relu6`` calls.  A module built with
        ``activation=`` becomes ``nn.Sequential(batch_norm, activation)``
        (its ``state_dict`` keys then gain the prefix ``0.``).

    Raises
    ------
    TypeError
        ``module`` is not a ``torch.nn.Module``.

    Examples
    --------
    >>> from torch import nn
    >>> import fastbn.torch as fbt
    >>> type(fbt.revert(fbt.convert(nn.BatchNorm2d(3)))).__name__
    'BatchNorm2d'
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, fx.GraphModule):
        _unfuse(module)

    def make(m):
        if not isinstance(m, _FastBatchNorm):
            return None
        stock = _STOCK[type(m)] if type(m) in _STOCK else next(
            s for s, f in _PAIRS if isinstance(m, f))
        new = _rebuild(m, stock, getattr(m, "process_group", None))
        if m.activation is None:
            return new
        act = nn.ReLU() if m.activation == "relu" else nn.ReLU6()
        return nn.Sequential(new, act)

    return _swap_tree(module, make)


def _unfuse(gm):
    """Split the fused fastbn calls of GraphModule ``gm`` into a batch norm
    call, an add and an activation call."""
    graph = gm.graph
    modules = dict(gm.named_modules())
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target),
                                                      _FastBatchNorm):
            continue
        act = node.kwargs.get("activation")
        residual = node.args[1] if len(node.args) > 1 else node.kwargs.get("residual")
        if act is None and residual is None:
            continue
        with graph.inserting_before(node):
            out = graph.call_module(node.target, (node.args[0],))
            if residual is not None:
                out = graph.call_function(operator.add, (out, residual))
            if act is not None:
                out = graph.call_function(F.relu if act == "relu" else F.relu6, (out,))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        gm.recompile()
