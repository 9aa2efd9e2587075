"""The BatchNorm layer: parameters, running statistics, forward and backward.

``BatchNorm`` wraps the functional API (``fastbn._api``) in the object that
deep-learning frameworks call a batch-normalization layer.  It owns

* the trainable per-channel parameters ``gamma`` (scale, ones) and ``beta``
  (shift, zeros) -- plain NumPy arrays, ``None`` when ``scale=False`` /
  ``center=False``;
* the running statistics ``running_mean``, ``running_var`` and the counter
  ``num_batches_tracked`` (``None`` when ``track_running_stats=False``);
* after each forward call, a cache of what ``backward`` needs; after
  ``backward``, the gradients ``dgamma`` and ``dbeta``.

Conventions follow PyTorch's ``torch.nn.BatchNorm*d`` (momentum, running
variance, state-dict keys) with TensorFlow/Keras names for the options
(``center``, ``scale``, ``axis``) and Keras's weight order for
``get_weights``/``set_weights``.
"""
import numbers
import operator

import numpy as np

from . import _api, _ghost
from ._checks import as_data, count, eps_value, is_half, stat_dtype, view

__all__ = ["BatchNorm"]


def _to_numpy(v, name):
    """A state-dict value as a NumPy array (NumPy arrays, torch tensors and
    anything with ``__array__`` are accepted)."""
    if hasattr(v, "detach"):       # a torch tensor (possibly requiring grad)
        v = v.detach()
        if hasattr(v, "cpu"):
            v = v.cpu()
    try:
        return np.asarray(v)
    except Exception as e:  # pragma: no cover - exotic objects
        raise TypeError(f"{name}: cannot convert {type(v).__name__} to a NumPy "
                        f"array ({e})") from None


class BatchNorm:
    """Batch normalization layer with running statistics (training and eval).

    ``y = relu((x - mean) / sqrt(var + eps) * gamma + beta [+ residual])``
    per channel, where the channel axis is ``axis`` and the statistics are
    taken over every other axis.

    Parameters
    ----------
    num_features : int
        Number of channels ``C`` (the size of ``x.shape[axis]``).
    axis : int, default 1
        Channel axis: ``1`` for PyTorch's NC / NCL / NCHW, ``-1`` for
        TensorFlow's and Keras's channels-last NHWC.
    eps : float, default 1e-5
        Added to the variance before the square root (Keras's ``epsilon``,
        whose default is 1e-3).
    momentum : float in [0, 1] or None, default 0.1
        PyTorch's momentum, the weight of the *new* batch:
        ``running = (1 - momentum) * running + momentum * batch``.
        TensorFlow's and Keras's ``momentum``/``decay`` is the weight of the
        *old* value, i.e. ``decay = 1 - momentum`` (Keras's default 0.99 is
        ``momentum=0.01`` here).  ``None`` gives a cumulative (equal-weight)
        average of all batches seen: the factor is ``1/num_batches_tracked``.
    center, scale : bool, default True
        Whether the layer has a shift ``beta`` / a scale ``gamma``
        (TensorFlow's names).  When off, the attribute is ``None`` and acts as
        0 / 1.  ``scale=False`` is what TensorFlow recommends before a ReLU:
        the next layer can absorb the scale (see ``fastbn.absorb_scale``).
    relu : bool, default False
        Fuse ``max(0, .)`` into the same pass (forward and backward).
    activation : None, "relu" or "relu6", default None
        The activation fused into the same pass (``"relu6"``:
        ``min(max(0, .), 6)``); ``relu=True`` is ``activation="relu"``.
    track_running_stats : bool, default True
        Keep running statistics.  When False, ``running_mean``,
        ``running_var`` and ``num_batches_tracked`` are ``None`` and batch
        statistics are used in both training and eval mode (as in PyTorch).
    dtype : float32 or float64, default numpy.float32
        dtype of the parameters, the running statistics and the computation;
        float32 and float64 inputs are cast to it, except the half types:
        float16 and bfloat16 inputs keep their dtype (``y`` and the
        backward's ``dx`` have it) while the parameters and running
        statistics stay in ``dtype`` (mixed precision, as under PyTorch's
        autocast; the kernels take them as float32 and compute in float32).
        ``residual`` and ``dy`` of any of these four dtypes are cast to the
        dtype of the computation's x.  Any other dtype (integer, bool,
        complex, float8) raises TypeError, as in the functions.
    comm : mpi4py communicator, optional
        Synchronised batch norm: in training mode the batch statistics
        (forward) and the two per-channel gradient sums (backward) are
        combined over ``comm``.  Evaluation mode never communicates (with
        ``track_running_stats=False`` it uses each rank's own batch), as
        PyTorch's SyncBatchNorm does.
    virtual_batch_size : int or None, default None
        Ghost batch normalization (Hoffer et al. 2017, TabNet): wherever
        batch statistics are used, axis 0 (the batch axis; it must not be
        the channel axis) is split into groups of ``k`` consecutive samples,
        each normalised with its own statistics (``N % k`` must be 0).  The
        running statistics are updated once per call with the average over
        the groups of the group means and of the group unbiased variances.
        Keras's ``virtual_batch_size`` groups every G-th sample instead.  Not
        combinable with ``comm``.
    renorm : bool, default False
        Batch renormalization (Ioffe 2017): in training mode
        ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with
        ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
        ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` from the running
        statistics before this call's update (``sigma = sqrt(running_var +
        eps)``); ``r`` and ``d`` are constants for the gradient.  Needs
        ``track_running_stats=True``; evaluation mode is unchanged.
    renorm_clipping : dict or None, default None
        ``{'rmax': >= 1, 'dmax': >= 0}``; a missing key (or None) means no
        clipping of that correction.

    Attributes
    ----------
    gamma, beta : ndarray of shape (C,) or None
        Trainable parameters.  They are plain arrays that an optimizer may
        update in place (``bn.gamma -= lr * bn.dgamma``); the next call uses
        them.
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics (initialised to 0 and 1).  ``running_var`` is
        updated with the *unbiased* batch variance ``var * n / (n - 1)``
        (``n`` values per channel, summed over all ranks with ``comm``), as
        PyTorch and TensorFlow's fused kernel do; normalisation always uses
        the biased variance.
    num_batches_tracked : int or None
        Number of training batches that updated the running statistics.
    training : bool
        True after construction and ``train()``, False after ``eval()``.
    dgamma, dbeta : ndarray of shape (C,) or None
        Gradients of the loss with respect to gamma and beta, set by
        ``backward`` (``None`` for a parameter the layer does not have, and
        before the first ``backward``).

    Raises
    ------
    TypeError
        If ``num_features``, ``axis`` or ``virtual_batch_size`` is not an
        integer, ``momentum`` is not a number, ``dtype`` is not float32 or
        float64, or ``renorm_clipping`` is not a dict of numbers.
    ValueError
        If ``num_features < 1``, ``momentum`` is outside [0, 1], ``eps <=
        0``, ``virtual_batch_size < 1`` or it is given with ``comm`` or with
        the channel axis 0, ``renorm`` is set without running statistics or
        with ``comm``, or ``renorm_clipping`` has unknown keys or values
        below its bounds.

    See Also
    --------
    batch_norm_train, batch_norm_infer, batch_norm_backward : the functions
        the layer calls.
    fold_into_linear, absorb_scale : folding a trained layer.

    Notes
    -----
    The forward call keeps references (not copies) to its input ``x`` and,
    with ``relu=True``, to its output ``y`` for ``backward``: do not modify
    them in place in between.  The cache is kept after ``backward`` (so
    ``backward`` may be called again with another ``dy``) and replaced by the
    next forward call.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> bn = fastbn.BatchNorm(2, relu=True)
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 2, 2)   # (N, C, L)
    >>> y = bn(x)                       # training mode: batch statistics
    >>> print(bn.running_mean, bn.num_batches_tracked)
    [0.65 0.85] 1
    >>> dx = bn.backward(np.ones_like(y))
    >>> print(bn.dbeta)
    [4. 4.]
    >>> bn.gamma -= 0.1 * bn.dgamma     # plain arrays: an optimizer updates them
    >>> y = bn.eval()(x)                # evaluation mode: running statistics
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    def __init__(self, num_features, *, axis=1, eps=1e-5, momentum=0.1,
                 center=True, scale=True, relu=False, track_running_stats=True,
                 dtype=np.float32, comm=None, virtual_batch_size=None, renorm=False,
                 renorm_clipping=None, activation=None):
        C = count(num_features, "num_features")
        try:
            axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"axis must be an integer, got {type(axis).__name__}") \
                from None
        eps = eps_value(eps)
        if momentum is not None:
            if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
                raise TypeError(f"momentum must be a number in [0, 1] or None, got "
                                f"{type(momentum).__name__}")
            momentum = float(momentum)
            if not 0.0 <= momentum <= 1.0:
                raise ValueError(f"momentum must be in [0, 1] (PyTorch's meaning; "
                                 f"TensorFlow's decay is 1 - momentum) or None, "
                                 f"got {momentum}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") \
                from None
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.num_features = C
        self.axis = axis
        self.eps = eps
        self.momentum = momentum
        self.center = bool(center)
        self.scale = bool(scale)
        self.activation = _api.ACTIVATION_NAMES[_api._activation(activation, relu)]
        self.track_running_stats = bool(track_running_stats)
        self.dtype = dt
        self.comm = comm
        self.gamma = np.ones(C, dt) if self.scale else None
        self.beta = np.zeros(C, dt) if self.center else None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dt)
            self.running_var = np.ones(C, dt)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.training = True
        self.dgamma = self.dbeta = None
        self._cache = None
        self._init_ghost(virtual_batch_size, renorm, renorm_clipping)

    def _init_ghost(self, virtual_batch_size, renorm, renorm_clipping):
        """Check and set the ghost-batch and renormalization options."""
        k = _ghost.check_virtual_batch_size(virtual_batch_size)
        if k is not None and self.axis == 0:
            raise ValueError("virtual_batch_size splits the batch axis (axis 0) into "
                             "ghost batches, so the channel axis must not be 0; got "
                             "axis=0")
        if k is not None and self.comm is not None:
            raise ValueError("virtual_batch_size cannot be combined with comm= "
                             "(ghost batches are local by definition)")
        _ghost.check_renorm_clipping(renorm_clipping)
        renorm = bool(renorm)
        if renorm and not self.track_running_stats:
            raise ValueError("renorm=True needs running statistics "
                             "(track_running_stats=True): r and d compare the batch "
                             "statistics with them")
        if renorm and self.comm is not None:
            raise ValueError("renorm=True is not supported together with comm= "
                             "(synchronised batch norm) in this version")
        self.virtual_batch_size = k
        self.renorm = renorm
        self.renorm_clipping = renorm_clipping

    @property
    def relu(self):
        """True when the fused activation is ReLU (``activation == "relu"``);
        setting it to True makes it so, to False removes a ReLU."""
        return self.activation == "relu"

    @relu.setter
    def relu(self, value):
        if value:
            self.activation = "relu"
        elif self.activation == "relu":
            self.activation = None

    @property
    def renorm_clipping(self):
        """The clipping of batch renormalization's corrections, or None.

        A dict ``{'rmax': float >= 1, 'dmax': float >= 0}`` (a missing key, or
        inf, means no clipping of that correction).  It may be set between
        steps (e.g. relaxed from ``rmax=1, dmax=0`` to 3 and 5 over training,
        as in Ioffe 2017) and is checked as the constructor's argument is
        (``ValueError`` for bad keys or values).

        Examples
        --------
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(4, renorm=True, renorm_clipping={"rmax": 1.0, "dmax": 0.0})
        >>> bn.renorm_clipping = {"rmax": 3.0, "dmax": 5.0}
        >>> bn.renorm_clipping["rmax"]
        3.0
        """
        return self._renorm_clipping

    @renorm_clipping.setter
    def renorm_clipping(self, clipping):
        rmax, dmax = _ghost.check_renorm_clipping(clipping)
        self._renorm_clipping = (None if clipping is None else
                                 {"rmax": rmax, "dmax": dmax})
        self._rclip = (rmax, dmax)

    # ------------------------------------------------------------------ modes
    def train(self, mode=True):
        """Set training mode (batch statistics, running statistics updated).

        Parameters
        ----------
        mode : bool, default True
            True for training mode; False is :meth:`eval`.

        Returns
        -------
        BatchNorm
            The layer itself.

        Examples
        --------
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(4)
        >>> bn.train(False).training, bn.train().training
        (False, True)
        """
        self.training = bool(mode)
        return self

    def eval(self):
        """Set evaluation mode (the running statistics are used).

        Returns
        -------
        BatchNorm
            The layer itself.

        Examples
        --------
        >>> import fastbn
        >>> fastbn.BatchNorm(4).eval().training
        False
        """
        return self.train(False)

    def reset_running_stats(self):
        """Reset the running statistics: mean 0, variance 1, ``num_batches_tracked`` 0.

        The arrays are reset in place (they keep their identity).  A layer
        without running statistics is left as it is.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> y = bn(np.arange(8, dtype=np.float32).reshape(4, 2))
        >>> bn.reset_running_stats()
        >>> print(bn.running_mean, bn.running_var, bn.num_batches_tracked)
        [0. 0.] [1. 1.] 0
        """
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

    # ---------------------------------------------------------------- forward
    def _check_input(self, x):
        # float16 and bfloat16 are kept (mixed precision); float32 and
        # float64 are cast to the layer's dtype; fastbn._checks.as_data
        # refuses every other dtype, as the functions do
        keep = isinstance(x, np.ndarray) and is_half(x.dtype)
        x = as_data(x, "x", None if keep else self.dtype)
        _, C, _, _ = view(x.shape, self.axis)
        if C != self.num_features:
            raise ValueError(f"x has {C} channels along axis {self.axis} (shape "
                             f"{x.shape}) but the layer has num_features="
                             f"{self.num_features}")
        return x

    def __call__(self, x, residual=None):
        """Normalise ``x`` (the forward pass).

        In training mode (and always when ``track_running_stats=False``) the
        batch statistics are used; in training mode with running statistics
        these are then updated and ``num_batches_tracked`` is incremented.  In
        evaluation mode the running statistics are used.

        Parameters
        ----------
        x : ndarray
            Data with ``num_features`` channels on the layer's ``axis``: float32
            or float64 (cast to the layer's dtype), or float16 / bfloat16 (kept
            in their dtype, with float32 parameters and statistics).
        residual : ndarray, optional
            An array of ``x``'s shape added after the affine and before the
            ReLU: ``y = relu(BN(x) + residual)``.

        Returns
        -------
        y : ndarray
            A new array of ``x``'s shape, in the layer's dtype (or ``x``'s half
            dtype).

        Raises
        ------
        TypeError
            If ``x`` or ``residual`` has an unsupported dtype.
        ValueError
            If ``x`` has another channel count than ``num_features``, a channel
            has fewer than 2 values in training, or ``residual``'s shape differs.
        RuntimeError
            With ``comm`` in training mode, when another rank's arguments were
            bad (every rank raises; the layer's state is then unchanged).

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(3, axis=-1)           # channels-last
        >>> x = np.arange(12, dtype=np.float32).reshape(4, 3)
        >>> print(np.round(bn(x)[:, 0], 3))
        [-1.342 -0.447  0.447  1.342]
        >>> print(bn(x, residual=np.ones_like(x))[:, 0].round(3))
        [-0.342  0.553  1.447  2.342]
        """
        if self.comm is not None and self.training:
            return _api._mpi().run(_api._mpi().FORWARD, self.comm, self._forward,
                                   x, residual)
        return self._forward(x, residual)

    def _forward(self, x, residual):
        """Body of ``__call__`` (with comm in training mode, through
        fastbn._mpi.run)."""
        x = self._check_input(x)
        r = d = mean_lo = None
        # statistics are synchronised over comm in training mode only, as in
        # PyTorch's SyncBatchNorm: evaluation never runs a collective
        comm = self.comm if self.training else None
        # with an activation the backward needs the mask: from y with a
        # residual (or comm, whose statistics x alone does not give), else
        # recomputed from x, beta and the batch mean's low part (mean_lo),
        # so y is not kept
        keep_y = self.activation and (residual is not None or comm is not None)
        from_x = bool(self.activation) and not keep_y
        if self.training or not self.track_running_stats:
            rn = None
            if self.renorm and self.training:
                sigma = np.sqrt(self.running_var.astype(np.float64) + self.eps)
                rn = (self.running_mean.astype(np.float64), sigma) + self._rclip
            res = _api._train(x, self.gamma, self.beta, self.axis, self.eps, False,
                              residual, None, comm, True, self.virtual_batch_size, rn,
                              self.activation, from_x)
            y, mean, invstd, var, count = res[:5]
            if rn is not None:
                r, d = res[5:7]
            if from_x:
                mean_lo = res[-1]
            if self.training and self.track_running_stats:
                if mean.ndim == 1:
                    self._update_running(mean, var, count)
                elif mean.shape[0] == 1:
                    self._update_running(mean[0], var[0], count)
                else:
                    # ghost batches: the average over the groups of the group
                    # means and of the group unbiased variances (every group
                    # has `count` values per channel)
                    G = mean.shape[0]
                    self._update_running(np.add.reduce(mean, 0, np.float64) / G,
                                         np.add.reduce(var, 0) / G, count)
            frozen = False
        else:
            y = _api.batch_norm_infer(x, self.running_mean, self.running_var,
                                      self.gamma, self.beta, axis=self.axis,
                                      eps=self.eps, activation=self.activation,
                                      residual=residual)
            mean = self.running_mean.copy()
            # 1/sqrt(var + eps) of the variance the inference forward used
            # (in the per-channel dtype of x), so that the backward's mask
            # from x is that forward's bit for bit
            var = self.running_var.astype(stat_dtype(x.dtype)).astype(np.float64)
            invstd = (1.0 / np.sqrt(var + self.eps)).astype(self.dtype)
            frozen = True
        k = None if frozen else self.virtual_batch_size
        beta = None
        if from_x:  # the forward's shift (none: 0)
            beta = (np.zeros(self.num_features, self.dtype) if self.beta is None
                    else self.beta.copy())
        self._cache = (x, y if keep_y else None, mean, invstd, frozen,
                       residual is not None, comm, k, r, d, beta, mean_lo)
        return y

    forward = __call__

    def _update_running(self, mean, var, count):
        self.num_batches_tracked += 1
        if self.momentum is None:
            f = 1.0 / self.num_batches_tracked
        else:
            f = self.momentum
        if count < 2:  # only possible with comm and an (almost) empty world batch
            return
        unbiased = np.asarray(var, np.float64) * (count / (count - 1.0))
        rm = self.running_mean.astype(np.float64)
        rv = self.running_var.astype(np.float64)
        self.running_mean[...] = (1.0 - f) * rm + f * np.asarray(mean, np.float64)
        self.running_var[...] = (1.0 - f) * rv + f * unbiased

    # --------------------------------------------------------------- backward
    def backward(self, dy):
        """Gradient with respect to the input of the last forward call.

        After a forward with batch statistics the full gradient is computed
        (through the mean and variance); after an evaluation-mode forward with
        running statistics it is the frozen-statistics gradient
        ``dx = dy' * gamma / sqrt(running_var + eps)``.  Sets ``self.dgamma``
        and ``self.dbeta`` (``None`` for a parameter the layer does not have).

        Parameters
        ----------
        dy : ndarray
            The gradient of the loss with respect to the last call's output, of
            its shape.

        Returns
        -------
        dx : ndarray
            The gradient with respect to that call's ``x``.
        dresidual : ndarray
            Only when the forward had a ``residual``: its gradient
            (``dy * (y > 0)`` with ``relu=True``, else ``dy``); the method then
            returns ``(dx, dresidual)``.

        Raises
        ------
        RuntimeError
            If no forward call preceded it.
        ValueError
            If ``dy``'s shape differs from the forward output's.
        TypeError
            If ``dy`` has an unsupported dtype.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> x = np.arange(8, dtype=np.float32).reshape(4, 2)
        >>> y = bn(x)
        >>> dx = bn.backward(np.ones_like(y))
        >>> print(bn.dbeta, np.abs(dx).max() < 1e-6)
        [4. 4.] True
        """
        if self._cache is None:
            err = RuntimeError("backward called before a forward call of the layer")
            if self.comm is not None and self.training:
                # the other ranks may be in the backward's collective: tell them
                _api._mpi().report_failure(_api._mpi().BACKWARD, self.comm, err)
            raise err
        x, y, mean, invstd, frozen, has_res, comm, k, r, d, beta, mean_lo = self._cache
        args = (dy, x, mean, invstd, self.gamma, self.axis, y, not frozen, has_res,
                None, comm, k, r, d, self.activation, beta, mean_lo)
        if comm is None or frozen:
            res = _api._backward(*args)
        else:
            res = _api._run("BACKWARD", _api._backward, comm, *args)
        # float32 from half x: the gradients take the parameters' dtype
        self.dgamma = (res[1].astype(self.dtype, copy=False)
                       if self.gamma is not None else None)
        self.dbeta = (res[2].astype(self.dtype, copy=False)
                      if self.beta is not None else None)
        if has_res:
            return res[0], res[3]
        return res[0]

    # ------------------------------------------------------------------ state
    def _state_keys(self):
        keys = []
        if self.gamma is not None:
            keys.append("weight")
        if self.beta is not None:
            keys.append("bias")
        if self.track_running_stats:
            keys += ["running_mean", "running_var", "num_batches_tracked"]
        return keys

    def state_dict(self):
        """The layer's state with PyTorch's ``BatchNorm*d`` keys.

        Returns
        -------
        dict of str to ndarray
            Copies, under the keys ``weight`` (gamma), ``bias`` (beta),
            ``running_mean``, ``running_var`` and ``num_batches_tracked`` (a 0-d
            int64 array).  Keys of parameters or statistics the layer does not
            have are left out (PyTorch's ``affine=False`` has neither weight
            nor bias).

        Notes
        -----
        Load it into PyTorch with
        ``module.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})``.

        Examples
        --------
        >>> import fastbn
        >>> d = fastbn.BatchNorm(3, scale=False).state_dict()
        >>> sorted(d), d["bias"].shape
        (['bias', 'num_batches_tracked', 'running_mean', 'running_var'], (3,))
        """
        d = {}
        if self.gamma is not None:
            d["weight"] = self.gamma.copy()
        if self.beta is not None:
            d["bias"] = self.beta.copy()
        if self.track_running_stats:
            d["running_mean"] = self.running_mean.copy()
            d["running_var"] = self.running_var.copy()
            d["num_batches_tracked"] = np.array(self.num_batches_tracked, np.int64)
        return d

    def load_state_dict(self, state_dict, strict=True):
        """Load a state dict (this layer's or a ``torch.nn.BatchNorm*d``'s).

        Values are cast to the layer's dtype and copied into the existing
        arrays (which keep their identity).  Shapes are checked before anything
        changes.

        Parameters
        ----------
        state_dict : dict
            Values as NumPy arrays, torch tensors (any device) or anything with
            ``__array__``, under the keys of :meth:`state_dict`.
        strict : bool, default True
            True: the keys must be exactly those of ``state_dict()`` (a missing
            ``num_batches_tracked`` keeps its value, as PyTorch does for old
            checkpoints).  False: unknown keys are ignored and missing ones keep
            their values.

        Returns
        -------
        BatchNorm
            The layer itself.

        Raises
        ------
        KeyError
            With ``strict=True``, naming the missing and unexpected keys.
        ValueError
            If a value's shape does not match.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> a, b = fastbn.BatchNorm(2), fastbn.BatchNorm(2)
        >>> a.running_mean[:] = [1.0, 2.0]
        >>> b = b.load_state_dict(a.state_dict())
        >>> print(b.running_mean)
        [1. 2.]
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping, got "
                            f"{type(state_dict).__name__}")
        expected = self._state_keys()
        given = list(state_dict.keys())
        missing = [k for k in expected if k not in state_dict
                   and k != "num_batches_tracked"]
        unexpected = [k for k in given if k not in expected]
        if strict and (missing or unexpected):
            msg = ["BatchNorm.load_state_dict:"]
            if missing:
                msg.append(f"missing key(s) {missing}")
            if unexpected:
                msg.append(f"unexpected key(s) {unexpected}")
            msg.append(f"(this layer has keys {expected}; center={self.center}, "
                       f"scale={self.scale}, track_running_stats="
                       f"{self.track_running_stats})")
            raise KeyError(" ".join(msg))
        new = {}
        for k in expected:
            if k not in state_dict:
                continue
            v = _to_numpy(state_dict[k], k)
            if k == "num_batches_tracked":
                if v.size != 1 or v.dtype.kind not in "iuf":
                    raise ValueError(f"num_batches_tracked must be a single integer, "
                                     f"got an array of shape {v.shape} and dtype "
                                     f"{v.dtype}")
                n = v.reshape(()).item()
                if n != int(n) or n < 0:
                    raise ValueError(f"num_batches_tracked must be a non-negative "
                                     f"integer, got {n}")
                new[k] = int(n)
                continue
            if v.dtype.kind not in "fiu":
                raise TypeError(f"{k} must be a real array, got dtype {v.dtype}")
            if v.shape != (self.num_features,):
                raise ValueError(f"{k} must have shape ({self.num_features},) "
                                 f"(num_features), got {v.shape}")
            new[k] = v
        target = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
                  "running_var": "running_var"}
        for k, v in new.items():
            if k == "num_batches_tracked":
                self.num_batches_tracked = v
            else:
                getattr(self, target[k])[...] = v
        return self

    def get_weights(self):
        """The weights in Keras's order: ``[gamma, beta, moving_mean, moving_variance]``.

        Returns
        -------
        list of ndarray
            Copies; ``gamma``/``beta`` are left out when ``scale``/``center`` is
            off (as in Keras), the moving statistics when
            ``track_running_stats=False``.

        Notes
        -----
        ``moving_variance`` here is accumulated from the *unbiased* batch
        variance (``n/(n-1)`` correction), as in PyTorch and TensorFlow's fused
        kernel (``tf.nn.fused_batch_norm``, used by Keras 2 with
        ``fused=True``).  Keras 3 (and Keras 2's non-fused path) accumulate the
        *biased* variance.  Both estimate the same population variance and
        inference uses the stored value as is, so weights transfer unchanged in
        either direction; only the training-time accumulation differs by a
        factor ``n/(n-1)``.

        Examples
        --------
        >>> import fastbn
        >>> [w.shape for w in fastbn.BatchNorm(3).get_weights()]
        [(3,), (3,), (3,), (3,)]
        >>> len(fastbn.BatchNorm(3, scale=False).get_weights())
        3
        """
        ws = []
        if self.gamma is not None:
            ws.append(self.gamma.copy())
        if self.beta is not None:
            ws.append(self.beta.copy())
        if self.track_running_stats:
            ws += [self.running_mean.copy(), self.running_var.copy()]
        return ws

    def set_weights(self, weights):
        """Set the weights from a list in :meth:`get_weights` order.

        Parameters
        ----------
        weights : sequence of array_like
            Keras's ``[gamma, beta, moving_mean, moving_variance]`` without the
            parts the layer does not have.  Values are cast to the layer's dtype
            and copied in place.

        Raises
        ------
        ValueError
            If the number of arrays or a shape does not match (checked before
            anything changes).
        TypeError
            If an array is not of a real dtype.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> bn.set_weights([np.full(2, 2.0), np.zeros(2), np.zeros(2), np.full(2, 4.0)])
        >>> print(bn.gamma, bn.running_var)
        [2. 2.] [4. 4.]
        """
        names = []
        if self.gamma is not None:
            names.append("gamma")
        if self.beta is not None:
            names.append("beta")
        if self.track_running_stats:
            names += ["running_mean", "running_var"]
        weights = list(weights)
        if len(weights) != len(names):
            keras = {"running_mean": "moving_mean", "running_var": "moving_variance"}
            raise ValueError(f"set_weights expects {len(names)} arrays "
                             f"[{', '.join(keras.get(n, n) for n in names)}] "
                             f"(center={self.center}, scale={self.scale}, "
                             f"track_running_stats={self.track_running_stats}), "
                             f"got {len(weights)}")
        vals = []
        for n, w in zip(names, weights):
            v = _to_numpy(w, n)
            if v.dtype.kind not in "fiu":
                raise TypeError(f"{n} must be a real array, got dtype {v.dtype}")
            if v.shape != (self.num_features,):
                raise ValueError(f"{n} must have shape ({self.num_features},), "
                                 f"got {v.shape}")
            vals.append(v)
        for n, v in zip(names, vals):
            getattr(self, n)[...] = v

    # ------------------------------------------------------------------- misc
    def _copy_config(self, **changes):
        kw = dict(axis=self.axis, eps=self.eps, momentum=self.momentum,
                  center=self.center, scale=self.scale, relu=self.relu,
                  activation=self.activation,
                  track_running_stats=self.track_running_stats, dtype=self.dtype,
                  comm=self.comm, virtual_batch_size=self.virtual_batch_size,
                  renorm=self.renorm, renorm_clipping=self.renorm_clipping)
        kw.update(changes)
        return BatchNorm(self.num_features, **kw)

    def __repr__(self):
        mode = "train" if self.training else "eval"
        parts = [f"{self.num_features}", f"axis={self.axis}", f"eps={self.eps:g}",
                 f"momentum={self.momentum!r}", f"center={self.center}",
                 f"scale={self.scale}", f"relu={self.relu}",
                 *([f"activation={self.activation!r}"] if self.activation == "relu6"
                   else []),
                 f"track_running_stats={self.track_running_stats}",
                 f"dtype={self.dtype.name}"]
        if self.comm is not None:
            parts.append("comm=...")
        if self.virtual_batch_size is not None:
            parts.append(f"virtual_batch_size={self.virtual_batch_size}")
        if self.renorm:
            parts.append(f"renorm=True, renorm_clipping={self.renorm_clipping!r}")
        return f"BatchNorm({', '.join(parts)}) [{mode}]"
